"""Nothing lost, fast failover: a killed worker, a broker outage, a backlog older than the TTL.

Every click is checked by (partition, offset): answered, and answered as an uninterrupted
worker would (the offline reference of tests/test_worker.py). A click may be answered twice
only at or past the last offset its partition had committed when the worker died.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import numpy as np
import pytest
from aiokafka.admin import AIOKafkaAdminClient

from deploy.kafka import broker
from deploy.kafka.broker import BrokerConfig, free_port
from schemas.artifact import read_artifact
from schemas.events import decode_recommendation
from scoring import ServingModel
from stream_app.harness import BackgroundProducer, WorkerProcess, click_message
from stream_app.synthetic import write_random_artifact
from tests.kafka_util import consume_all, produce
from tests.test_worker import (
    T0,
    Names,
    answered_click,
    offline_scored_answers,
    same_ranking,
    scored,
    start_worker,
)

pytestmark = [pytest.mark.kafka, pytest.mark.slow]
FAILOVER_LIMIT_MS = 10_000


def model_of(tmp: Path, seed: int) -> tuple[str, ServingModel]:
    artifact = read_artifact(
        write_random_artifact(tmp / "v1", version="v1", n_items=200, seed=seed)
    )
    return str(artifact.path), ServingModel.from_artifact(artifact)


def session_clicks(prefix: str, n_sessions: int, length: int, seed: int, start: int, gap: int):
    """Sessions clicking in turn, `gap` ms apart within each; in time order."""
    rng = np.random.default_rng(seed)
    return [
        (f"{prefix}-{s}", f"i{rng.integers(0, 200)}", start + gap * t + s)
        for t in range(length)
        for s in range(n_sessions)
    ]


def answers_until_complete(bootstrap: str, topic: str, want, timeout_s: float = 90.0):
    """Every answer on `topic` once each click of `want` has one (duplicates included)."""
    records = consume_all(
        bootstrap,
        topic,
        until=lambda rs: set(want) <= {answered_click(r.value) for r in rs},
        timeout_s=timeout_s,
        idle_s=1.0,
    )
    return [decode_recommendation(r.value) for r in records]


def check_answers(recs, want, committed: dict[int, int] | None = None) -> None:
    """Each click answered, every answer equal to the reference; duplicates only past commits."""
    by_click: dict[tuple[int, int], list] = {}
    for rec in recs:
        by_click.setdefault((rec.click_partition, rec.click_offset), []).append(rec)
    assert set(by_click) == set(want), "clicks unanswered or unknown"
    for (partition, offset), copies in by_click.items():
        for rec in copies:
            assert same_ranking(scored(rec), want[(partition, offset)]), (partition, offset)
        if len(copies) > 1:
            assert committed is not None, f"{(partition, offset)} answered twice without a crash"
            assert offset >= committed.get(partition, 0), (partition, offset, committed)


async def acommitted(bootstrap: str, group: str, topic: str) -> dict[int, int]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        offsets = await admin.list_consumer_group_offsets(group)
    finally:
        await admin.close()
    return {tp.partition: meta.offset for tp, meta in offsets.items() if tp.topic == topic}


def settled(workers: list[WorkerProcess], partitions: int = 4) -> list[set[int]]:
    deadline = time.monotonic() + 90
    while True:
        shares = [set(w.wait_ready(timeout=90)["partitions"]) for w in workers]
        if set().union(*shares) == set(range(partitions)) and sum(map(len, shares)) == partitions:
            return shares
        assert time.monotonic() < deadline, f"group never settled: {shares}"
        time.sleep(0.25)


def test_the_other_worker_serves_a_killed_workers_partitions_within_10_s(tmp_path, kafka_bootstrap):
    model_path, model = model_of(tmp_path, seed=4)
    names = Names.fresh()
    # The worker's defaults for failover: standby replicas, session timeout, heartbeats.
    args = ("--model", model_path, "--standby-replicas", "1", "--broker-session-timeout", "6s")
    workers = [start_worker(tmp_path, kafka_bootstrap, names, *args, tag=t) for t in "ab"]
    try:
        shares = settled(workers)
        clicks = session_clicks("fo", n_sessions=24, length=30, seed=11, start=T0, gap=1000)
        # 720 clicks at 40/s: 18 s of traffic, the kill about 5 s in.
        producer = BackgroundProducer(
            kafka_bootstrap, names.clicks, [click_message(*c) for c in clicks], rate=40
        )
        producer.start()
        deadline = time.monotonic() + 30
        while workers[0].metric("gru4stream_recommendations_total") < 60:
            assert time.monotonic() < deadline, workers[0].tail()
            time.sleep(0.2)
        kill_ms = int(time.time() * 1000)
        workers[0].kill()
        # Read at once: the survivor commits for these partitions only after the rebalance.
        committed = asyncio.run(acommitted(kafka_bootstrap, names.app_id, names.clicks))
        positions = producer.result()
        want = offline_scored_answers(model, clicks, positions)
        recs = answers_until_complete(kafka_bootstrap, names.recs, want)
        assert workers[1].proc.poll() is None
    finally:
        for w in workers:
            w.stop()
    check_answers(recs, want, committed)
    taken_over = [
        r.produced_at for r in recs if r.click_partition in shares[0] and r.produced_at > kill_ms
    ]
    assert taken_over, "no click of the killed worker's partitions came after the kill"
    assert min(taken_over) - kill_ms <= FAILOVER_LIMIT_MS, min(taken_over) - kill_ms


def test_the_worker_recovers_by_itself_from_a_broker_outage_longer_than_its_session(tmp_path):
    # A private broker on free ports: the shared one is never stopped.
    config = BrokerConfig(
        port=free_port(), controller_port=free_port(), data_dir=tmp_path / "kafka"
    )
    bootstrap = broker.start(config).bootstrap
    worker = None
    try:
        model_path, model = model_of(tmp_path, seed=5)
        names = Names.fresh()
        worker = start_worker(tmp_path, bootstrap, names, "--model", model_path, tag="w")
        worker.wait_ready(timeout=90)
        clicks = session_clicks("out", n_sessions=10, length=12, seed=12, start=T0, gap=1000)
        # 120 clicks at 6/s, 20 s of traffic: the broker goes down about 4 s in, while the
        # worker answers; the producer holds what it cannot send until the broker is back.
        producer = BackgroundProducer(
            bootstrap, names.clicks, [click_message(*c) for c in clicks], rate=6
        )
        producer.start()
        deadline = time.monotonic() + 30
        while worker.metric("gru4stream_recommendations_total") < 20:
            assert time.monotonic() < deadline, worker.tail()
            time.sleep(0.2)
        committed = asyncio.run(acommitted(bootstrap, names.app_id, names.clicks))

        broker.stop(config)
        time.sleep(15)  # > the 6 s session timeout: the group has dropped the worker
        assert worker.proc.poll() is None, worker.tail()
        broker.start(config)

        positions = producer.result()
        want = offline_scored_answers(model, clicks, positions)
        recs = answers_until_complete(bootstrap, names.recs, want)
        assert worker.proc.poll() is None, worker.tail()
    finally:
        if worker is not None:
            worker.stop()
        broker.stop(config)
    check_answers(recs, want, committed)


def test_a_backlog_older_than_the_ttl_is_caught_up_without_splitting_sessions(
    tmp_path, kafka_bootstrap
):
    model_path, model = model_of(tmp_path, seed=6)
    names = Names.fresh()
    ttl_s = 8
    # Clicks 5 s apart within each session (8 in all, 35 s): within the TTL from one to the
    # next, and an hour old, so the wall clock says every session ended long ago.
    n_sessions = 12
    clicks = session_clicks(
        "bl", n_sessions, length=8, seed=13, start=int(time.time() * 1000) - 3_600_000, gap=5000
    )
    messages = [click_message(*c) for c in clicks]
    half = len(clicks) // 2
    ttl_args = ("--model", model_path, "--session-ttl", f"{ttl_s}s", "--cleanup-interval", "300ms")
    first = start_worker(tmp_path, kafka_bootstrap, names, *ttl_args, tag="a")
    try:
        first.wait_ready()
        before = produce(kafka_bootstrap, names.clicks, messages[:half])
        consume_all(kafka_bootstrap, names.recs, min_count=half, timeout_s=60, idle_s=0.2)
        answered_at = time.monotonic()
    finally:
        first.stop()  # before it idles for a TTL: then its clock would end the sessions
    committed = asyncio.run(acommitted(kafka_bootstrap, names.app_id, names.clicks))
    # The rest of every session waits in Kafka for longer than the TTL, then a worker with
    # an empty disk restores the sessions from the changelog and reads the backlog.
    after = produce(kafka_bootstrap, names.clicks, messages[half:])
    time.sleep(max(0.0, answered_at + ttl_s + 1 - time.monotonic()))
    second = start_worker(tmp_path, kafka_bootstrap, names, *ttl_args, tag="b")
    try:
        want = offline_scored_answers(model, clicks, before + after)
        recs = answers_until_complete(kafka_bootstrap, names.recs, want)
        assert second.metric("gru4stream_sessions_expired_total") == 0
        # Caught up and idle: the sessions end a TTL later, their old event times or not.
        deadline = time.monotonic() + ttl_s + 15
        while second.metric("gru4stream_sessions_expired_total") < n_sessions:
            assert time.monotonic() < deadline, second.tail()
            time.sleep(0.3)
    finally:
        second.stop()
    check_answers(recs, want, committed)
