"""Scheduled retraining: durations, usage errors, full runs against the archive topic."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from batch_training.retrain import format_duration, main, parse_duration
from schemas.events import ClickEvent, decode_model_update, encode_click
from schemas.registry import Registry
from schemas.topics import CLICKS, spec_named
from tests.kafka_util import consume_all, create_topic, produce, unique_topic

DAY = 86_400_000


@pytest.mark.parametrize(
    ("text", "ms"),
    [("30d", 30 * DAY), ("6h", 6 * 3_600_000), ("15m", 900_000), ("90s", 90_000),
     ("500ms", 500), ("2w", 14 * DAY), ("1.5h", 5_400_000), (" 7d ", 7 * DAY)],
)  # fmt: skip
def test_parse_duration(text, ms):
    assert parse_duration(text) == ms


@pytest.mark.parametrize("text", ["30", "d", "30x", "-1d", "0s", "6 hours", "", "1e3s"])
def test_parse_duration_refuses(text):
    with pytest.raises(ValueError, match="duration"):
        parse_duration(text)


def test_format_duration_round_trips():
    for text in ("30d", "6h", "15m", "2w", "90s", "500ms"):
        assert format_duration(parse_duration(text)) == text


def test_usage_errors_exit_2(capsys):
    for argv, message in (
        (["--window", "30x"], "not a duration"),
        (["--every", "soon"], "not a duration"),
        (["--window", "1d", "--holdout", "1d"], "shorter than --window"),
        (["--tolerance", "-0.1"], "tolerance"),
        (["--confidence", "1"], "confidence"),
        (["--metric", "ndcg@20"], "invalid choice"),
        (["--until", "tomorrow"], "not ISO 8601"),
    ):
        with pytest.raises(SystemExit) as exit_:
            main(argv)
        assert exit_.value.code == 2
        assert message in capsys.readouterr().err


def _markov_clicks(n_sessions: int, n_items: int, now_ms: int, seed: int) -> list[ClickEvent]:
    """Sessions that walk item i -> i+1 (mod n), spread over the 10 days before now."""
    rng = np.random.default_rng(seed)
    events = []
    for s in range(n_sessions):
        start = now_ms - 10 * DAY + s * (10 * DAY // n_sessions)
        first = int(rng.integers(n_items))
        for i in range(int(rng.integers(3, 9))):
            item = (first + i) % n_items
            events.append(ClickEvent(f"s{seed}-{s}", f"m{item}", start + 1000 * i))
    return events


@pytest.mark.slow
def test_retrain_promotes_records_publishes_and_rejects_worse(tmp_path, kafka_bootstrap, capsys):
    torch.set_num_threads(1)
    topic = create_topic(kafka_bootstrap, spec_named(unique_topic("clicks"), CLICKS))
    updates = unique_topic("model-updates")
    now = int(time.time() * 1000)
    events = _markov_clicks(400, 60, now, seed=1)
    produce(kafka_bootstrap, topic, [(e.session_id, encode_click(e)) for e in events])
    registry = Registry(tmp_path / "models")
    small = ["--set", "layers=32", "--set", "batch_size=16", "--set", "n_sample=64"]
    common = [
        "--topic", topic, "--bootstrap", kafka_bootstrap, "--updates-topic", updates,
        "--registry", str(registry.root), "--window", "30d", "--holdout", "1d",
        "--device", "cpu", "--no-progress", "--min-sessions", "20", *small,
    ]  # fmt: skip

    # 1. No promoted model yet: the candidate is promoted and published.
    assert main([*common, "--set", "n_epochs=3", "--set", "learning_rate=0.1"]) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert line.startswith("retrain v0001: recall@20 ") and "promoted and published" in line
    assert registry.promoted() == "v0001"
    first = registry.decisions()[-1]
    assert (first.version, first.decision, first.details["baseline"]) == ("v0001", "promoted", None)
    assert first.metrics["recall@20"] > 0.9  # the walk i -> i+1 is easy to learn

    # 2. An untrained candidate (tiny learning rate) is worse: kept out, not published.
    assert main([*common, "--set", "n_epochs=1", "--set", "learning_rate=1e-9"]) == 0
    assert "-> rejected;" in capsys.readouterr().out
    assert registry.promoted() == "v0001"
    second = registry.decisions()[-1]
    assert (second.version, second.decision, second.details["baseline"]) == (
        "v0002",
        "rejected",
        "v0001",
    )
    # v0001 was scored through its artifact on the same held-out slice as when it was the
    # candidate (same clicks, same vocabulary): the same numbers, by another code path.
    for name, value in first.metrics.items():
        assert second.details["baseline_metrics"][name] == pytest.approx(value, abs=1e-5), name
    assert registry.versions() == ["v0001", "v0002"]  # every candidate is kept

    records = consume_all(kafka_bootstrap, updates)
    assert [decode_model_update(r.value).version for r in records] == ["v0001"]
    assert decode_model_update(records[0].value).artifact_uri == str(
        (registry.root / "v0001").resolve()
    )

    # 3. A candidate trained like v0001 but on shuffled labels: the items of the training
    #    clicks are permuted, the held-out day is the same walk. It learns no walk: rejected.
    shuffled_topic = create_topic(kafka_bootstrap, spec_named(unique_topic("clicks"), CLICKS))
    train_part = [e for e in events if e.timestamp < now - DAY]
    permuted = np.random.default_rng(7).permutation([e.item_id for e in train_part])
    shuffled = [
        *(replace(e, item_id=str(item)) for e, item in zip(train_part, permuted, strict=True)),
        *(e for e in events if e.timestamp >= now - DAY),
    ]
    produce(kafka_bootstrap, shuffled_topic, [(e.session_id, encode_click(e)) for e in shuffled])
    on_shuffled = [shuffled_topic if arg == topic else arg for arg in common]
    assert main([*on_shuffled, "--set", "n_epochs=3", "--set", "learning_rate=0.1"]) == 0
    assert "-> rejected;" in capsys.readouterr().out
    third = registry.decisions()[-1]
    assert (third.version, third.decision, third.details["baseline"]) == (
        "v0003",
        "rejected",
        "v0001",
    )
    assert third.metrics["recall@20"] < 0.6 < first.metrics["recall@20"]
    assert registry.promoted() == "v0001"


def test_no_clicks_in_the_window_fails_with_exit_1(tmp_path, kafka_bootstrap, capsys):
    topic = create_topic(kafka_bootstrap, spec_named(unique_topic("clicks"), CLICKS))
    old = _markov_clicks(20, 10, int(time.time() * 1000) - 100 * DAY, seed=2)
    produce(kafka_bootstrap, topic, [(e.session_id, encode_click(e)) for e in old])
    argv = ["--topic", topic, "--bootstrap", kafka_bootstrap, "--registry", str(tmp_path)]
    updates = ["--updates-topic", unique_topic("model-updates")]
    assert main([*argv, *updates, "--window", "7d", "--no-progress"]) == 1
    assert "no clicks in" in capsys.readouterr().err
    assert Registry(tmp_path).versions() == []


@pytest.mark.slow
def test_every_repeats_until_stopped_and_latest_follows_the_topic(tmp_path, kafka_bootstrap):
    """`--every` runs again at each period; SIGTERM ends the loop with status 0. `--until
    latest` puts the window's end after the newest click, wherever the clock is."""
    topic = create_topic(kafka_bootstrap, spec_named(unique_topic("clicks"), CLICKS))
    past = int(time.time() * 1000) - 200 * DAY  # far outside a 30d window ending now
    events = _markov_clicks(150, 30, past, seed=3)
    produce(kafka_bootstrap, topic, [(e.session_id, encode_click(e)) for e in events])
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.Popen(
        [
            sys.executable, "-m", "gru4stream.cli", "retrain", "--topic", topic,
            "--bootstrap", kafka_bootstrap, "--registry", str(tmp_path), "--until", "latest",
            "--every", "1s", "--updates-topic", unique_topic("model-updates"), "--device", "cpu",
            "--no-progress", "--set", "layers=16", "--set", "n_epochs=1", "--set", "n_sample=32",
            "--min-sessions", "5",
        ],
        cwd=root,
        env={**os.environ, "PYTHONPATH": str(root), "OMP_NUM_THREADS": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )  # fmt: skip
    try:
        summaries = []
        while len(summaries) < 2:
            line = proc.stdout.readline()
            assert line, "retrain --every exited early"
            if line.startswith("retrain v"):
                summaries.append(line)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=120) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert summaries[0].startswith("retrain v0001:") and "no promoted model yet" in summaries[0]
    assert summaries[1].startswith("retrain v0002:") and "vs v0001" in summaries[1]
    assert f"{len(events)} clicks" in summaries[0]
    assert Registry(tmp_path).versions()[:2] == ["v0001", "v0002"]
