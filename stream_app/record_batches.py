"""A micro-batch's records sent as one record batch per partition, in order.

aiokafka's `send` costs about 20 µs of CPU per record, a future each, and (with a key) a
pure-Python murmur2 hash; a worker sends two records per click (the answer and the session's
changelog record). Appending to a `BatchBuilder` and handing it over with `send_batch` costs
about half, with one future per partition (`benchmarks/bench_stream.py` shows the profile).

Order: `send_batch` waits while an earlier batch of the same partition is still queued in
the producer, and two waiting calls would not be guaranteed to go in turn. So the batches of
one micro-batch are handed over only after the previous micro-batch's were (`Outbox.submit`
chains them): records reach each partition in the order they were made, and a session's last
changelog record is always its newest state. What a micro-batch produced is delivered when
the awaitable `submit` returns is done; it raises if any of it (or anything before) failed.

Keyed records without a partition go where aiokafka's default partitioner would send them
(murmur2 of the key, as Kafka's Java client), so consumers see the same partitioning as
before; the hash is cached per key, since a session's answers all share its key.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable
from typing import Any, NamedTuple

from aiokafka.partitioner import murmur2


class Delivered(NamedTuple):
    """A record batch the broker has: its partition and the offset of its last record."""

    topic: str
    partition: int
    last_offset: int


@functools.lru_cache(maxsize=1 << 16)
def _key_hash(key: bytes) -> int:
    return murmur2(key) & 0x7FFFFFFF


def default_partition(key: bytes, partitions: int) -> int:
    """The partition aiokafka's (and Kafka's) default partitioner picks for a key."""
    return _key_hash(key) % partitions


class BatchSender:
    """Makes `Outbox`es for one producer and keeps their submissions in order."""

    def __init__(self, producer: Callable[[], Any]) -> None:
        self._producer = producer  # an aiokafka AIOKafkaProducer, read late (it starts later)
        self._tail: asyncio.Task | None = None
        self._partitions: dict[str, int] = {}

    async def partitions(self, topic: str) -> int:
        """How many partitions `topic` has (from the producer's metadata, cached)."""
        count = self._partitions.get(topic)
        if count is None:
            count = self._partitions[topic] = len(await self._producer().partitions_for(topic))
        return count

    def outbox(self) -> Outbox:
        return Outbox(self)

    def _submit(self, builders: list[tuple[str, int, Any]]) -> asyncio.Task:
        task = asyncio.ensure_future(self._hand_over(self._tail, builders))
        self._tail = task
        return task

    async def _hand_over(
        self, previous: asyncio.Task | None, builders: list[tuple[str, int, Any]]
    ) -> list[asyncio.Future]:
        if previous is not None:
            await previous  # raises if an earlier micro-batch could not be handed over
        producer = self._producer()
        return [
            await producer.send_batch(builder, topic, partition=partition)
            for topic, partition, builder in builders
        ]


class Outbox:
    """The records of one micro-batch, grouped into record batches by topic and partition."""

    def __init__(self, sender: BatchSender) -> None:
        self._sender = sender
        self._open: dict[tuple[str, int], Any] = {}
        self._builders: list[tuple[str, int, Any]] = []  # in the order they were started
        self.records = 0
        self._callbacks: list[Callable[[list[Delivered]], None]] = []

    def add(self, topic: str, partition: int, key: bytes | None, value: bytes | None) -> None:
        """Queue one record (sized beforehand: see delivery.record_fits)."""
        builder = self._open.get((topic, partition))
        if builder is None or builder.append(key=key, value=value, timestamp=None) is None:
            # No batch yet, or it is full (the producer's max_batch_size): start another.
            builder = self._sender._producer().create_batch()
            self._open[(topic, partition)] = builder
            self._builders.append((topic, partition, builder))
            if builder.append(key=key, value=value, timestamp=None) is None:
                raise ValueError(f"a record of {len(value or b'')} bytes fits no batch")
        self.records += 1

    async def add_keyed(self, topic: str, key: bytes, value: bytes) -> int:
        """Queue a record to the partition of its key; returns the partition."""
        partition = default_partition(key, await self._sender.partitions(topic))
        self.add(topic, partition, key, value)
        return partition

    def on_delivered(self, callback: Callable[[list[Delivered]], None]) -> None:
        """Call `callback` with what was delivered, once all of this outbox is."""
        self._callbacks.append(callback)

    def submit(self) -> Awaitable[None]:
        """Hand the batches to the producer after the previous outbox's; their delivery."""
        counts = [builder.record_count() for _, _, builder in self._builders]
        handed = self._sender._submit(self._builders)
        self._open, self._builders = {}, []
        return _delivered(handed, counts, self._callbacks)


async def _delivered(
    handed: asyncio.Task, counts: list[int], callbacks: list[Callable[[list[Delivered]], None]]
) -> None:
    batches = await asyncio.gather(*await handed)
    delivered = [
        Delivered(meta.topic, meta.partition, meta.offset + count - 1)
        for meta, count in zip(batches, counts, strict=True)
    ]
    for callback in callbacks:
        callback(delivered)
