"""kafka_io/bulk_send.py against a real broker: records land where and as `send` puts them.

The module appends to aiokafka's open batches directly; these tests fail if an aiokafka
upgrade changes what it relies on (the accumulator's batches, the builder's append, the
batch's future, the partitioner).
"""

from __future__ import annotations

import asyncio

import pytest
from aiokafka.errors import MessageSizeTooLargeError, ProducerClosed

from kafka_io.bulk_send import append_records
from kafka_io.clients import producer
from tests.kafka_util import consume_all, create_topic, settings_of, unique_topic

pytestmark = pytest.mark.kafka


def run_producer(kafka_bootstrap: str, body, **options):
    """Run `body(client)` with a started producer; its result."""

    async def run():
        client = producer(settings_of(kafka_bootstrap), **options)
        await client.start()
        try:
            return await body(client)
        finally:
            await client.stop()

    return asyncio.run(run())


def test_records_land_in_order_where_send_would_put_them(kafka_bootstrap):
    bulk, single = unique_topic("bulk"), unique_topic("single")
    for topic in (bulk, single):
        create_topic(kafka_bootstrap, topic, 3)
    keyed = [(f"session-{i % 7}".encode(), f"value {i}".encode()) for i in range(60)]
    pinned = [(b"pinned", f"pinned {i}".encode()) for i in range(5)]

    async def body(client):
        records = [(bulk, None, k, v) for k, v in keyed] + [(bulk, 2, k, v) for k, v in pinned]
        sent = await append_records(client, records)
        await asyncio.gather(*(d.future for d in sent))
        for key, value in keyed:  # the reference: one `send` per record
            await client.send(single, value, key=key)
        await client.flush()
        return sent

    sent = run_producer(kafka_bootstrap, body)
    got = consume_all(kafka_bootstrap, bulk)
    expected = consume_all(kafka_bootstrap, single)
    keyed_got = [r for r in got if r.key != b"pinned"]
    assert [(r.partition, r.key, r.value) for r in keyed_got] == [
        (r.partition, r.key, r.value) for r in expected
    ]
    assert [r.value for r in got if r.key == b"pinned"] == [v for _, v in pinned]
    assert {r.partition for r in got if r.key == b"pinned"} == {2}
    # Each partition's last delivery carries its highest offset.
    last = {d.tp.partition: d.last_offset() for d in sent}
    assert last == {p: max(r.offset for r in got if r.partition == p) for p in last}


def test_a_remembered_key_partition_follows_the_topics_partition_count(kafka_bootstrap):
    """The same keys on topics of 3 and 5 partitions go where `send` puts each of them."""
    topics = {unique_topic("keys-3"): 3, unique_topic("keys-5"): 5}
    for topic, count in topics.items():
        create_topic(kafka_bootstrap, topic, count)
    keys = [f"session-{i}".encode() for i in range(40)]

    async def body(client):
        placed = {}
        for topic in topics:
            for _ in range(2):  # the second pass reads the remembered partitions
                for key in keys:
                    sent = await append_records(client, [(topic, None, key, b"v")])
                    placed[topic, key] = sent[0].tp.partition
        reference = {}
        for topic in topics:
            for key in keys:
                metadata = await (await client.send(topic, b"v", key=key))
                reference[topic, key] = metadata.partition
        return placed, reference

    placed, reference = run_producer(kafka_bootstrap, body)
    assert placed == reference
    assert len({placed[t, k] for t in topics for k in keys}) == 5  # both counts were used


def test_full_batches_go_out_and_the_rest_follows_in_order(kafka_bootstrap):
    topic = unique_topic("bulk-full")
    create_topic(kafka_bootstrap, topic, 1)
    values = [f"{i:04d}".encode() * 100 for i in range(40)]  # 400 bytes each

    async def body(client):
        sent = await append_records(client, [(topic, 0, None, v) for v in values])
        await asyncio.gather(*(d.future for d in sent))
        return sent

    sent = run_producer(kafka_bootstrap, body, max_batch_size=2048)
    assert len(sent) > 1  # several batches, each with its own delivery
    got = consume_all(kafka_bootstrap, topic)
    assert [r.value for r in got] == values
    assert sent[-1].last_offset() == got[-1].offset


def test_a_refused_record_fails_its_delivery(kafka_bootstrap):
    topic = unique_topic("bulk-refused")
    create_topic(kafka_bootstrap, topic, 1, {"max.message.bytes": "512"})

    async def body(client):
        sent = await append_records(client, [(topic, 0, b"k", b"x" * 2000)])
        with pytest.raises(MessageSizeTooLargeError):
            await sent[0].future

    run_producer(kafka_bootstrap, body)
    assert consume_all(kafka_bootstrap, topic) == []


def test_a_stopped_producer_refuses(kafka_bootstrap):
    topic = unique_topic("bulk-closed")
    create_topic(kafka_bootstrap, topic, 1)

    async def run():
        client = producer(settings_of(kafka_bootstrap))
        await client.start()
        await client.send_and_wait(topic, b"first")
        await client.stop()
        with pytest.raises(ProducerClosed):
            await append_records(client, [(topic, 0, None, b"late")])

    asyncio.run(run())
    assert [r.value for r in consume_all(kafka_bootstrap, topic)] == [b"first"]
