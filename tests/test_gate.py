"""The retraining gate: bootstrap decisions, unseen targets, the run lock, pins and stale
announcements."""

from __future__ import annotations

import asyncio
import os
import socket
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import orjson
import pytest
import torch

from batch_training.gate import (
    NO_DECISION,
    PROMOTED,
    REJECTED,
    GateOptions,
    SessionMetrics,
    decide,
    held_out_sessions,
    score_sessions,
)
from batch_training.publish import main as publish_main
from batch_training.retrain import EXIT_LOCKED, main
from schemas.events import ClickEvent, decode_model_update, encode, encode_click
from schemas.registry import RETRAIN_LOCK, LockHeld, Registry, RunLock
from schemas.signing import sign_update, verify_update
from schemas.topics import CLICKS, spec_named
from scoring import ServingModel
from stream_app.model_updates import ModelHolder, ModelUpdateFollower
from tests.kafka_util import create_topic, produce, unique_topic
from tests.test_retrain import DAY, _markov_clicks
from tests.test_trust import KEY, announcement, registry  # noqa: F401 - a fixture

# --- the decision, on synthetic per-session metrics -----------------------------------------


def _metrics(recall: float, n: int = 400, seed: int = 0, targets: int = 5) -> SessionMetrics:
    rng = np.random.default_rng(seed)
    hits = rng.binomial(targets, recall, n).astype(float)
    return SessionMetrics(np.full(n, targets), hits, hits * 0.5)


def test_a_tiny_slice_is_no_decision():
    result = decide(_metrics(0.5, n=20), ("v0001", _metrics(0.1, n=20)))
    assert result.decision == NO_DECISION and "--min-sessions 100" in result.reason


def test_no_promoted_model_promotes_and_a_clear_loss_is_rejected():
    assert decide(_metrics(0.5), None).decision == PROMOTED
    base = _metrics(0.5, seed=1)
    result = decide(_metrics(0.3, seed=2), ("v0001", base))
    assert result.decision == REJECTED and result.comparisons[0].upper < -0.1
    same = decide(base, ("v0001", base))  # identical: diff 0, bound 0
    assert same.decision == PROMOTED and same.comparisons[0].lower == 0.0


def test_a_chain_of_slightly_worse_candidates_stops_at_the_bar():
    """Each candidate is 0.006 below the previous one, within the 0.01 tolerance of its
    predecessor; against the best of the last 3 the drift is caught."""
    options = GateOptions(tolerance=0.01, compare_last=3)
    # Paired: the same sessions, each step drops hits in ~0.6% of the targets.
    n, targets = 2000, 5
    rng = np.random.default_rng(0)
    hits = rng.binomial(targets, 0.5, n).astype(float)
    chain: list[tuple[str, SessionMetrics]] = [("v0001", SessionMetrics(np.full(n, 5), hits, hits))]
    promoted = []
    for step in range(2, 12):
        hits = hits.copy()
        drop = rng.choice(np.flatnonzero(hits > 0), int(0.006 * n * targets), replace=False)
        hits[drop] -= 1
        cand = SessionMetrics(np.full(n, 5), hits, hits)
        result = decide(cand, chain[-1], chain, options)
        if result.decision != PROMOTED:
            break
        chain.append((f"v{step:04d}", cand))
        promoted.append(step)
    first = chain[0][1].totals()["recall@20"]
    last = chain[-1][1].totals()["recall@20"]
    assert promoted and len(promoted) < 10  # stopped
    assert first - last <= 0.01 + 1e-9  # the chain never drifted past the tolerance
    # The old rule (vs the promoted model only) would have let all of them through.
    no_history = GateOptions(tolerance=0.01, compare_last=0)
    assert decide(cand, chain[-1], (), no_history).decision == PROMOTED


# --- unseen targets are misses ------------------------------------------------------------------


def test_unknown_and_seen_targets_are_misses(tmp_path):
    from schemas.artifact import read_artifact
    from stream_app.synthetic import write_random_artifact

    artifact = read_artifact(
        write_random_artifact(tmp_path / "a", version="v0001", n_items=30, layers=(12,), seed=1)
    )
    model = ServingModel.from_artifact(artifact)
    known = artifact.items
    sessions = [(known[0], "never-seen"), (known[1], known[2], known[1])]
    m = score_sessions(model, sessions)
    assert list(m.targets) == [1, 2]
    assert m.hits[0] == 0  # unknown target
    # The repeat of known[1] is excluded from the top-20 as in serving: a miss too.
    rows = model.step(model.initial_state(1), model.index_of([known[1]]))
    rows = model.step(rows, model.index_of([known[2]]))
    top, _ = model.recommend(rows, 20, [model.index_of([known[1], known[2]])])
    assert model.index_of([known[1]])[0] not in top[0]
    assert m.hits[1] <= 1


def test_held_out_sessions_keep_unknown_items():
    now = 100 * DAY
    events = [
        ClickEvent("old", "a", now - 3 * DAY), ClickEvent("old", "b", now - 3 * DAY + 1),
        ClickEvent("new", "a", now - 100), ClickEvent("new", "a", now - 90),
        ClickEvent("new", "zzz", now - 50), ClickEvent("one", "a", now),
    ]  # fmt: skip
    assert held_out_sessions(events, DAY) == [("a", "zzz")]


@pytest.mark.slow
def test_candidate_blind_to_new_items_is_refused_now(tmp_path, kafka_bootstrap, capsys):
    """The held-out day introduces new items (the catalogue grows). The old rule dropped the
    targets the candidate never saw and compared on the rest, where the candidate (trained
    on the recent walk) looks as good; counted as misses, the candidate that cannot serve
    the new items loses to an incumbent that knows them."""
    torch.set_num_threads(1)
    now = int(time.time() * 1000)
    reg = Registry(tmp_path / "models")
    small = ["--set", "layers=32", "--set", "batch_size=16", "--set", "n_sample=64",
             "--set", "n_epochs=3", "--set", "learning_rate=0.1"]  # fmt: skip
    base = ["--bootstrap", kafka_bootstrap, "--registry", str(reg.root), "--window", "30d",
            "--holdout", "1d", "--device", "cpu", "--no-progress", "--no-publish",
            "--min-sessions", "20", *small]  # fmt: skip
    # v0001 learns the walk over 80 items (all of them, in its training days).
    t1 = create_topic(kafka_bootstrap, spec_named(unique_topic("clicks"), CLICKS))
    walk80 = _markov_clicks(500, 80, now, seed=11)
    produce(kafka_bootstrap, t1, [(e.session_id, encode_click(e)) for e in walk80])
    assert main(["--topic", t1, *base]) == 0
    assert reg.promoted() == "v0001"
    # v0002's training data only ever shows items m0..m39; the held-out day is the 80-walk.
    t2 = create_topic(kafka_bootstrap, spec_named(unique_topic("clicks"), CLICKS))
    train40 = [e for e in _markov_clicks(450, 40, now - DAY, seed=12) if e.timestamp < now - DAY]
    heldout = [e for e in walk80 if e.timestamp >= now - DAY]
    produce(kafka_bootstrap, t2, [(e.session_id, encode_click(e)) for e in train40 + heldout])
    assert main(["--topic", t2, *base]) == 0
    entry = reg.decisions()[-1]
    assert entry.version == "v0002" and entry.decision == REJECTED
    # On the split's protocol (unseen targets dropped) the old rule would have promoted it.
    split = entry.details["split_metrics"]["recall@20"]
    assert split >= entry.details["baseline_metrics"]["recall@20"] - 0.01
    assert entry.metrics["recall@20"] < entry.details["baseline_metrics"]["recall@20"] - 0.1
    assert reg.promoted() == "v0001"
    assert main(["--explain", "v0002", "--registry", str(reg.root)]) == 0
    text = capsys.readouterr().out
    assert "v0002: rejected" in text and "FAIL vs v0001" in text


# --- one run at a time ----------------------------------------------------------------------------


def test_the_lock_refuses_a_second_holder_and_takes_over_stale_ones(tmp_path):
    with RunLock(tmp_path, 3_600_000), pytest.raises(LockHeld, match=f"pid {os.getpid()}"):
        RunLock(tmp_path, 3_600_000).acquire()
    assert not (tmp_path / RETRAIN_LOCK).exists()
    host = socket.gethostname()
    dead = {"pid": 2**22 + 12345, "host": host, "at": int(time.time() * 1000)}
    (tmp_path / RETRAIN_LOCK).write_bytes(orjson.dumps(dead))
    with RunLock(tmp_path, 3_600_000):  # a dead pid on this host: stale
        pass
    old = {"pid": 1, "host": "elsewhere", "at": int(time.time() * 1000) - 7 * 3_600_000}
    (tmp_path / RETRAIN_LOCK).write_bytes(orjson.dumps(old))
    with RunLock(tmp_path, 6 * 3_600_000):  # older than the timeout: stale
        pass
    alive = {"pid": 1, "host": "elsewhere", "at": int(time.time() * 1000)}
    (tmp_path / RETRAIN_LOCK).write_bytes(orjson.dumps(alive))
    with pytest.raises(LockHeld, match="host elsewhere"):
        RunLock(tmp_path, 6 * 3_600_000).acquire()


def test_two_concurrent_retrains_exactly_one_trains(tmp_path, kafka_bootstrap, capsys):
    import subprocess
    import sys
    from pathlib import Path

    torch.set_num_threads(1)
    topic = create_topic(kafka_bootstrap, spec_named(unique_topic("clicks"), CLICKS))
    events = _markov_clicks(300, 30, int(time.time() * 1000), seed=5)
    produce(kafka_bootstrap, topic, [(e.session_id, encode_click(e)) for e in events])
    root = Path(__file__).resolve().parents[1]
    argv = [sys.executable, "-m", "gru4stream.cli", "retrain", "--topic", topic,
            "--bootstrap", kafka_bootstrap, "--registry", str(tmp_path), "--no-publish",
            "--device", "cpu", "--no-progress", "--min-sessions", "5", "--set", "layers=16",
            "--set", "n_epochs=1", "--set", "n_sample=32"]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(root), "OMP_NUM_THREADS": "1"}
    first = subprocess.Popen(argv, cwd=root, env=env, stdout=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 60
        while not (tmp_path / RETRAIN_LOCK).exists():
            assert time.time() < deadline and first.poll() is None
            time.sleep(0.05)
        began = time.time()
        assert main(argv[4:]) == EXIT_LOCKED
        assert time.time() - began < 5  # at once, before reading or training
        err = capsys.readouterr().err
        assert "another retrain holds" in err and f"pid {first.pid}" in err
        assert first.wait(timeout=300) == 0
    finally:
        if first.poll() is None:
            first.kill()
    assert Registry(tmp_path).versions() == ["v0001"]
    assert not (tmp_path / RETRAIN_LOCK).exists()


# --- pins and rollbacks -------------------------------------------------------------------------


def test_a_pin_during_a_retrain_is_kept(tmp_path, kafka_bootstrap, monkeypatch, capsys):
    """The operator rolls back (publish of an older version pins) while a run trains: the run
    passes the gate but records "pinned: not promoted"; --unpin lets the next one through."""
    import batch_training.retrain_run as retrain

    torch.set_num_threads(1)
    topic = create_topic(kafka_bootstrap, spec_named(unique_topic("clicks"), CLICKS))
    updates = unique_topic("model-updates")
    events = _markov_clicks(300, 30, int(time.time() * 1000), seed=6)
    produce(kafka_bootstrap, topic, [(e.session_id, encode_click(e)) for e in events])
    reg = Registry(tmp_path / "models")
    argv = ["--topic", topic, "--bootstrap", kafka_bootstrap, "--registry", str(reg.root),
            "--updates-topic", updates, "--device", "cpu", "--no-progress",
            "--min-sessions", "5", "--tolerance", "1", "--set", "layers=16",
            "--set", "n_epochs=1", "--set", "n_sample=32"]  # fmt: skip
    assert main(argv) == 0 and main(argv) == 0
    assert reg.promoted() == "v0002"

    fit = retrain.TrainingPipeline.fit

    def fit_then_rollback(self):  # the operator acts while the third run trains
        out = fit(self)
        rc = publish_main(["v0001", "--registry", str(reg.root), "--bootstrap",
                           kafka_bootstrap, "--topic", updates])  # fmt: skip
        assert rc == 0
        return out

    monkeypatch.setattr(retrain.TrainingPipeline, "fit", fit_then_rollback)
    assert main(argv) == 0
    assert "pinned: not promoted" in capsys.readouterr().out
    assert reg.promoted() == "v0001" and reg.pinned() == "v0001"
    assert reg.decisions()[-1].decision == "pinned: not promoted"
    monkeypatch.setattr(retrain.TrainingPipeline, "fit", fit)

    assert publish_main(["--registry", str(reg.root), "--unpin"]) == 0
    assert reg.pinned() is None
    assert main(argv) == 0
    assert reg.promoted() == "v0004"

    from tests.kafka_util import consume_all

    sent = [decode_model_update(r.value) for r in consume_all(kafka_bootstrap, updates)]
    assert [(u.version, u.rollback) for u in sent] == [
        ("v0001", False), ("v0002", False), ("v0001", True), ("v0004", False),
    ]  # fmt: skip


def test_rollback_flag_is_signed_and_old_signatures_stay_valid(tmp_path, registry):  # noqa: F811
    update = announcement(registry.root / "v0001")
    assert "rollback" not in orjson.loads(encode(update))
    signed = sign_update(update, KEY)
    from dataclasses import replace

    assert verify_update(replace(signed, rollback=True), KEY) is not None  # covered
    marked = sign_update(replace(update, rollback=True), KEY)
    back = decode_model_update(encode(marked))
    assert back.rollback and verify_update(back, KEY) is None


def test_worker_ignores_a_stale_announcement_and_follows_a_marked_rollback(registry):  # noqa: F811
    from dataclasses import replace

    holder = ModelHolder()
    root = registry.root
    with ThreadPoolExecutor(1) as pool:
        follower = ModelUpdateFollower(None, "unused", holder, pool)  # type: ignore[arg-type]
        assert asyncio.run(follower.apply(announcement(root / "v0003")))
        stale = announcement(root / "v0001")
        assert not asyncio.run(follower.apply(stale))
        assert holder.model.version == "v0003"
        assert asyncio.run(follower.apply(replace(stale, rollback=True)))
        assert holder.model.version == "v0001"
    refused = [(r.version, r.code) for r in holder.history if r.outcome == "refused"]
    assert refused == [("v0001", "stale")]
