"""Nothing lost, whatever arrives and whatever fails (real broker, worker processes).

Every scenario uses fresh topics and group, bounded waits, and checks each click by its
(partition, offset): answered, or a dead letter. After a worker stops on a fault, a click
may be answered twice only if it was past the group's committed offset, and then with the
same answer.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
import time
from pathlib import Path

import orjson
import pytest
from aiokafka import TopicPartition
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from kafka_io.clients import admin, consumer
from schemas.artifact import read_artifact
from schemas.events import decode_dead_letter
from scoring import ServingModel
from stream_app.harness import WorkerProcess, click_message
from stream_app.runtime import TEST_FAIL_BATCH_ENV
from stream_app.synthetic import write_random_artifact
from tests.kafka_util import consume_all, create_topic, produce, settings_of
from tests.test_worker import Names, answered_click, offline_scored_answers, same_ranking
from tests.test_worker import worker_args as base_worker_args

pytestmark = [pytest.mark.kafka, pytest.mark.slow]
T0 = int(time.time() * 1000) - 3_600_000
PREFIX = 8192  # the default dead-letter prefix
MiB = 2**20


def worker(tmp: Path, bootstrap: str, names: Names, *extra: str, tag: str, **kw) -> WorkerProcess:
    args = base_worker_args(bootstrap, names, tmp / f"data-{tag}", *extra)
    return WorkerProcess(args, tmp / f"{tag}.log", **kw).start()


def wait_exit(proc: WorkerProcess, timeout_s: float = 60.0) -> int:
    """The worker must stop by itself after a fault (and not with a clean status)."""
    assert proc.proc is not None
    try:
        return proc.proc.wait(timeout_s)
    except Exception:
        proc.kill()
        raise AssertionError(f"the worker did not stop after the fault:\n{proc.tail()}") from None


async def _committed(bootstrap: str, group: str, topic: str) -> dict[int, int]:
    client = admin(settings_of(bootstrap))
    await client.start()
    try:
        offsets = await client.list_consumer_group_offsets(group)
    finally:
        await client.close()
    return {tp.partition: meta.offset for tp, meta in offsets.items() if tp.topic == topic}


def committed(bootstrap: str, group: str, topic: str) -> dict[int, int]:
    """The group's committed offset per partition of `topic` (absent: nothing committed)."""
    return asyncio.run(_committed(bootstrap, group, topic))


async def _commit(bootstrap: str, group: str, offsets: dict[TopicPartition, int]) -> None:
    client = consumer(settings_of(bootstrap), group_id=group)
    await client.start()
    try:
        client.assign(list(offsets))
        await client.commit(offsets)
    finally:
        await client.stop()


async def _end_offsets(bootstrap: str, topic: str, partitions: int) -> dict[int, int]:
    client = consumer(settings_of(bootstrap))
    await client.start()
    try:
        ends = await client.end_offsets([TopicPartition(topic, p) for p in range(partitions)])
    finally:
        await client.stop()
    return {tp.partition: offset for tp, offset in ends.items()}


async def _alter_topic(bootstrap: str, topic: str, configs: dict[str, str]) -> None:
    client = admin(settings_of(bootstrap))
    await client.start()
    try:
        await client.alter_configs([ConfigResource(ConfigResourceType.TOPIC, topic, configs)])
    finally:
        await client.close()


def answers_by_click(bootstrap: str, topic: str, until, timeout_s: float = 60.0) -> dict:
    """(partition, offset) of the click -> its answers as [(item, score)] lists."""
    records = consume_all(bootstrap, topic, until=until, timeout_s=timeout_s, idle_s=1.5)
    out: dict[tuple[int, int], list] = {}
    for r in records:
        rec = orjson.loads(r.value)
        out.setdefault(answered_click(r.value), []).append(
            [(i["item_id"], i["score"]) for i in rec["items"]]
        )
    return out


def printable(rng: random.Random, n: int) -> bytes:
    alphabet = b'abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789{}[]:,"'
    return bytes(rng.choices(alphabet, k=n))


def test_poison_of_every_shape_becomes_a_bounded_dead_letter(tmp_path, kafka_bootstrap):
    artifact = write_random_artifact(tmp_path / "v1", version="v1", n_items=100)
    names = Names.fresh()
    proc = worker(tmp_path, kafka_bootstrap, names, "--model", str(artifact), tag="w")
    try:
        proc.wait_ready()
        rng = random.Random(11)
        poison: dict[str, tuple[bytes, bytes]] = {}
        for size in (0.2, 0.6, 0.95):
            n = int(size * MiB)
            poison[f"random {size} MiB"] = (b"poison-r", rng.randbytes(n))
            poison[f"NUL {size} MiB"] = (b"poison-n", bytes(n))
            poison[f"text {size} MiB"] = (b"poison-t", printable(rng, n))
        poison["JSON nested 10k deep"] = (b"poison-j", b"[" * 10_000 + b"]" * 10_000)
        poison["objects nested 10k deep"] = (b"poison-o", b'{"a":' * 10_000 + b"1" + b"}" * 10_000)
        poison["60 KB item id"] = (
            b"poison-i",
            orjson.dumps({"session_id": "poison-i", "item_id": "i" * 60_000, "timestamp": T0}),
        )
        poison["200 KB key"] = (b"k" * 200_000, click_message("poison-k", "i1", T0)[1])
        expected_field = {name: "event" for name in poison}
        expected_field |= {"60 KB item id": "item_id", "200 KB key": "key"}

        good = [
            click_message(f"good-{s}", f"i{rng.randrange(100)}", T0 + 1000 * t)
            for t in range(5)
            for s in range(6)
        ]
        # A valid click may carry a large unknown field (under the 64 KiB event limit).
        big = {"session_id": "good-big", "item_id": "i3", "timestamp": T0, "pad": "x" * 60_000}
        good.append((b"good-big", orjson.dumps(big)))
        stream: list[tuple[bytes, bytes]] = []
        bad = list(poison.values())
        for i, message in enumerate(good):
            stream.append(message)
            if i % 2 == 1 and bad:
                stream.append(bad.pop(0))
        stream += bad
        positions = produce(kafka_bootstrap, names.clicks, stream)
        where = dict(zip(range(len(stream)), positions, strict=True))
        good_at = {where[stream.index(m)] for m in good}
        poison_at = {where[stream.index(m)]: name for name, m in poison.items()}

        records = consume_all(
            kafka_bootstrap, names.dlq, min_count=len(poison), timeout_s=60, idle_s=1.5
        )
        letters = {}
        for record in records:
            letter = decode_dead_letter(record.value)
            assert (letter.partition, letter.offset) not in letters, "one dead letter per click"
            letters[(letter.partition, letter.offset)] = letter
            assert len(record.value) <= 16 * 1024 and len(record.key or b"") <= 1024
        assert set(letters) == set(poison_at)
        for pos, name in poison_at.items():
            key, value = poison[name]
            letter = letters[pos]
            assert letter.version == 2 and letter.topic == names.clicks
            assert letter.original == value[:PREFIX], name
            assert letter.original_len == len(value) and letter.truncated == (len(value) > PREFIX)
            assert letter.original_sha256 == hashlib.sha256(value).hexdigest()
            assert letter.key == key[:1024] and letter.key_len == len(key)
            assert letter.reason.split(":")[0] == expected_field[name], (name, letter.reason)
        assert "depth" in letters[where[stream.index(poison["JSON nested 10k deep"])]].reason

        answers = answers_by_click(
            kafka_bootstrap,
            names.recs,
            lambda rs: good_at <= {answered_click(r.value) for r in rs},
        )
        assert set(answers) == good_at  # every good click, and nothing else
        assert all(len(a) == 1 for a in answers.values())  # exactly once
        status, health = proc.get("/health")
        assert status == 200 and health["status"] == "ok", health
        assert proc.proc.poll() is None
    finally:
        proc.stop()


def test_a_fault_in_the_core_stops_the_worker_and_its_batch_is_answered_later(
    tmp_path, kafka_bootstrap
):
    artifact = read_artifact(write_random_artifact(tmp_path / "v1", version="v1", n_items=100))
    model = ServingModel.from_artifact(artifact)
    names = Names.fresh()
    print(names)  # shown when the test fails
    model_args = ("--model", str(artifact.path), "--commit-interval", "200ms")
    rng = random.Random(5)
    first_click = ("fault-0", "i1", T0)
    clicks = [first_click] + [
        (f"fault-{s}", f"i{rng.randrange(100)}", T0 + 1000 * (t + 1))
        for t in range(4)
        for s in range(5)
    ]
    # The 2nd batch with clicks fails in the core (the test-only hook).
    a = worker(
        tmp_path, kafka_bootstrap, names, *model_args, tag="a", env={TEST_FAIL_BATCH_ENV: "2"}
    )
    try:
        a.wait_ready()
        positions = produce(kafka_bootstrap, names.clicks, [click_message(*first_click)])
        answers_by_click(kafka_bootstrap, names.recs, lambda rs: len(rs) >= 1, timeout_s=30)
        time.sleep(0.6)  # a commit passes the first batch
        positions += produce(kafka_bootstrap, names.clicks, [click_message(*c) for c in clicks[1:]])
        assert wait_exit(a) != 0
    finally:
        a.kill()
    assert "InjectedFault" in a.tail(200)
    done = committed(kafka_bootstrap, names.app_id, names.clicks)
    before = answers_by_click(kafka_bootstrap, names.recs, lambda rs: True, timeout_s=5)
    for p, o in positions:
        if o < done.get(p, 0):
            assert (p, o) in before, f"click {(p, o)} committed but never answered"
    unanswered = set(positions) - set(before)
    assert unanswered, "the failed batch was answered"

    answers, seen = restart(tmp_path, kafka_bootstrap, names, model_args, positions)
    want = offline_scored_answers(model, clicks, positions)
    check_answers(answers, positions, done, want, seen)


def restart(tmp: Path, bootstrap: str, names: Names, args, positions) -> tuple[dict, str]:
    """A fresh worker of the same group (new data dir) until every click is answered."""
    b = worker(tmp, bootstrap, names, *args, "--loglevel", "info", tag="b")
    try:
        b.wait_ready()
        every = set(positions)
        answers = answers_by_click(
            bootstrap, names.recs, lambda rs: every <= {answered_click(r.value) for r in rs}
        )
        counts = [b.metric(f"gru4stream_{m}_total") for m in ("clicks", "recommendations")]
        seen = f"the restarted worker read {counts[0]:.0f} clicks, answered {counts[1]:.0f}"
    finally:
        b.stop()
    return answers, seen


def check_answers(answers: dict, positions, done: dict[int, int], want: dict, seen: str) -> None:
    """Every click answered as an uninterrupted worker would; twice only past the commit."""
    missing = sorted(set(positions) - set(answers))
    assert not missing, f"never answered: {missing} (committed at the fault: {done}); {seen}"
    assert set(answers) == set(positions)
    for (p, o), lists in answers.items():
        if len(lists) > 1:
            assert o >= done.get(p, 0), f"click {(p, o)} answered twice before the commit"
        for answer in lists:
            assert same_ranking(answer, want[(p, o)]), (p, o)


@pytest.mark.parametrize("refusing", ["recommendations", "changelog"])
def test_a_failed_delivery_stops_the_worker_before_any_commit_passes_it(
    tmp_path, kafka_bootstrap, refusing
):
    artifact = read_artifact(write_random_artifact(tmp_path / "v1", version="v1", n_items=100))
    model = ServingModel.from_artifact(artifact)
    names = Names.fresh()
    # The broker refuses every batch of answers, or of session values (about 1 KB each).
    refused = names.recs if refusing == "recommendations" else f"{names.app_id}-sessions-changelog"
    config = {"max.message.bytes": "512"}
    if refusing == "changelog":
        config["cleanup.policy"] = "compact"
    create_topic(kafka_bootstrap, refused, 4, config)
    model_args = ("--model", str(artifact.path), "--commit-interval", "200ms")
    clicks = [(f"refused-{s}", f"i{s + t}", T0 + 1000 * t) for t in range(3) for s in range(4)]
    a = worker(tmp_path, kafka_bootstrap, names, *model_args, tag="a")
    try:
        a.wait_ready()
        positions = produce(kafka_bootstrap, names.clicks, [click_message(*c) for c in clicks])
        assert wait_exit(a) != 0
    finally:
        a.kill()
    assert "MessageSizeTooLarge" in a.tail(200), a.tail(60)
    done = committed(kafka_bootstrap, names.app_id, names.clicks)
    first = {}
    for p, o in positions:
        first[p] = min(o, first.get(p, o))
    for p, offset in done.items():
        assert offset <= first.get(p, offset), f"partition {p}: committed {offset} unanswered"
    if refusing == "recommendations":
        assert not consume_all(kafka_bootstrap, names.recs)

    asyncio.run(_alter_topic(kafka_bootstrap, refused, {"max.message.bytes": "1048588"}))
    answers, seen = restart(tmp_path, kafka_bootstrap, names, model_args, positions)
    want = offline_scored_answers(model, clicks, positions)
    check_answers(answers, positions, done, want, seen)


@pytest.mark.parametrize("recovery", ["seek-before-flow", "faust"])
def test_clicks_that_arrive_while_recovery_ends_are_answered(tmp_path, kafka_bootstrap, recovery):
    """The end-of-recovery race (stream_app/recovery.py), made to happen every time.

    tests/race_worker.py delays the seek that Faust's `on_recovery_completed` makes after it
    resumed the partitions, while clicks wait on the topic. With `SeekBeforeFlowRecovery`
    every click is answered; with Faust's own `Recovery` some are committed unanswered.
    """
    artifact = write_random_artifact(tmp_path / "v1", version="v1", n_items=100)
    names = Names.fresh()
    partitions = 4
    create_topic(kafka_bootstrap, names.clicks, partitions)
    # Something to restore, so that the worker goes through table recovery at start.
    changelog = f"{names.app_id}-sessions-changelog"
    create_topic(kafka_bootstrap, changelog, partitions, {"cleanup.policy": "compact"})
    produce(kafka_bootstrap, changelog, [(b"restored", b"not a session")])
    # Clicks already answered and committed (as by an earlier worker), then new ones.
    sessions = [f"race-{s}" for s in range(40)]
    produce(kafka_bootstrap, names.clicks, [click_message(s, "i1", T0) for s in sessions])
    ends = asyncio.run(_end_offsets(kafka_bootstrap, names.clicks, partitions))
    offsets = {TopicPartition(names.clicks, p): o for p, o in ends.items()}
    asyncio.run(_commit(kafka_bootstrap, names.app_id, offsets))
    fresh = [click_message(s, f"i{t + 2}", T0 + 1000 * (t + 1)) for t in range(5) for s in sessions]
    positions = set(produce(kafka_bootstrap, names.clicks, fresh))

    extra = ["--model", str(artifact), "--commit-interval", "200ms", "--batch-max", "8"]
    extra += ["--loglevel", "info"]  # the log file tells what happened when it fails
    print(names)
    if recovery == "faust":
        extra.append("--plain-recovery")
    proc = worker(tmp_path, kafka_bootstrap, names, *extra, tag="w", module="tests.race_worker")
    try:
        proc.wait_ready()
        ends = asyncio.run(_end_offsets(kafka_bootstrap, names.clicks, partitions))
        # Until every click is answered and committed, or one is committed unanswered (lost:
        # with the delivery gate, a click's answer is delivered before its offset commits).
        deadline = time.monotonic() + 40
        while True:
            done = committed(kafka_bootstrap, names.app_id, names.clicks)  # before the answers
            answered = {answered_click(r.value) for r in consume_all(kafka_bootstrap, names.recs)}
            lost = {(p, o) for p, o in positions if o < done.get(p, 0)} - answered
            if lost or (positions <= answered and done == ends):
                break
            assert time.monotonic() < deadline, f"neither answered nor lost: {proc.tail()}"
            time.sleep(0.5)
        log = proc.log_path.read_text(errors="replace")
        assert "the end-of-recovery seek waits" in log
    finally:
        proc.stop()
    if recovery == "faust":
        if "clicks fetched before the seek: False" in log:
            # Seen on a loaded machine (two test runs at once): the consumer fetched nothing
            # for the whole window, so the race could not happen. Not a pass: a skip.
            pytest.skip("no click was fetched between the resume and the seek this time")
        assert lost, "Faust's own recovery lost no click: the test no longer shows the race"
    else:
        assert not lost, f"{len(lost)} clicks committed and never answered: {sorted(lost)[:5]}"
