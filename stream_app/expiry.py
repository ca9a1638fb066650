"""How far each `clicks` partition has got in event time: the clock that session expiry reads.

A session is over when the stream's event time has moved more than the TTL past its last
click (the core applies the same rule to a session's own next click). Wall-clock expiry
would end live sessions while a worker catches up on a backlog (after downtime, a failover
or a slow spell): their next clicks are already in Kafka, only not read yet.

Per partition the clock is the newest event time applied from it. While the worker has read
all the partition holds (caught up), the clock also runs on with the wall clock since that
batch was applied, so the sessions of an idle stream still end; while it is behind, the
clock stands still. It never runs ahead of the wall clock, so one click stamped in the
future cannot end every session of its partition. A partition the worker has applied
nothing from since it started has no clock, and its sessions are left alone until it has.
Producers append each partition roughly in time order, so a session older than the clock
by more than the TTL would be restarted by its next click anyway.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class _PartitionClock:
    newest_event_ms: int = -1  # -1: nothing applied yet
    applied_at_ms: int = 0  # wall time when the newest batch was applied
    read_offset: int = -1  # the highest offset read (valid clicks and dead letters alike)


class EventClock:
    def __init__(self) -> None:
        self._partitions: dict[int, _PartitionClock] = {}

    def _get(self, partition: int) -> _PartitionClock:
        clock = self._partitions.get(partition)
        if clock is None:
            clock = self._partitions[partition] = _PartitionClock()
        return clock

    def read(self, partition: int, offset: int) -> None:
        """A message was taken from the partition (for the caught-up test)."""
        clock = self._get(partition)
        if offset > clock.read_offset:
            clock.read_offset = offset

    def applied(self, partition: int, event_ms: int, wall_ms: int) -> None:
        """The sessions of a batch are in the table; `event_ms` is its newest click time."""
        clock = self._get(partition)
        clock.applied_at_ms = wall_ms
        if event_ms > clock.newest_event_ms:
            clock.newest_event_ms = event_ms

    def now(self, partition: int, wall_ms: int, end_offset: int | None) -> int | None:
        """The partition's event time, or None while unknown.

        `end_offset` is the partition's end (the offset its next message will get) as the
        consumer last saw it; None when unknown, which counts as behind.
        """
        clock = self._partitions.get(partition)
        if clock is None or clock.newest_event_ms < 0:
            return None
        event_ms = clock.newest_event_ms
        if end_offset is not None and clock.read_offset + 1 >= end_offset:
            event_ms += max(wall_ms - clock.applied_at_ms, 0)
        return min(event_ms, wall_ms)
