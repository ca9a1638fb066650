"""Two workers in one consumer group share the partitions: every click answered once."""

from __future__ import annotations

import time

import numpy as np
import pytest

from schemas.artifact import read_artifact
from stream_app.harness import click_message
from stream_app.synthetic import write_random_artifact
from tests.kafka_util import produce
from tests.test_worker import T0, Names, recommendations, start_worker

pytestmark = pytest.mark.kafka


def test_two_workers_split_the_partitions_and_answer_each_click_once(tmp_path, kafka_bootstrap):
    artifact = read_artifact(write_random_artifact(tmp_path / "v1", version="v1", n_items=150))
    names = Names.fresh()
    args = ("--model", str(artifact.path))
    workers = [start_worker(tmp_path, kafka_bootstrap, names, *args, tag=t) for t in "ab"]
    try:
        # A clean run starts once the group is settled: each holds a disjoint share of all 4.
        deadline = time.monotonic() + 60
        while True:
            shares = [set(w.wait_ready(timeout=60)["partitions"]) for w in workers]
            if shares[0] | shares[1] == {0, 1, 2, 3} and not shares[0] & shares[1]:
                break
            assert time.monotonic() < deadline, f"group never settled: {shares}"
            time.sleep(0.5)

        rng = np.random.default_rng(2)
        clicks = [
            click_message(f"group-{s}", f"i{rng.integers(0, 150)}", T0 + 1000 * t)
            for t in range(8)
            for s in range(40)
        ]
        positions = produce(kafka_bootstrap, names.clicks, clicks)
        got = recommendations(kafka_bootstrap, names.recs, len(clicks))
        answered = [w.metric("gru4stream_recommendations_total") for w in workers]
    finally:
        for w in workers:
            w.stop()
    keys = [(r.click_partition, r.click_offset) for _, r in got]
    assert len(keys) == len(set(keys))  # none answered twice
    assert sorted(keys) == sorted(positions)  # none unanswered
    assert all(n > 0 for n in answered) and sum(answered) == len(clicks)
    # Each worker answered exactly the clicks of its own partitions.
    for worker_share, n in zip(shares, answered, strict=True):
        assert n == sum(1 for p, _ in positions if p in worker_share)
