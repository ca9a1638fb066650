"""Many records onto a producer's open batches at once, with one delivery per batch.

`AIOKafkaProducer.send` is a coroutine per record: a metadata check, the partitioner, an
append to the partition's open batch, a future for the record, and on delivery a
`RecordMetadata` for it. Faust's producer wraps that in one more coroutine. A worker that
sends two records per click (its answer and its session's changelog record) spent about a
tenth of its event loop there (py-spy profile of `benchmarks/bench_stream.py`).
`append_records` appends a micro-batch's records to the same open batches `send` would
use, with the same builder call, and hands back one `Delivery` per run of records that went
into one batch, completed with that batch's outcome: the broker acknowledges or fails a
batch as a whole, so each record's outcome is its batch's.

What this relies on in aiokafka 0.14 (tests/test_bulk_send.py fails if it changes):
- `producer._message_accumulator` keeps the open batches of each partition in
  `_batches[tp]`, the newest last; `_append_batch(create_builder(), tp)` opens one and wakes
  the sender, as `add_message` does;
- `MessageBatch._builder.append(timestamp=, key=, value=)` returns the record's metadata
  (its `offset` relative to the batch's first record), or None once the batch is full or
  closed, in which case `add_message` (what `send` awaits) waits for the batch to go out;
- `MessageBatch.future` resolves with the batch's `RecordMetadata` (offset: the first
  record's) when the broker acknowledges it, and fails with the batch's error otherwise;
- `producer._partition(...)` applies the producer's partitioner, so keys land where `send`
  would put them; with aiokafka's `DefaultPartitioner` (`producer._partitioner`, given the
  topic's partitions from `producer.client.cluster`) a key's partition is remembered.
"""

from __future__ import annotations

import asyncio
import copy
from collections.abc import Iterable
from dataclasses import dataclass

from aiokafka import AIOKafkaProducer
from aiokafka.errors import ProducerClosed
from aiokafka.partitioner import DefaultPartitioner
from aiokafka.structs import TopicPartition

# (topic, partition or None for the producer's partitioner, key, value)
Record = tuple[str, int | None, bytes | None, bytes]


# (key, the topic's partitions) -> the default partitioner's choice. Its murmur2 is pure
# Python, ~2.5 µs a key, and a worker sends an answer keyed by session id per click.
_keyed: dict[tuple[bytes, tuple[int, ...]], int] = {}
_KEYED_MAX = 100_000


def _partition(
    producer: AIOKafkaProducer,
    topic: str,
    key: bytes | None,
    value: bytes,
    partitions: tuple[int, ...],
) -> int:
    """Where `send` would put a record without a partition."""
    if key is None or type(producer._partitioner) is not DefaultPartitioner:
        return producer._partition(topic, None, key, value, key, value)
    memo = (key, partitions)
    partition = _keyed.get(memo)
    if partition is None:
        if len(_keyed) >= _KEYED_MAX:
            _keyed.clear()
        # A keyed record's partition depends on its key and the topic's partitions only.
        partition = _keyed[memo] = producer._partitioner(key, list(partitions), [])
    return partition


@dataclass(slots=True)
class Delivery:
    """The broker's answer for a run of records that went into one batch of `tp`."""

    tp: TopicPartition
    future: asyncio.Future  # its RecordMetadata's offset is the batch's (or record's) first
    last: int  # the run's last record's offset, relative to that

    def last_offset(self) -> int | None:
        """The run's last record's offset, once delivered (None with acks=0)."""
        metadata = self.future.result()
        return None if metadata is None else metadata.offset + self.last


async def append_records(producer: AIOKafkaProducer, records: Iterable[Record]) -> list[Delivery]:
    """Append records in order to the producer's batches; their deliveries, oldest first.

    Records of one partition keep their order, as with `send`; the broker acknowledges them in
    that order, so a partition's last `Delivery` carries its highest offset.
    """
    accumulator = producer._message_accumulator
    timeout_s = producer._request_timeout_ms / 1000
    # id(batch.future) -> the batch's run, in the order the runs began. Keyed by the future,
    # which the run keeps alive, so no later batch can reuse the id within this call.
    runs: dict[int, Delivery] = {}
    partitions: dict[str, tuple[int, ...]] = {}
    for topic, partition, key, value in records:
        if topic not in partitions:
            await producer.client._wait_on_metadata(topic)
            partitions[topic] = tuple(producer.client.cluster.partitions_for_topic(topic))
        if partition is None:
            partition = _partition(producer, topic, key, value, partitions[topic])
        tp = TopicPartition(topic, partition)
        if accumulator._closed:
            raise ProducerClosed()
        if accumulator._exception is not None:
            raise copy.copy(accumulator._exception)
        queued = accumulator._batches.get(tp)
        if queued:
            batch = queued[-1]
        else:
            batch = accumulator._append_batch(accumulator.create_builder(), tp)
        metadata = batch._builder.append(timestamp=None, key=key, value=value)
        if metadata is None:
            # The open batch is full: `send`'s own path waits for it to go out, then appends.
            future = await accumulator.add_message(tp, key, value, timeout_s)
            runs[id(future)] = Delivery(tp, future, 0)
            continue
        run = runs.get(id(batch.future))
        if run is None:
            runs[id(batch.future)] = Delivery(tp, batch.future, metadata.offset)
        else:
            run.last = metadata.offset
    return list(runs.values())
