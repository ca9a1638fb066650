"""Hot swap from `model-updates` under a steady stream; refused artifacts; no model at start."""

from __future__ import annotations

import time

import numpy as np
import pytest

from schemas.artifact import WEIGHTS, manifest_checksum, read_artifact, read_manifest
from schemas.events import ModelUpdate, decode_dead_letter, encode
from schemas.topics import MODEL_UPDATE_KEY, MODEL_UPDATES, spec_named
from scoring import ServingModel
from stream_app.harness import BackgroundProducer, click_message
from stream_app.synthetic import write_random_artifact
from tests.kafka_util import consume_all, create_topic, produce
from tests.test_worker import T0, Names, items, offline_answers, recommendations, start_worker

pytestmark = pytest.mark.kafka


def announce(bootstrap: str, topic: str, artifact_dir, checksum: str | None = None) -> None:
    version = read_manifest(artifact_dir).version
    update = ModelUpdate(
        version=version,
        artifact_uri=str(artifact_dir),
        checksum=checksum or manifest_checksum(artifact_dir),
        metrics={},
        created_at=int(time.time() * 1000),
    )
    produce(bootstrap, topic, [(MODEL_UPDATE_KEY, encode(update))])


def wait_for(predicate, timeout: float = 30.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def test_swap_under_load_answers_every_click_once_and_never_goes_back(tmp_path, kafka_bootstrap):
    v1_dir = write_random_artifact(tmp_path / "v1", version="v1", n_items=200, seed=1)
    # Another shape on purpose: the cached states of v1 cannot be reused, only recomputed.
    v2_dir = write_random_artifact(tmp_path / "v2", version="v2", n_items=200, layers=(24, 16))
    v1 = ServingModel.from_artifact(read_artifact(v1_dir))
    v2 = ServingModel.from_artifact(read_artifact(v2_dir))
    names = Names.fresh()
    worker = start_worker(tmp_path, kafka_bootstrap, names, "--model", str(v1_dir))
    try:
        worker.wait_ready()
        rng = np.random.default_rng(4)
        clicks = [
            (f"swap-{s}", f"i{rng.integers(0, 200)}", T0 + 1000 * t)
            for t in range(15)
            for s in range(20)
        ]
        producer = BackgroundProducer(
            kafka_bootstrap, names.clicks, [click_message(*c) for c in clicks], rate=100
        )
        producer.start()
        wait_for(lambda: worker.metric("gru4stream_recommendations_total") >= 100, what="v1")
        announce(kafka_bootstrap, names.updates, v2_dir)
        positions = producer.result()
        got = recommendations(kafka_bootstrap, names.recs, len(clicks))

        # A corrupt v3 (weights changed after the checksums were taken) is refused.
        v3_dir = write_random_artifact(tmp_path / "v3", version="v3", n_items=200, seed=3)
        with open(v3_dir / WEIGHTS, "r+b") as f:
            f.seek(200)
            f.write(b"\x00\x01\x02\x03")
        announce(kafka_bootstrap, names.updates, v3_dir)
        # So is an announcement whose checksum is not the manifest's.
        v4_dir = write_random_artifact(tmp_path / "v4", version="v4", n_items=200, seed=4)
        announce(kafka_bootstrap, names.updates, v4_dir, checksum="0" * 64)
        wait_for(lambda: worker.metric("gru4stream_model_refusals_total") >= 2, what="refusals")
        later = produce(
            kafka_bootstrap, names.clicks, [click_message("swap-0", "i1", T0 + 100_000)]
        )
        after = recommendations(kafka_bootstrap, names.recs, len(clicks) + 1)
        status, model_view = worker.get("/model")
    finally:
        worker.stop()

    keys = [(r.click_partition, r.click_offset) for _, r in got]
    assert len(keys) == len(set(keys)) and sorted(keys) == sorted(positions)
    # Within each partition, in click order: v1 ... v1 v2 ... v2.
    for partition in {p for p, _ in positions}:
        versions = [
            r.model_version
            for _, r in sorted(got, key=lambda kr: kr[1].click_offset)
            if r.click_partition == partition
        ]
        changes = sum(a != b for a, b in zip(versions, versions[1:], strict=False))
        assert versions[0] == "v1" and changes <= 1 and set(versions) <= {"v1", "v2"}
    assert {r.model_version for _, r in got} == {"v1", "v2"}
    # Each answer is its model's answer for the whole prefix: v2 recomputed v1's sessions.
    want = {
        "v1": offline_answers(v1, clicks, positions),
        "v2": offline_answers(v2, clicks, positions),
    }
    for _, rec in got:
        assert items(rec) == want[rec.model_version][(rec.click_partition, rec.click_offset)]

    (last,) = [r for _, r in after if (r.click_partition, r.click_offset) == later[0]]
    assert last.model_version == "v2"  # the refused artifacts changed nothing
    assert status == 200 and model_view["version"] == "v2"
    refusals = {
        h["version"]: h["reason"] for h in model_view["history"] if h["outcome"] == "refused"
    }
    assert "weights.npz" in refusals["v3"] and "sha256" in refusals["v3"]
    assert "announced checksum" in refusals["v4"]


def test_worker_without_a_model_dead_letters_bad_clicks_and_waits(tmp_path, kafka_bootstrap):
    names = Names.fresh()
    worker = start_worker(tmp_path, kafka_bootstrap, names)
    try:
        wait_for(lambda: worker.health() is not None, what="web server")
        assert worker.health()["status"] == "waiting for a model"
        assert worker.get("/health")[0] == 503
        positions = produce(
            kafka_bootstrap,
            names.clicks,
            [
                (b"early", b"not json"),
                click_message("early", "i3", T0),
                click_message("early", "i4", T0 + 1),
            ],
        )
        (letter,) = [
            decode_dead_letter(r.value)
            for r in consume_all(kafka_bootstrap, names.dlq, min_count=1, timeout_s=30)
        ]
        assert (letter.partition, letter.offset) == positions[0]
        assert consume_all(kafka_bootstrap, names.recs) == []  # held, not dropped

        v1_dir = write_random_artifact(tmp_path / "v1", version="v1", n_items=50)
        announce(kafka_bootstrap, names.updates, v1_dir)
        got = recommendations(kafka_bootstrap, names.recs, 2)
        assert worker.wait_ready()["model_version"] == "v1"
    finally:
        worker.stop()
    assert sorted((r.click_partition, r.click_offset) for _, r in got) == positions[1:]
    assert {r.model_version for _, r in got} == {"v1"}
    assert letter.original == b"not json"


def test_late_worker_loads_the_newest_announced_model_that_verifies(tmp_path, kafka_bootstrap):
    names = Names.fresh()
    for version, seed in (("v1", 1), ("v2", 2), ("v3", 3)):
        write_random_artifact(tmp_path / version, version=version, n_items=40, seed=seed)
    create_topic(kafka_bootstrap, spec_named(names.updates, MODEL_UPDATES))
    announce(kafka_bootstrap, names.updates, tmp_path / "v1")
    announce(kafka_bootstrap, names.updates, tmp_path / "v2")
    announce(kafka_bootstrap, names.updates, tmp_path / "v3", checksum="f" * 64)  # corrupt
    # Started with v1 on the command line: the topic's newest good version wins.
    worker = start_worker(tmp_path, kafka_bootstrap, names, "--model", str(tmp_path / "v1"))
    try:
        assert worker.wait_ready(partitions=False)["model_version"] == "v2"
        _, model_view = worker.get("/model")
    finally:
        worker.stop()
    outcomes = [(h["version"], h["outcome"]) for h in model_view["history"]]
    assert outcomes == [("v1", "loaded"), ("v3", "refused"), ("v2", "loaded")]
