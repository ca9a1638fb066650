"""The worker's batch access to the sessions table, checked against Faust's own table code.

stream_app/session_store.py and stream_app/record_batches.py go around Faust's per-key table
API and aiokafka's per-record send; these tests fail if a Faust or aiokafka upgrade changes
what they rely on (store layout, changelog topic and partitioning, persisted offsets,
recovery, the default partitioner).
"""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.record.default_records import DefaultRecordBatch
from faust.types import TP, Message

from kafka_io.clients import producer
from stream_app.app import create_app
from stream_app.config import WorkerConfig
from stream_app.record_batches import BatchSender, Delivered, default_partition
from stream_app.runtime import _in_partition
from tests.kafka_util import consume_all, create_topic, settings_of, unique_topic

RECORDS = [(0, b"s-a", b"state a"), (3, b"s-b", b"state b"), (0, b"s-c", b"c" * 3000)]


@pytest.fixture
def unstarted():
    """A producer that is never started: building record batches needs no broker."""

    async def make() -> AIOKafkaProducer:
        return AIOKafkaProducer(bootstrap_servers="127.0.0.1:1", max_batch_size=2048)

    loop = asyncio.new_event_loop()
    made = loop.run_until_complete(make())
    yield made
    loop.close()


def worker(tmp_path, name: str):
    config = WorkerConfig(app_id=f"store-{name}", data_dir=str(tmp_path / name))
    return create_app(config)[1]


def changelog_records(outbox) -> list[tuple[str, int, bytes, bytes]]:
    out = []
    for topic, partition, builder in outbox._builders:
        batch = DefaultRecordBatch(bytes(builder._build()))
        out += [(topic, partition, r.key, r.value) for r in batch]
    return out


def test_batch_writes_are_what_fausts_table_reads_and_its_changelog_restores(tmp_path, unstarted):
    runtime = worker(tmp_path, "a")
    outbox = BatchSender(lambda: unstarted).outbox()
    runtime.store.write(RECORDS, outbox)

    # Read back in one go, and through Faust's own per-key API in the key's partition.
    assert runtime.store.read((p, k) for p, k, _ in RECORDS) == {k: v for _, k, v in RECORDS}
    assert runtime.store.read([(1, b"s-a"), (0, b"nobody")]) == {b"s-a": None, b"nobody": None}
    for partition, key, value in RECORDS:
        with _in_partition("clicks", partition):
            assert runtime.sessions[key] == value
        assert runtime.sessions.get(key) == value  # and outside of any event

    # One changelog record per write, to Faust's changelog topic, in the key's partition;
    # a batch larger than max_batch_size (2 KiB here) is split, order kept.
    topic = runtime.sessions.changelog_topic.get_topic_name()
    assert topic == "store-a-sessions-changelog"
    sent = changelog_records(outbox)
    assert sorted(sent) == sorted((topic, p, k, v) for p, k, v in RECORDS)
    assert len(outbox._builders) == 3 and outbox.records == 3

    # Faust's recovery applies those records to an empty store: the same sessions.
    fresh = worker(tmp_path, "b")
    events = [
        SimpleNamespace(message=Message(t, p, i, 0.0, 0, None, k, v, None, tp=TP(t, p)))
        for i, (t, p, k, v) in enumerate(sent)
    ]
    fresh.sessions.data.apply_changelog_batch(events, lambda k: k, lambda v: v)
    assert fresh.store.read((p, k) for p, k, _ in RECORDS) == {k: v for _, k, v in RECORDS}


def test_delivered_changelog_offsets_are_persisted_for_the_next_start(tmp_path, unstarted):
    runtime = worker(tmp_path, "a")
    outbox = BatchSender(lambda: unstarted).outbox()
    runtime.store.write(RECORDS, outbox)
    topic = runtime.store.changelog_topic
    assert runtime.sessions.data.persisted_offset(TP(topic, 3)) is None
    for callback in outbox._callbacks:
        callback([Delivered(topic, 3, 41), Delivered(topic, 0, 7), Delivered("recs", 0, 99)])
    assert runtime.sessions.data.persisted_offset(TP(topic, 3)) == 41
    assert runtime.sessions.data.persisted_offset(TP(topic, 0)) == 7


def test_answers_go_to_the_default_partitioners_partition(unstarted):
    # What aiokafka's send(key=...) picks (its private _partition): murmur2, like Java's.
    unstarted._metadata = SimpleNamespace(
        partitions_for_topic=lambda _: set(range(6)),
        available_partitions_for_topic=lambda _: set(range(6)),
    )
    for i in range(500):
        key = f"session-{i}".encode()
        assert default_partition(key, 6) == unstarted._partition("t", None, None, None, key, b"")


@pytest.mark.kafka
def test_outboxes_reach_each_partition_in_order_and_a_refusal_fails_its_delivery(kafka_bootstrap):
    topic = create_topic(kafka_bootstrap, unique_topic("outbox"), 2)
    refusing = create_topic(
        kafka_bootstrap, unique_topic("refusing"), 1, {"max.message.bytes": "512"}
    )
    n_outboxes, per_outbox = 60, 25

    async def scenario() -> list[str]:
        client = producer(settings_of(kafka_bootstrap), linger_ms=5)
        await client.start()
        try:
            sender = BatchSender(lambda: client)
            deliveries = []
            for b in range(n_outboxes):  # submitted back to back, none awaited in between
                outbox = sender.outbox()
                for i in range(per_outbox):
                    await outbox.add_keyed(topic, f"k{i % 7}".encode(), f"{b}:{i}".encode())
                deliveries.append(outbox.submit())
            await asyncio.gather(*deliveries)
            refused, after = sender.outbox(), sender.outbox()
            refused.add(refusing, 0, b"k", b"x" * 2048)
            after.add(topic, 0, b"k", b"after")
            outcomes = await asyncio.gather(
                refused.submit(), after.submit(), return_exceptions=True
            )
            return [type(o).__name__ for o in outcomes]
        finally:
            await client.stop()

    outcomes = asyncio.run(scenario())
    # (What follows a failed delivery is never acked: stream_app/delivery.py's AckGate.)
    assert outcomes == ["MessageSizeTooLargeError", "NoneType"]
    records = [r for r in consume_all(kafka_bootstrap, topic) if r.value != b"after"]
    assert len(records) == n_outboxes * per_outbox
    for partition in (0, 1):
        seen = [tuple(map(int, r.value.split(b":"))) for r in records if r.partition == partition]
        assert seen == sorted(seen)  # outbox by outbox, record by record
    for r in records:
        assert r.partition == default_partition(r.key, 2)
