"""The worker end to end against a real broker: answers, poison input, crash recovery."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from uuid import uuid4

import numpy as np
import orjson
import pytest
import torch

from batch_training.model import GRU4Rec
from schemas.artifact import read_artifact
from schemas.events import ClickEvent, decode_dead_letter, decode_recommendation
from scoring import ServingModel
from stream_app.core import Click, CoreConfig, answer_batch
from stream_app.harness import BackgroundProducer, WorkerProcess, click_message
from stream_app.synthetic import write_random_artifact
from tests.kafka_util import consume_all, produce
from tests.test_scoring import torch_scores_after

pytestmark = pytest.mark.kafka
T0 = int(time.time() * 1000) - 3_600_000  # an hour ago: valid, and in order


@dataclass(frozen=True)
class Names:
    app_id: str
    clicks: str
    recs: str
    dlq: str
    updates: str

    @classmethod
    def fresh(cls) -> Names:
        tag = uuid4().hex[:8]
        return cls(f"w-{tag}", f"clicks-{tag}", f"recs-{tag}", f"dlq-{tag}", f"mu-{tag}")


def worker_args(bootstrap: str, names: Names, data_dir: Path, *extra: str) -> list[str]:
    return [
        "--bootstrap", bootstrap,
        "--app-id", names.app_id,
        "--clicks-topic", names.clicks,
        "--recommendations-topic", names.recs,
        "--dlq-topic", names.dlq,
        "--model-updates-topic", names.updates,
        "--data-dir", str(data_dir),
        "--standby-replicas", "0",
        "--broker-session-timeout", "6s",  # a killed worker's partitions move on quickly
        "--loglevel", "warning",
        *extra,
    ]  # fmt: skip


def start_worker(
    tmp: Path, bootstrap: str, names: Names, *extra: str, tag: str = "w"
) -> WorkerProcess:
    worker = WorkerProcess(
        worker_args(bootstrap, names, tmp / f"data-{tag}", *extra), tmp / f"{tag}.log"
    )
    worker.start()
    return worker


def recommendations(bootstrap: str, topic: str, count: int, timeout_s: float = 60.0):
    records = consume_all(bootstrap, topic, min_count=count, timeout_s=timeout_s, idle_s=1.5)
    return [(r.key, decode_recommendation(r.value)) for r in records]


def items(rec) -> list[str]:
    return [s.item_id for s in rec.items]


def offline_answers(model: ServingModel, clicks, positions, k: int = 20) -> dict:
    """What an uninterrupted worker answers: the core over all clicks, one batch, in order."""
    scored_answers = offline_scored_answers(model, clicks, positions, k)
    return {pos: [item for item, _ in answer] for pos, answer in scored_answers.items()}


@pytest.fixture(scope="module")
def served(tmp_path_factory, kafka_bootstrap):
    """One worker with model v1 for the tests below (each uses its own session ids)."""
    tmp = tmp_path_factory.mktemp("served")
    artifact = read_artifact(write_random_artifact(tmp / "v1", version="v1", n_items=300))
    names = Names.fresh()
    worker = start_worker(
        tmp, kafka_bootstrap, names, "--model", str(artifact.path), "--expose-sessions"
    )
    try:
        worker.wait_ready()
        yield worker, names, artifact
    finally:
        worker.stop()


def test_each_click_gets_one_answer_equal_to_the_torch_model(served, kafka_bootstrap):
    worker, names, artifact = served
    reference = GRU4Rec.from_artifact(artifact)  # the training model
    rng = np.random.default_rng(5)
    sessions = {f"e2e-{s}": [f"i{i}" for i in rng.integers(0, 300, 4)] for s in range(5)}
    clicks = [(sid, seq[t], T0 + 1000 * t) for t in range(4) for sid, seq in sessions.items()]
    positions = produce(kafka_bootstrap, names.clicks, [click_message(*c) for c in clicks])

    got = recommendations(kafka_bootstrap, names.recs, len(clicks))
    got = [(k, r) for k, r in got if r.session_id.startswith("e2e-")]
    assert len(got) == len(clicks)
    assert sorted((r.click_partition, r.click_offset) for _, r in got) == sorted(positions)
    by_click = {(r.click_partition, r.click_offset): (key, r) for key, r in got}
    for (sid, item, ts), pos in zip(clicks, positions, strict=True):
        key, rec = by_click[pos]
        assert key == sid.encode() and rec.session_id == sid
        assert rec.model_version == "v1" and rec.click_timestamp == ts
        t = sessions[sid].index(item) if sessions[sid].count(item) == 1 else None
        prefix = sessions[sid][: (ts - T0) // 1000 + 1]
        assert t is None or prefix[-1] == item
        scores = torch.from_numpy(torch_scores_after(reference, [int(i[1:]) for i in prefix]))
        scores[[int(i[1:]) for i in prefix]] = -torch.inf  # the worker leaves seen items out
        want = [f"i{i}" for i in torch.topk(scores, 20).indices.tolist()]
        assert items(rec) == want

    status, view = worker.get("/sessions/e2e-0")
    assert status == 200 and view["history"] == sessions["e2e-0"] and view["clicks"] == 4
    assert view["last_recommendation"]["click"]["offset"] == positions[-5][1]
    assert worker.get("/sessions/never-seen")[0] == 404
    status, model = worker.get("/model")
    assert (status, model["version"], model["n_items"], model["search"]) == (
        200,
        "v1",
        300,
        "exact",
    )
    assert worker.metric("gru4stream_recommendations_total") >= len(clicks)
    assert worker.metric("gru4stream_click_to_recommendation_seconds_count") >= len(clicks)


def test_poison_input_goes_to_the_dlq_and_good_clicks_are_answered(served, kafka_bootstrap):
    worker, names, _ = served
    good = [click_message("poison-ok", f"i{i}", T0 + i * 1000) for i in range(4)]

    def body(**fields) -> tuple[bytes, bytes]:
        return b"poison-x", orjson.dumps(fields)

    bad = {
        "random bytes": (b"poison-x", bytes(range(256)) * 3),
        "json array": (b"poison-x", b"[1, 2, 3]"),
        "wrong type": body(session_id=5, item_id="i1", timestamp=T0),
        "missing item": body(session_id="poison-x", timestamp=T0),
        "bad timestamp": body(session_id="poison-x", item_id="i1", timestamp="yesterday"),
        "oversized": body(session_id="poison-x", item_id="i1", timestamp=T0, pad="x" * 70_000),
        "long id": (b"p" * 300, body(session_id="p" * 300, item_id="i1", timestamp=T0)[1]),
        "null value": (b"poison-x", None),
        "wrong key": (b"someone-else", click_message("poison-ok", "i5", T0 + 9000)[1]),
        "out of order": click_message("poison-ok", "i6", T0 + 500),
    }
    expected_field = {
        "random bytes": "event",
        "json array": "event",
        "wrong type": "session_id",
        "missing item": "item_id",
        "bad timestamp": "timestamp",
        "oversized": "event",
        "long id": "session_id",
        "null value": "event",
        "wrong key": "key",
        "out of order": "timestamp",
    }
    unknown = click_message("poison-ok", "not-in-catalogue", T0 + 20_000)
    stream = good[:2] + list(bad.values())[:5] + good[2:] + list(bad.values())[5:] + [unknown]
    positions = produce(kafka_bootstrap, names.clicks, stream)
    where = dict(zip(range(len(stream)), positions, strict=True))

    letters = consume_all(kafka_bootstrap, names.dlq, min_count=len(bad), timeout_s=60, idle_s=1.5)
    letters = {
        (d.partition, d.offset): d for d in map(decode_dead_letter, (r.value for r in letters))
    }
    assert len(letters) == len(bad)
    for name, (key, value) in bad.items():
        letter = letters[where[stream.index((key, value))]]
        assert letter.topic == names.clicks
        # A bounded prefix of the value (8 KiB by default), with the whole value's length.
        assert letter.original == (value or b"")[:8192] and letter.key == key
        assert letter.original_len == len(value or b"")
        assert letter.reason.split(":")[0] == expected_field[name], (name, letter.reason)
        assert "\n" not in letter.reason
    assert "out of order" in letters[where[stream.index(bad["out of order"])]].reason

    recs = [
        r for _, r in recommendations(kafka_bootstrap, names.recs, 1) if r.session_id == "poison-ok"
    ]
    answered = sorted((r.click_partition, r.click_offset) for r in recs)
    want = sorted(where[stream.index(m)] for m in good + [unknown])
    assert answered == want  # the unknown item is answered too; nothing bad is
    last = max(recs, key=lambda r: r.click_offset)
    assert len(last.items) == 20
    assert worker.metric("gru4stream_dead_letters_total") >= len(bad)
    assert worker.proc.poll() is None


def test_crash_recovery_resumes_sessions_from_the_changelog(tmp_path, kafka_bootstrap):
    artifact = read_artifact(
        write_random_artifact(tmp_path / "v1", version="v1", n_items=200, seed=3)
    )
    model = ServingModel.from_artifact(artifact)
    names = Names.fresh()
    rng = np.random.default_rng(9)
    n_sessions, length = 12, 20
    clicks = [
        (f"crash-{s}", f"i{rng.integers(0, 200)}", T0 + 1000 * t)
        for t in range(length)
        for s in range(n_sessions)
    ]
    # Frequent commits, so that the restarted worker resumes mid-stream: the sessions it
    # continues must come from the changelog, not from re-reading their first clicks.
    model_args = ("--model", str(artifact.path), "--commit-interval", "200ms")
    first = start_worker(tmp_path, kafka_bootstrap, names, *model_args, tag="a")
    first.wait_ready()
    producer = BackgroundProducer(
        kafka_bootstrap, names.clicks, [click_message(*c) for c in clicks], rate=60
    )
    producer.start()
    # Kill without warning once part of the stream is answered: no clean commit, no flush.
    deadline = time.monotonic() + 30
    while first.metric("gru4stream_recommendations_total") < 60 and time.monotonic() < deadline:
        time.sleep(0.2)
    first.kill()
    answered_before = len(consume_all(kafka_bootstrap, names.recs))
    assert 0 < answered_before < len(clicks)

    # A fresh data directory: the sessions can only come back from the changelog topic.
    second = start_worker(tmp_path, kafka_bootstrap, names, *model_args, tag="b")
    try:
        positions = producer.result()
        want = offline_scored_answers(model, clicks, positions)
        second.wait_ready()
        # Until every click is answered: duplicates make a count of answers meaningless.
        records = consume_all(
            kafka_bootstrap,
            names.recs,
            until=lambda rs: set(want) <= {answered_click(r.value) for r in rs},
            timeout_s=90,
            idle_s=1.5,
        )
        got = [(r.key, decode_recommendation(r.value)) for r in records]
        reread = second.metric("gru4stream_clicks_total")
    finally:
        second.stop()
    assert reread < len(clicks)  # it did not start over from the first click
    answers: dict[tuple[int, int], list[list[tuple[str, float]]]] = {}
    for _, rec in got:
        answers.setdefault((rec.click_partition, rec.click_offset), []).append(scored(rec))
    assert set(answers) == set(want)  # every click answered (at least once after a crash)
    for pos, lists in answers.items():
        for answer in lists:  # a redelivered click gets the same answer again
            assert same_ranking(answer, want[pos]), pos


def answered_click(value: bytes) -> tuple[int, int]:
    click = orjson.loads(value)["click"]
    return click["partition"], click["offset"]


def scored(rec) -> list[tuple[str, float]]:
    return [(s.item_id, s.score) for s in rec.items]


def offline_scored_answers(model: ServingModel, clicks, positions, k: int = 20) -> dict:
    """Like `offline_answers`, with each item's score."""
    batch = [
        Click(ClickEvent(sid, item, ts), "clicks", p, o, b"", sid.encode(), ts)
        for (sid, item, ts), (p, o) in zip(clicks, positions, strict=True)
    ]
    result = answer_batch(model, batch, {}, CoreConfig(k=k), now_ms=int(time.time() * 1000))
    return {(c.partition, c.offset): scored(r) for c, r in result.recommendations()}


def same_ranking(got, want, tol: float = 1e-4) -> bool:
    """Equal lists, except that items whose scores differ by float rounding may swap.

    A state recomputed from the stored history (a redelivered click) and one advanced click
    by click run the same maths in different batch shapes, so near-ties can order either way.
    """
    got_scores = np.array([s for _, s in got])
    want_scores = np.array([s for _, s in want])
    if len(got) != len(want) or not np.allclose(got_scores, want_scores, atol=tol):
        return False
    want_score_of = dict(want)
    for (item, score), (want_item, _) in zip(got, want, strict=True):
        if item == want_item:
            continue
        # a swapped item must score (nearly) the same in both lists, or tie at the cut-off
        if abs(want_score_of.get(item, want_scores[-1]) - score) > tol:
            return False
    return True


def test_idle_sessions_expire_from_the_table_and_its_changelog(tmp_path, kafka_bootstrap):
    artifact = write_random_artifact(tmp_path / "v1", version="v1", n_items=50)
    names = Names.fresh()
    ttl_args = ("--session-ttl", "2s", "--cleanup-interval", "500ms", "--expose-sessions")
    worker = start_worker(tmp_path, kafka_bootstrap, names, "--model", str(artifact), *ttl_args)
    try:
        worker.wait_ready()
        now = int(time.time() * 1000)
        clicks = [("idle-a", "i1", now), ("idle-b", "i2", now), ("idle-a", "i3", now + 1)]
        produce(kafka_bootstrap, names.clicks, [click_message(*c) for c in clicks])
        recommendations(kafka_bootstrap, names.recs, len(clicks))
        assert worker.get("/sessions/idle-a")[1]["history_length"] == 2
        deadline = time.monotonic() + 30
        while worker.metric("gru4stream_sessions_expired_total") < 2:
            assert time.monotonic() < deadline, worker.tail()
            time.sleep(0.3)
        assert worker.get("/sessions/idle-a")[0] == 404
        assert worker.metric("gru4stream_sessions") == 0
        # A click after the expiry starts the session over.
        produce(kafka_bootstrap, names.clicks, [click_message("idle-a", "i4", now + 10_000)])
        recommendations(kafka_bootstrap, names.recs, len(clicks) + 1)
        assert worker.get("/sessions/idle-a")[1]["history"] == ["i4"]
    finally:
        worker.stop()
    changelog = consume_all(kafka_bootstrap, f"{names.app_id}-sessions-changelog")
    latest = {}
    for record in changelog:  # per key, in offset order within its partition
        latest.setdefault(record.key, []).append(record.value)
    assert latest[b"idle-b"][-1] is None  # a tombstone: compaction will drop the session
    assert latest[b"idle-a"][-2] is None and latest[b"idle-a"][-1] is not None


def test_the_worker_runs_under_asyncio_debug_mode(tmp_path, kafka_bootstrap):
    """asyncio's debug mode refuses calls made into another thread's event loop, as a call
    from the worker's loop into the aiokafka consumer (in Faust's consumer thread) would be:
    the end of recovery seeks in that thread (stream_app/recovery.py)."""
    artifact = write_random_artifact(tmp_path / "v1", version="v1", n_items=50)
    names = Names.fresh()
    worker = WorkerProcess(
        worker_args(kafka_bootstrap, names, tmp_path / "data", "--model", str(artifact)),
        tmp_path / "debug.log",
    )
    worker.env = {"PYTHONASYNCIODEBUG": "1"}
    worker.start()
    try:
        worker.wait_ready()
        clicks = [(f"debug-{s}", "i3", T0 + s) for s in range(4)]
        produce(kafka_bootstrap, names.clicks, [click_message(*c) for c in clicks])
        got = recommendations(kafka_bootstrap, names.recs, len(clicks))
        assert sorted(r.session_id for _, r in got) == [c[0] for c in clicks]
    finally:
        worker.stop()
    assert "Non-thread-safe operation" not in worker.tail(400)
