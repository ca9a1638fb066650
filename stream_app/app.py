"""The Faust application: one agent on `clicks`, the `sessions` table, timers and views.

`create_app(config)` builds a fresh app from a frozen config, so tests can run several with
their own ids and topics. Delivery is at least once: a batch's events are acknowledged only
after Kafka has acknowledged every answer, dead letter and session write the batch produced
(stream_app/delivery.py); any fault that is not one click's stops the worker unacknowledged.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Sequence
from typing import Any

import faust

from kafka_io.clients import faust_options
from stream_app.config import WorkerConfig
from stream_app.consumer import use_eager_delivery
from stream_app.intake import take_batches
from stream_app.metrics import StageClock
from stream_app.recovery import SafeTableManager
from stream_app.runtime import WorkerRuntime
from stream_app.session_store import SessionStore
from stream_app.views import register_views

# Clicks the agent's queue holds (see stream_buffer_maxsize below): 40% of it is over a second
# of clicks at the fastest rate measured for one worker (~11,000/s on a backlog).
STREAM_BUFFER_MAXSIZE = 32_768


def create_app(config: WorkerConfig) -> tuple[faust.App, WorkerRuntime]:
    app = faust.App(
        config.app_id,
        **faust_options(config.kafka),  # brokers, credentials, changelog replication
        store="rocksdb://",
        datadir=config.data_dir or f"var/worker/{config.app_id}",
        topic_partitions=config.partitions,
        consumer_auto_offset_reset=config.offset_reset,
        producer_acks=-1,
        table_standby_replicas=config.standby_replicas,
        broker_session_timeout=config.broker_session_timeout_s,
        broker_heartbeat_interval=config.heartbeat_interval_s,
        consumer_group_instance_id=config.group_instance_id,
        broker_commit_interval=config.commit_interval_s,
        # A micro-batch sends two messages per click (answer + changelog); aiokafka keeps one
        # request in flight per partition, so small batches throttle the whole worker.
        producer_max_batch_size=config.producer_batch_kb * 1024,
        producer_linger=config.producer_linger_s,
        web_port=config.web_port,
        web_bind=config.web_bind,
        web_host=config.web_host,
        autodiscover=False,
        TableManager=SafeTableManager,  # see stream_app/recovery.py
        producer_max_request_size=config.producer_max_request_size,
        # Fetched clicks wait in the agent's queue. At 80% full Faust pauses the fetch of its
        # partitions until it is 40% full again, and a fetch loop that finds every partition
        # paused sleeps a whole second: the queue must hold more than a second of clicks
        # then, or a backlog leaves the worker idle (Faust's default, 4,096, did).
        stream_buffer_maxsize=STREAM_BUFFER_MAXSIZE,
    )
    use_eager_delivery(app)  # see stream_app/consumer.py
    runtime = WorkerRuntime(config, app)
    # Expired sessions are deleted through the table, which queues a changelog tombstone
    # per key in Faust's producer buffer (a batch's own writes bypass it, see
    # stream_app/session_store.py), and the consumer stalls while the buffer holds more
    # than 100 (polling every 0.1 s): let a few batches' worth wait instead.
    app.producer.buffer.max_messages = 8 * max(config.batch_max, 64)
    raw = {"key_serializer": "raw", "value_serializer": "raw"}
    clicks = app.topic(config.clicks_topic, **raw)
    runtime.sessions = app.Table(
        "sessions",
        partitions=config.partitions,
        key_type=bytes,
        value_type=bytes,
        options=config.rocksdb_options(),  # bytes key/value types make Faust use "raw"
    )
    runtime.store = SessionStore(runtime.sessions)  # batch reads and writes beside the API
    batch_max = 1 if config.naive else config.batch_max

    clock = StageClock(runtime.metrics.stage_seconds, runtime.metrics.stage_cpu_seconds)

    async def answer_events(events: Sequence[faust.EventT]) -> list[Awaitable[Any]]:
        """One micro-batch -> the delivery futures of everything it sent.

        A fault of one click (bytes, fields, order, an answer or session too large) makes a
        dead letter in these steps; anything raised out of here is not one click's fault.
        """
        clicks_, dead = runtime.decode(events)
        clock.lap("decode")
        sent = await runtime.send_dead_letters(dead)
        clock.lap("publish")
        if clicks_:
            model = await runtime.model_for_batch()  # read once: swaps fall between batches
            clock.lap("waiting")
            stored = runtime.read_sessions(clicks_)
            clock.lap("state_read")
            result = runtime.answer(model, clicks_, stored)
            clock.lap("core")
            sent += await runtime.write_sessions(result)
            clock.lap("state_write")
            sent += await runtime.publish(result)
            clock.lap("publish")
        return sent

    @app.agent(clicks, name="answer-clicks")
    async def answer_clicks(stream: faust.StreamT) -> None:
        async for events in take_batches(stream, batch_max, within=config.batch_within_s):
            # take_batches acks a batch even when this body raises (its `finally` runs when
            # the generator is closed), so the batch is held until its records are delivered.
            clock.lap("waiting")  # since the last batch was done
            runtime.acks.hold(events)
            try:
                sent = await answer_events(events)
            except Exception as exc:  # noqa: BLE001 - a table write, a send, a core bug
                # Never re-raised: Faust's supervisor would restart the agent and go on with
                # later batches. The worker stops; the held batch is read again elsewhere.
                await runtime.stop_worker(exc)
            released = await runtime.acks.release_after(events, sent)
            # One turn of the loop, so that the producer's sender puts this batch's records on
            # the wire: with the next batch already queued nothing else here yields, and the
            # answers waited in the producer while that batch was answered too.
            await asyncio.sleep(0)
            clock.lap("release")
            if not released:
                await runtime.stop_worker(runtime.acks.failed)

    app.task(runtime.follow_model_updates)
    app.timer(config.cleanup_interval_s, name="expire-sessions")(runtime.expire_sessions)
    register_views(app, runtime)
    return app, runtime
