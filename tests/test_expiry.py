"""Session expiry by event time: a backlog does not end live sessions, idleness does (no broker)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from types import SimpleNamespace

from stream_app.config import WorkerConfig
from stream_app.core import CoreConfig
from stream_app.expiry import EventClock
from stream_app.metrics import WorkerMetrics
from stream_app.runtime import WorkerRuntime
from stream_app.session_cache import SessionCache
from stream_app.sessions import SessionState

TTL = 3_000


def test_clock_is_unknown_until_a_batch_is_applied():
    clock = EventClock()
    assert clock.now(0, wall_ms=10_000, end_offset=5) is None
    clock.read(0, 4)  # read, not yet in the table
    assert clock.now(0, wall_ms=10_000, end_offset=5) is None
    clock.applied(0, event_ms=1_000, wall_ms=2_000)
    assert clock.now(0, wall_ms=2_000, end_offset=5) == 1_000
    assert clock.now(1, wall_ms=2_000, end_offset=5) is None  # per partition


def test_clock_stands_still_while_behind_and_runs_with_the_wall_clock_when_caught_up():
    clock = EventClock()
    clock.read(0, 9)
    clock.applied(0, event_ms=1_000, wall_ms=50_000)
    # Behind (more in the partition than read), or the end unknown: the newest click time.
    assert clock.now(0, wall_ms=90_000, end_offset=100) == 1_000
    assert clock.now(0, wall_ms=90_000, end_offset=None) == 1_000
    # Caught up: an idle stream's event time passes with the wall clock since the batch.
    assert clock.now(0, wall_ms=90_000, end_offset=10) == 41_000
    # Older clicks in a later batch do not move it back; offsets only move forward.
    clock.applied(0, event_ms=500, wall_ms=90_000)
    clock.read(0, 3)
    assert clock.now(0, wall_ms=90_000, end_offset=10) == 1_000


def test_clock_never_runs_ahead_of_the_wall_clock():
    clock = EventClock()
    clock.read(0, 0)
    clock.applied(0, event_ms=10_000_000, wall_ms=1_000)  # a click stamped a day ahead
    assert clock.now(0, wall_ms=2_000, end_offset=1) == 2_000
    assert clock.now(0, wall_ms=2_000, end_offset=50) == 2_000


class Table(dict):
    """The table calls `expire_sessions` makes; `during_scan` runs as the scan ends."""

    during_scan = None

    def items(self) -> Iterator[tuple[bytes, bytes]]:  # type: ignore[override]
        yield from list(super().items())
        if self.during_scan is not None:
            self.during_scan(self)


class Consumer:
    def __init__(self, ends: dict[int, int]) -> None:
        self.ends = ends

    def highwater(self, tp) -> int:
        assert tp.partition in self.ends, "Partition is not assigned"  # like aiokafka
        return self.ends[tp.partition]


def runtime(table: Table, ends: dict[int, int]) -> WorkerRuntime:
    """A WorkerRuntime with only what expiry uses: no Faust app, no broker."""
    rt = WorkerRuntime.__new__(WorkerRuntime)
    rt.config = WorkerConfig(partitions=3, core=CoreConfig(session_ttl_ms=TTL))
    rt.app = SimpleNamespace(consumer=Consumer(ends))
    rt.sessions = table
    rt.cache = SessionCache(10)
    rt.clock = EventClock()
    rt.metrics = WorkerMetrics()
    return rt


def session(partition: int, last_event_ms: int) -> bytes:
    return SessionState(partition, ["i1"], [0], last_event_ms, touched_ms=0, count=1).encode()


def expire(rt: WorkerRuntime) -> tuple[float, float]:
    asyncio.run(rt.expire_sessions())
    sample = rt.metrics.registry.get_sample_value
    return sample("gru4stream_sessions_expired_total"), sample("gru4stream_sessions")


def test_a_backlog_an_hour_old_does_not_end_sessions_until_event_time_passes_them():
    now = int(time.time() * 1000)
    t0 = now - 3_600_000  # the worker was down for an hour; the clicks since wait in Kafka
    table = Table({b"a": session(0, t0), b"b": session(0, t0 + 2_000), b"old": session(1, t0)})
    rt = runtime(table, ends={0: 500, 1: 10})
    # The first batch of the backlog: partition 0 is behind, at t0 + 2.5 s in event time.
    rt.clock.read(0, 99)
    rt.clock.applied(0, event_ms=t0 + 2_500, wall_ms=now)
    assert expire(rt) == (0, 3)  # partition 1 has no clock yet: nothing of it expires
    # Further into the backlog: t0 + 4 s is more than the TTL after "a" only.
    rt.clock.read(0, 199)
    rt.clock.applied(0, event_ms=t0 + 4_000, wall_ms=now)
    assert expire(rt) == (1, 2)
    assert set(table) == {b"b", b"old"}


def test_an_idle_partition_that_is_caught_up_ends_its_sessions():
    now = int(time.time() * 1000)
    table = Table({b"a": session(2, now - 5_000), b"b": session(2, now - 1_000)})
    rt = runtime(table, ends={2: 8})
    rt.cache.lookup(0, [])
    for key, raw in table.items():  # both written by this worker
        rt.cache.store(key.decode(), SessionState.decode(raw))
    rt.clock.read(2, 7)  # everything the partition holds
    rt.clock.applied(2, event_ms=now - 1_000, wall_ms=now - 1_000)
    assert expire(rt) == (1, 1)
    assert set(table) == {b"b"}
    assert list(rt.cache.lookup(0, ["a", "b"])) == ["b"]  # the next click of "a" starts over

    # Clicks a day old (a replayed archive): idleness counts, not their age.
    day = 86_400_000
    table = Table({b"a": session(2, now - day - 5_000), b"b": session(2, now - day)})
    rt = runtime(table, ends={2: 8})
    rt.clock.read(2, 7)
    rt.clock.applied(2, event_ms=now - day, wall_ms=now)
    assert expire(rt) == (1, 1)
    assert set(table) == {b"b"}


def test_a_session_moved_on_during_the_scan_is_not_deleted():
    now = int(time.time() * 1000)
    table = Table({b"a": session(0, now - 60_000), b"b": session(0, now - 60_000)})
    rt = runtime(table, ends={0: 3})
    rt.clock.read(0, 2)
    rt.clock.applied(0, event_ms=now, wall_ms=now)

    def agent_batch(t: Table) -> None:  # a click for "a" applied while the scan yielded
        t[b"a"] = session(0, now)

    table.during_scan = agent_batch
    assert expire(rt) == (1, 1)
    assert set(table) == {b"a"}
