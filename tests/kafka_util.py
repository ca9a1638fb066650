"""Helpers for integration tests against the real broker (fixtures `kafka_bootstrap`,
`kafka_settings`).

`kafka` is a `KafkaSettings` or a bare `host:port` (a plaintext broker there); every client is
built by `kafka_io.clients`.

Names (several people and CI share one broker, so every test uses its own topics/groups):
    unique_topic(prefix="test") -> str          e.g. "clicks-3f9a1c2e"
    unique_group(prefix="group") -> str

Synchronous helpers (call them from plain test functions, not inside a running event loop):
    create_topic(kafka, spec_or_name, partitions=1, config=None) -> str   # the name
    produce(kafka, topic, messages) -> list[tuple[int, int]]             # (partition, offset)
    consume_all(kafka, topic, *, min_count=None, until=None, timeout_s=30, idle_s=1)
        -> list[ConsumerRecord]                                          # .key .value ...
    topic_config(kafka, topic) -> dict[str, str]
    partition_count(kafka, topic) -> int

Each has an async twin prefixed with `a` (`acreate_topic`, `aproduce`, `aconsume_all`, ...)
for tests that already run an event loop.

`messages` items are `value` bytes or `(key, value)` pairs; str keys/values are UTF-8 encoded.
`consume_all` reads without a consumer group, from the beginning of every partition:
- `min_count=None`: everything up to the end offsets at the time of the call (exact, fast);
- `min_count=n`: waits until at least n records arrived (or `timeout_s` passed), then until
  no new record arrives for `idle_s`, so extra (e.g. duplicate) records are seen too;
- `until=f`: like `min_count`, but waits until `f(records)` is true (when duplicates make a
  count meaningless).
Records come back sorted by (partition, offset).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable
from uuid import uuid4

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from kafka_io.clients import admin, consumer, producer
from kafka_io.settings import KafkaSettings, load_settings
from kafka_io.topics import create_topics
from schemas.topics import TopicSpec

Message = bytes | str | tuple[bytes | str | None, bytes | str | None]
Kafka = KafkaSettings | str


def settings_of(kafka: Kafka) -> KafkaSettings:
    """`kafka` itself, or the settings of a plaintext broker at a bare `host:port`."""
    if isinstance(kafka, KafkaSettings):
        return kafka
    return load_settings(overrides={"bootstrap.servers": kafka}, environ={})


def unique_topic(prefix: str = "test") -> str:
    return f"{prefix}-{uuid4().hex[:8]}"


def unique_group(prefix: str = "group") -> str:
    return f"{prefix}-{uuid4().hex[:8]}"


def _bytes(x: bytes | str | None) -> bytes | None:
    return x.encode() if isinstance(x, str) else x


async def acreate_topic(
    kafka: Kafka,
    spec_or_name: TopicSpec | str,
    partitions: int = 1,
    config: dict[str, str] | None = None,
) -> str:
    spec = (
        spec_or_name
        if isinstance(spec_or_name, TopicSpec)
        else TopicSpec(spec_or_name, partitions, dict(config or {}))
    )
    await create_topics(settings_of(kafka), [spec])
    return spec.name


async def aproduce(kafka: Kafka, topic: str, messages: Iterable[Message]) -> list[tuple[int, int]]:
    client = producer(settings_of(kafka))
    await client.start()
    try:
        futures = []
        for m in messages:
            key, value = m if isinstance(m, tuple) else (None, m)
            futures.append(await client.send(topic, _bytes(value), key=_bytes(key)))
        metas = await asyncio.gather(*futures)
    finally:
        await client.stop()
    return [(md.partition, md.offset) for md in metas]


async def _partitions(consumer: AIOKafkaConsumer, topic: str, timeout_s: float) -> set[int]:
    deadline = time.monotonic() + timeout_s
    while True:
        cluster = await consumer._client.fetch_all_metadata()
        parts = cluster.partitions_for_topic(topic)
        if parts:
            return parts
        if time.monotonic() > deadline:
            raise TimeoutError(f"topic {topic!r} does not exist after {timeout_s:.0f} s")
        await asyncio.sleep(0.2)


async def aconsume_all(
    kafka: Kafka,
    topic: str,
    *,
    min_count: int | None = None,
    until: Callable[[list[ConsumerRecord]], bool] | None = None,
    timeout_s: float = 30.0,
    idle_s: float = 1.0,
) -> list[ConsumerRecord]:
    if until is not None:
        min_count = min_count or 0
    client = consumer(settings_of(kafka), group_id=None)
    await client.start()
    try:
        tps = [
            TopicPartition(topic, p) for p in sorted(await _partitions(client, topic, timeout_s))
        ]
        client.assign(tps)
        await client.seek_to_beginning(*tps)
        end = await client.end_offsets(tps) if min_count is None else None
        records: list[ConsumerRecord] = []
        deadline = time.monotonic() + timeout_s
        last_new = time.monotonic()
        while time.monotonic() < deadline:
            if end is not None and await _reached_end(client, end):
                break
            batch = await client.getmany(*tps, timeout_ms=200)
            got = [r for rs in batch.values() for r in rs]
            if got:
                records.extend(got)
                last_new = time.monotonic()
            elif (
                min_count is not None
                and len(records) >= min_count
                and (until is None or until(records))
                and time.monotonic() - last_new >= idle_s
            ):
                break
    finally:
        await client.stop()
    return sorted(records, key=lambda r: (r.partition, r.offset))


async def _reached_end(consumer: AIOKafkaConsumer, end: dict[TopicPartition, int]) -> bool:
    for tp, offset in end.items():
        if await consumer.position(tp) < offset:
            return False
    return True


async def topic_description(kafka: Kafka, topic: str) -> tuple[int, dict[str, str]]:
    client = admin(settings_of(kafka))
    await client.start()
    try:
        (meta,) = await client.describe_topics([topic])
        resp = await client.describe_configs([ConfigResource(ConfigResourceType.TOPIC, topic)])
    finally:
        await client.close()
    entries = resp[0].to_object()["resources"][0]["config_entries"]
    return len(meta["partitions"]), {e["config_names"]: e["config_value"] for e in entries}


def create_topic(
    kafka: Kafka,
    spec_or_name: TopicSpec | str,
    partitions: int = 1,
    config: dict[str, str] | None = None,
) -> str:
    return asyncio.run(acreate_topic(kafka, spec_or_name, partitions, config))


def produce(kafka: Kafka, topic: str, messages: Iterable[Message]) -> list[tuple[int, int]]:
    return asyncio.run(aproduce(kafka, topic, messages))


def consume_all(
    kafka: Kafka,
    topic: str,
    *,
    min_count: int | None = None,
    until: Callable[[list[ConsumerRecord]], bool] | None = None,
    timeout_s: float = 30.0,
    idle_s: float = 1.0,
) -> list[ConsumerRecord]:
    return asyncio.run(
        aconsume_all(
            kafka, topic, min_count=min_count, until=until, timeout_s=timeout_s, idle_s=idle_s
        )
    )


def topic_config(kafka: Kafka, topic: str) -> dict[str, str]:
    return asyncio.run(topic_description(kafka, topic))[1]


def partition_count(kafka: Kafka, topic: str) -> int:
    return asyncio.run(topic_description(kafka, topic))[0]
