"""A micro-batch's sessions read and written in one go, beside Faust's table API.

Faust's `Table` reads and writes one key at a time: every access finds its RocksDB partition
through the *current event* (so a batch spanning partitions needs a stand-in event per key),
and every write queues one changelog message through the producer buffer (`send_soon`),
whose background task publishes it with Faust's per-message bookkeeping. At a few thousand
clicks/s that was a third of a worker's time. Here a batch's sessions are read with one
RocksDB multi-get per partition, written with one `WriteBatch` per partition, and their
changelog records are appended to the producer's batches in one go (kafka_io/bulk_send.py),
their deliveries awaited by the `AckGate`.

What this relies on in Faust 0.15.3 (tests/test_session_store.py fails if it changes):
- `table.data` is the RocksDB store, `store._db_for_partition(p)` the rocksdict database of
  table partition `p` (raw keys and values, as Faust opens it for bytes keys and values);
- the table partition of a key is the partition of the click that wrote it (Faust's
  `partition_for_key` takes the current event's partition), and its changelog record goes
  to the same partition of `table.changelog_topic`, keyed and valued with the raw bytes, so
  Faust's own recovery (and standbys) restore exactly what was written here;
- `store.set_persisted_offset(tp, offset)` records how far the local database has the
  changelog, as Faust's `_on_changelog_sent` does per record (here per partition and
  micro-batch, once delivered): a restarted worker then reads only what was written after.
The writes keep Faust's order (changelog record queued, then the value stored); they skip
Faust's table sensors and its window key bookkeeping, which the sessions table (not windowed)
does not use.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence

import faust
from aiokafka import AIOKafkaProducer
from faust.types import TP
from rocksdict import WriteBatch

from kafka_io.bulk_send import Delivery, append_records


class SessionStore:
    """Batch reads and writes of the `sessions` table's raw values."""

    def __init__(self, table: faust.Table) -> None:
        self.table = table

    @property
    def changelog_topic(self) -> str:
        return self.table.changelog_topic.get_topic_name()

    def read(self, keys: Iterable[tuple[int, bytes]]) -> dict[bytes, bytes | None]:
        """(partition, key) pairs -> each key's stored value (None: absent)."""
        by_partition: dict[int, list[bytes]] = defaultdict(list)
        for partition, key in keys:
            by_partition[partition].append(key)
        values: dict[bytes, bytes | None] = {}
        for partition, wanted in by_partition.items():
            db = self.table.data._db_for_partition(partition)
            values.update(zip(wanted, db[wanted], strict=True))
        return values

    async def write(
        self, records: Sequence[tuple[int, bytes, bytes]], producer: AIOKafkaProducer
    ) -> list[Delivery]:
        """Store (partition, key, value) records and send their changelog; the deliveries."""
        topic = self.changelog_topic
        # Faust's order: the changelog records queued, then the values stored.
        sent = await append_records(producer, [(topic, p, k, v) for p, k, v in records])
        batches: dict[int, WriteBatch] = {}
        for partition, key, value in records:
            batch = batches.get(partition)
            if batch is None:
                batch = batches[partition] = WriteBatch(raw_mode=True)
            batch.put(key, value)
        store = self.table.data
        for partition, batch in batches.items():
            store._db_for_partition(partition).write(batch)
        newest = {delivery.tp.partition: delivery for delivery in sent}
        for partition, delivery in newest.items():
            # A partition's newest delivery has the highest offset of the batch there.
            delivery.future.add_done_callback(self._persisted(TP(topic, partition), delivery))
        return sent

    def _persisted(self, tp: TP, delivery: Delivery) -> Callable[[asyncio.Future], None]:
        def record(fut: asyncio.Future) -> None:
            if not fut.cancelled() and fut.exception() is None:
                offset = delivery.last_offset()
                if offset is not None:
                    self.table.data.set_persisted_offset(tp, offset)

        return record
