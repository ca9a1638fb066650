"""Reading the archive: the records of a topic between two times or offsets.

The `clicks` topic is the archive that training, retraining and replay read. This reads a
range of it once, up to the end offsets seen at the start (so a topic that keeps growing
still gives a finite answer), without a consumer group: nothing is committed.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from aiokafka import ConsumerRecord, TopicPartition
from tqdm import tqdm

from kafka_io.clients import consumer
from kafka_io.settings import KafkaSettings
from kafka_io.topics import topic_partitions


@dataclass
class ArchiveRange:
    """The records read, per partition in offset order, and the [start, stop) offsets."""

    records: list[ConsumerRecord]
    offsets: dict[int, tuple[int, int]] = field(default_factory=dict)


async def read_range(
    settings: KafkaSettings,
    topic: str,
    *,
    start_ms: int | None = None,
    end_ms: int | None = None,
    start_offsets: dict[int, int] | None = None,
    end_offsets: dict[int, int] | None = None,
    progress: bool = True,
    timeout_s: float = 60.0,
) -> ArchiveRange:
    """Records with a broker timestamp in [start_ms, end_ms) and offsets in
    [start_offsets, end_offsets) per partition (all bounds optional).

    TimeoutError when no record arrives for `timeout_s` while partitions are short of their
    end; TopicError when the topic does not exist.
    """
    partitions = await topic_partitions(settings, topic)
    client = consumer(settings, group_id=None)
    await client.start()
    try:
        tps = [TopicPartition(topic, p) for p in partitions]
        client.assign(tps)
        first = await client.beginning_offsets(tps)
        stop = await client.end_offsets(tps)
        start = dict(first)
        if start_offsets is not None:
            start = {tp: max(first[tp], start_offsets.get(tp.partition, first[tp])) for tp in tps}
        if start_ms is not None:
            found = await client.offsets_for_times({tp: start_ms for tp in tps})
            for tp in tps:
                start[tp] = max(start[tp], stop[tp] if found[tp] is None else found[tp].offset)
        if end_offsets is not None:
            stop = {tp: min(stop[tp], end_offsets.get(tp.partition, stop[tp])) for tp in tps}
        if end_ms is not None:
            found = await client.offsets_for_times({tp: end_ms for tp in tps})
            stop = {
                tp: stop[tp] if found[tp] is None else min(stop[tp], found[tp].offset) for tp in tps
            }
        todo = [tp for tp in tps if start[tp] < stop[tp]]
        for tp in todo:
            client.seek(tp, start[tp])
        records = await _read_until(client, todo, start, stop, progress, timeout_s, topic)
    finally:
        await client.stop()
    # Timestamps can go backwards within a partition (producer clocks), so filter them too.
    kept = [
        r
        for r in records
        if (start_ms is None or r.timestamp >= start_ms)
        and (end_ms is None or r.timestamp < end_ms)
    ]
    return ArchiveRange(kept, {tp.partition: (start[tp], stop[tp]) for tp in tps})


async def _read_until(client, tps, start, stop, progress, timeout_s, topic) -> list:
    records: list[ConsumerRecord] = []
    total = sum(stop[tp] - start[tp] for tp in tps)
    bar = tqdm(total=total, unit="msg", desc=f"reading {topic}", disable=not progress)
    pending = set(tps)
    last_progress = time.monotonic()
    try:
        while pending:
            batch = await client.getmany(*pending, timeout_ms=500)
            for tp, msgs in batch.items():
                kept = [m for m in msgs if m.offset < stop[tp]]
                records.extend(kept)
                bar.update(len(kept))
            for tp in list(pending):
                if await client.position(tp) >= stop[tp]:
                    pending.discard(tp)
                    client.pause(tp)
            if batch:
                last_progress = time.monotonic()
            elif time.monotonic() - last_progress > timeout_s:
                raise TimeoutError(
                    f"{topic}: no messages for {timeout_s:.0f} s with {len(pending)} "
                    "partition(s) short of their end offsets"
                )
    finally:
        bar.close()
    return records
