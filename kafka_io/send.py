"""Sending records in order, optionally at a fixed rate: the one producer loop of the project.

Used by `gru4stream produce`, live replay, the benchmarks and the tests. Messages are pulled
from the iterable only when their turn comes, so a generator can stamp each record with the
time it is actually sent (latency measurements rely on that).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable
from typing import Any

from aiokafka.errors import KafkaError
from aiokafka.structs import RecordMetadata
from tqdm import tqdm

from kafka_io.clients import producer
from kafka_io.settings import KafkaSettings

# (key, value) or (key, value, timestamp_ms)
Message = tuple[bytes | None, bytes | None] | tuple[bytes | None, bytes | None, int | None]


async def send_messages(
    settings: KafkaSettings,
    topic: str,
    messages: Iterable[Message],
    *,
    rate: float | None = None,
    total: int | None = None,
    desc: str | None = None,
    progress: bool = False,
    **producer_options: Any,
) -> list[RecordMetadata | BaseException]:
    """Send every message (idempotent, acks=all), `rate` per second if given; return, in
    order, each one's RecordMetadata or the exception its delivery failed with."""
    options = {"linger_ms": 5, **producer_options}
    client = producer(settings, **options)
    await client.start()
    futures: list[asyncio.Future] = []
    bar = tqdm(total=total, unit="msg", desc=desc or f"sending to {topic}", disable=not progress)
    try:
        started = time.monotonic()
        for i, message in enumerate(messages):  # pulled only when its turn has come
            key, value, *rest = message
            timestamp = rest[0] if rest else None
            try:
                future = await client.send(topic, value, key=key, timestamp_ms=timestamp)
            except KafkaError as exc:  # refused before queuing (e.g. too large): its result
                future = asyncio.get_running_loop().create_future()
                future.set_exception(exc)
            future.add_done_callback(lambda _: bar.update(1))
            futures.append(future)
            ahead = started + (i + 1) / rate - time.monotonic() if rate else 0.0
            if ahead > 0:
                await asyncio.sleep(ahead)
            elif i % 1000 == 999:
                await asyncio.sleep(0)  # let deliveries complete while a long list is queued
        results = await asyncio.gather(*futures, return_exceptions=True)
    finally:
        await client.stop()
        bar.close()
    return list(results)
