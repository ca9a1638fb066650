"""The worker's batch access to the sessions table, checked against Faust's own table code.

stream_app/session_store.py goes around Faust's per-key table API; these tests fail if a
Faust upgrade changes what it relies on (the store's layout, the changelog topic and its
partitioning, persisted offsets, recovery from the changelog).
"""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest
from faust.types import TP, Message

from kafka_io.clients import producer
from stream_app.app import create_app
from stream_app.config import WorkerConfig
from stream_app.runtime import _in_partition
from tests.kafka_util import consume_all, create_topic, settings_of, unique_topic

pytestmark = pytest.mark.kafka

RECORDS = [(0, b"s-a", b"state a"), (3, b"s-b", b"state b"), (0, b"s-c", b"c" * 3000)]


def worker(tmp_path, name: str):
    """A worker's app and runtime (not started), with topics of its own on the shared broker."""
    app_id = f"{unique_topic('store')}-{name}"
    config = WorkerConfig(app_id=app_id, data_dir=str(tmp_path / name))
    return create_app(config)[1]


def write(runtime, kafka_bootstrap: str, records) -> None:
    """SessionStore.write through a real producer, until the broker has its records."""

    async def run() -> None:
        client = producer(settings_of(kafka_bootstrap))
        await client.start()
        try:
            sent = await runtime.store.write(records, client)
            await asyncio.gather(*(delivery.future for delivery in sent))
        finally:
            await client.stop()

    asyncio.run(run())


def test_batch_writes_are_what_fausts_table_reads_and_its_changelog_restores(
    tmp_path, kafka_bootstrap
):
    runtime = worker(tmp_path, "a")
    topic = runtime.store.changelog_topic
    assert topic == f"{runtime.config.app_id}-sessions-changelog"
    create_topic(kafka_bootstrap, topic, 4, {"cleanup.policy": "compact"})
    write(runtime, kafka_bootstrap, RECORDS)

    # Read back in one go, and through Faust's own per-key API in the key's partition.
    assert runtime.store.read((p, k) for p, k, _ in RECORDS) == {k: v for _, k, v in RECORDS}
    assert runtime.store.read([(1, b"s-a"), (0, b"nobody")]) == {b"s-a": None, b"nobody": None}
    for partition, key, value in RECORDS:
        with _in_partition("clicks", partition):
            assert runtime.sessions[key] == value
        assert runtime.sessions.get(key) == value  # and outside of any event

    # One changelog record per write, in Faust's changelog topic, in the key's partition.
    records = consume_all(kafka_bootstrap, topic)
    assert sorted((r.partition, r.key, r.value) for r in records) == sorted(RECORDS)
    # How far each partition's changelog is in the local store, for the next start.
    for partition in (0, 3):
        last = max(r.offset for r in records if r.partition == partition)
        assert runtime.sessions.data.persisted_offset(TP(topic, partition)) == last

    # Faust's recovery applies those records to an empty store: the same sessions.
    fresh = worker(tmp_path, "b")
    events = [
        SimpleNamespace(
            message=Message(
                topic, r.partition, r.offset, 0.0, 0, None, r.key, r.value, None,
                tp=TP(topic, r.partition),
            )
        )
        for r in records
    ]  # fmt: skip
    fresh.sessions.data.apply_changelog_batch(events, lambda k: k, lambda v: v)
    assert fresh.store.read((p, k) for p, k, _ in RECORDS) == {k: v for _, k, v in RECORDS}


def test_a_refused_changelog_record_fails_its_delivery(tmp_path, kafka_bootstrap):
    runtime = worker(tmp_path, "a")
    create_topic(kafka_bootstrap, runtime.store.changelog_topic, 4, {"max.message.bytes": "512"})
    with pytest.raises(Exception, match="MessageSizeTooLarge"):
        write(runtime, kafka_bootstrap, RECORDS)
    topic = runtime.store.changelog_topic
    assert runtime.sessions.data.persisted_offset(TP(topic, 0)) is None
