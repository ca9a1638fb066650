"""The decoded sessions kept in front of the table: what a batch reads, writes and forgets.

The worker-level tests (tests/test_worker.py, tests/test_faults.py, tests/test_failover.py)
run with the cache on, its default; these check its rules directly (no broker).
"""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import numpy as np

from schemas.artifact import read_artifact
from schemas.events import ClickEvent
from scoring import ServingModel
from stream_app.config import WorkerConfig
from stream_app.core import BatchResult, Click, CoreConfig, answer_batch
from stream_app.expiry import EventClock
from stream_app.metrics import WorkerMetrics
from stream_app.runtime import WorkerRuntime
from stream_app.session_cache import SessionCache
from stream_app.sessions import SessionState
from stream_app.synthetic import write_random_artifact

NOW = 1_800_000_000_000


def state(partition: int, *items: str) -> SessionState:
    return SessionState(partition, list(items), list(range(len(items))), NOW, NOW, len(items))


def test_sessions_are_found_until_the_generation_changes():
    cache = SessionCache(capacity=10)
    a = state(0, "i1")
    assert cache.lookup(1, ["a"]) == {}
    cache.store("a", a)
    assert cache.lookup(1, ["a", "b"]) == {"a": a}
    assert cache.lookup(1, ["a"])["a"] is a  # the object itself: the core advances it in place
    assert cache.lookup(2, ["a"]) == {}  # a rebalance: another worker may have written it since
    assert len(cache) == 0


def test_the_least_recently_written_session_goes_first():
    cache = SessionCache(capacity=2)
    cache.lookup(1, [])
    cache.store("a", state(0, "i1"))
    cache.store("b", state(0, "i2"))
    cache.store("a", state(0, "i1", "i3"))  # written again: now the most recent
    cache.store("c", state(0, "i4"))
    assert sorted(cache.lookup(1, ["a", "b", "c"])) == ["a", "c"]
    cache.evict("a")
    assert sorted(cache.lookup(1, ["a", "b", "c"])) == ["c"]
    off = SessionCache(capacity=0)
    off.store("a", state(0, "i1"))
    assert off.lookup(None, ["a"]) == {}


class Store:
    """The SessionStore calls the runtime makes, over a dict of raw values."""

    def __init__(self, values: dict[bytes, bytes]) -> None:
        self.values = values
        self.read_keys: list[bytes] = []

    def read(self, keys) -> dict[bytes, bytes | None]:
        keys = [key for _, key in keys]
        self.read_keys += keys
        return {key: self.values.get(key) for key in keys}

    async def write(self, records, producer) -> list:
        self.values.update({key: value for _, key, value in records})
        return []


def runtime(store: Store, **config) -> WorkerRuntime:
    """A WorkerRuntime with what the batch's table steps use: no Faust app, no broker."""
    rt = WorkerRuntime.__new__(WorkerRuntime)
    rt.config = WorkerConfig(**config)
    rt.app = SimpleNamespace(consumer_generation_id=7)
    rt.store = store
    rt.cache = SessionCache(rt.config.session_cache)
    rt.clock = EventClock()
    rt.metrics = WorkerMetrics()
    rt._producer = lambda: None
    return rt


def click(sid: str, partition: int = 0) -> Click:
    return Click(ClickEvent(sid, "i9", NOW), "clicks", partition, 5, b"{}", sid.encode(), NOW)


def test_a_batch_reads_the_table_only_for_sessions_it_has_not_written():
    store = Store({b"a": state(0, "i1").encode(), b"b": state(1, "i2").encode()})
    rt = runtime(store)
    first = rt.read_sessions([click("a"), click("b", 1)])
    assert sorted(store.read_keys) == [b"a", b"b"]
    assert first["a"].items == ["i1"]

    result = BatchResult(sessions={"a": first["a"]})
    first["a"].items.append("i9")  # what the core does with a click of "a"
    asyncio.run(rt.write_sessions(result))
    store.read_keys.clear()
    second = rt.read_sessions([click("a"), click("b", 1), click("new")])
    assert second["a"] is first["a"] and second["a"].items == ["i1", "i9"]
    assert sorted(store.read_keys) == [b"b", b"new"]  # "b" was read, never written: not kept
    assert second["new"] is None
    hits = rt.metrics.registry.get_sample_value("gru4stream_session_cache_hits_total")
    assert hits == 1

    rt.app.consumer_generation_id = 8  # after a rebalance, everything comes from the table
    store.read_keys.clear()
    rt.read_sessions([click("a")])
    assert store.read_keys == [b"a"]


def test_a_session_too_large_to_write_is_not_kept():
    store = Store({})
    rt = runtime(store, producer_max_request_size=2_000)
    small, large = state(0, "i1"), state(0, *(f"item-{n:05d}" for n in range(400)))
    result = BatchResult(sessions={"small": small, "large": large})
    rt.read_sessions([])  # the batch's read, under the current generation
    rt.cache.store("large", large)  # as an earlier batch wrote it
    asyncio.run(rt.write_sessions(result))
    assert list(store.values) == [b"small"]
    assert rt.cache.lookup(7, ["small", "large"]) == {"small": small}


def test_a_cached_state_is_not_a_view_of_the_batch(tmp_path):
    """A view would keep the whole batch's states alive as long as the session is cached."""
    path = write_random_artifact(tmp_path / "m", version="m", n_items=50, seed=3)
    model = ServingModel.from_artifact(read_artifact(path))
    result = answer_batch(model, [click("a"), click("b")], {}, CoreConfig(), now_ms=NOW)
    first, second = (session.hidden for session in result.sessions.values())
    assert first.base is None and second.base is None
    assert not np.shares_memory(first, second)
