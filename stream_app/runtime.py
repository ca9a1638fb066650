"""The worker's async shell around the pure core: table access, sends, expiry, model wait.

A micro-batch's sessions are read and written in one go (stream_app/session_store.py). Where
the Faust table API is still used (expiry's deletes), Faust picks a key's RocksDB partition
and changelog partition from the *current event*, so those calls run inside
`_in_partition(...)`, which makes the session's own partition the current one.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import threading
import time
import weakref
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace
from typing import Any, NoReturn

import faust
from aiokafka import AIOKafkaProducer
from faust.streams import _current_event
from faust.types import TP

from kafka_io.bulk_send import Record, append_records
from schemas.events import DeadLetter, ValidationError, encode
from scoring import ServingModel
from stream_app.config import WorkerConfig
from stream_app.core import BatchResult, Click, answer_batch, decode_message
from stream_app.delivery import STALLED_AFTER_S, AckGate, record_fits
from stream_app.expiry import EventClock
from stream_app.metrics import WorkerMetrics
from stream_app.model_updates import ModelHolder, ModelUpdateFollower, SwapRecord
from stream_app.session_cache import SessionCache
from stream_app.sessions import SessionDecodeError, SessionState, peek
from stream_app.trust import trust_policy

log = logging.getLogger(__name__)

# Test-only fault hook, read by the core's caller (`WorkerRuntime.answer`) and nowhere else:
# GRU4STREAM_TEST_FAIL_BATCH=N raises InjectedFault instead of answering the N-th micro-batch
# that has clicks (1-based), as a bug in the core would (tests/test_faults.py).
TEST_FAIL_BATCH_ENV = "GRU4STREAM_TEST_FAIL_BATCH"
# After a fault the worker stops cleanly (commit what was delivered, leave the group); if that
# hangs (a broker that is gone), the process exits anyway after this long.
STOP_GRACE_S = 30.0
EXIT_AFTER_FAULT = 70  # EX_SOFTWARE, when the clean stop did not finish in time


class InjectedFault(RuntimeError):
    """Raised by the test hook GRU4STREAM_TEST_FAIL_BATCH."""


class _PartitionMarker:
    """Stands in for the current event where Faust's table only reads its topic/partition."""

    __slots__ = ("message", "__weakref__")

    def __init__(self, topic: str, partition: int) -> None:
        self.message = SimpleNamespace(topic=topic, partition=partition)


@contextlib.contextmanager
def _in_partition(topic: str, partition: int) -> Iterator[None]:
    marker = _PartitionMarker(topic, partition)
    token = _current_event.set(weakref.ref(marker))
    try:
        yield
    finally:
        _current_event.reset(token)


class WorkerRuntime:
    """Everything the agent, the timers and the web views share."""

    def __init__(self, config: WorkerConfig, app: faust.App) -> None:
        self.config = config
        self.app = app
        self.metrics = WorkerMetrics()
        self.holder = ModelHolder(on_event=self._on_model_event)
        # A thread for loading models, so that building a new index never stalls the
        # batches of the old model.
        self.loader_pool = ThreadPoolExecutor(1, thread_name_prefix="model-loader")
        self.follower = ModelUpdateFollower(
            config.kafka,
            config.model_updates_topic,
            self.holder,
            self.loader_pool,
            config.serving_options(),
        )
        # Which announced models to trust (registry, HMAC key): see stream_app/trust.py.
        self.follower.trust = trust_policy(config.registry, config.model_key_file)
        self.sessions: Any = None  # the faust Table, set by the app factory
        self.store: Any = None  # its SessionStore (batch reads and writes), set with it
        self.cache = SessionCache(config.session_cache)  # in front of the store
        self.clock = EventClock()  # per-partition event time, for expiry
        self.started_at = time.time()
        # Why the worker stopped (a fault that is not one click's); /health answers 503.
        self.failed: str | None = None
        self.acks = AckGate(lambda: app.consumer, self.stop_worker)
        fail_batch = os.environ.get(TEST_FAIL_BATCH_ENV)
        self._fail_batch = int(fail_batch) if fail_batch else None
        self._batches = 0  # micro-batches with clicks handed to the core

    def assigned_partitions(self) -> list[int]:
        """The `clicks` partitions this worker answers (after the last rebalance)."""
        topic = self.config.clicks_topic
        return sorted(
            tp.partition for tp in self.app.assignor.assigned_actives() if tp.topic == topic
        )

    # --- the model -------------------------------------------------------------------------

    def _on_model_event(self, record: SwapRecord) -> None:
        if record.outcome == "loaded" and self.holder.model is not None:
            self.metrics.set_model(record.version, self.holder.model.loaded_at)
        elif record.outcome == "refused":
            self.metrics.model_refusals.labels(reason=record.code or "invalid").inc()

    async def model_for_batch(self) -> ServingModel:
        """The model that answers the next batch; waits while there is none yet."""
        if not (self.holder.ready.is_set() and self.follower.caught_up.is_set()):
            log.warning(
                "waiting for a model to serve (and for %s to be read)",
                self.config.model_updates_topic,
            )
            await self.holder.ready.wait()
            await self.follower.caught_up.wait()
        model = self.holder.model
        assert model is not None
        return model

    async def follow_model_updates(self) -> None:
        await self.follower.run()

    # --- the batch steps ---------------------------------------------------------------------

    def decode(self, events: Sequence[Any]) -> tuple[list[Click], list[DeadLetter]]:
        clicks, dead = [], []
        for event in events:
            msg = event.message
            raw = msg.value
            self.clock.read(msg.partition, msg.offset)
            try:
                click = decode_message(raw, msg.key, self.config.core)
            except ValidationError as exc:
                dead.append(self._dead_letter(msg, str(exc)))
                continue
            except Exception as exc:  # noqa: BLE001 - whatever these bytes trigger is theirs
                log.exception("click %s@%d: decoding failed", msg.topic, msg.offset)
                dead.append(self._dead_letter(msg, f"event: undecodable ({exc!r})"))
                continue
            clicks.append(
                Click(
                    click,
                    msg.topic,
                    msg.partition,
                    msg.offset,
                    raw or b"",
                    msg.key,
                    int(msg.timestamp * 1000),
                )
            )
        self.metrics.events_in.inc(len(events))
        self.metrics.batch_size.observe(len(events))
        return clicks, dead

    def read_sessions(self, clicks: Sequence[Click]) -> dict[str, SessionState | None]:
        """The stored state of each session of the batch (None: new or unreadable)."""
        wanted = {click.event.session_id: click.partition for click in clicks}
        stored: dict[str, SessionState | None] = dict(
            self.cache.lookup(self.app.consumer_generation_id, wanted)
        )
        self.metrics.session_cache_hits.inc(len(stored))
        missing = [sid for sid in wanted if sid not in stored]
        raw = self.store.read((wanted[sid], sid.encode()) for sid in missing)
        for sid in missing:
            value = raw[sid.encode()]
            try:
                stored[sid] = None if value is None else SessionState.decode(value)
            except SessionDecodeError as exc:
                log.error("session %r: stored value unreadable, starting over: %s", sid, exc)
                stored[sid] = None
        return stored

    def answer(
        self, model: ServingModel, clicks: list[Click], stored: dict[str, SessionState | None]
    ) -> BatchResult:
        self._batches += 1
        if self._batches == self._fail_batch:  # the test-only hook (TEST_FAIL_BATCH_ENV)
            raise InjectedFault(f"{TEST_FAIL_BATCH_ENV}={self._fail_batch}: injected fault")
        started = time.perf_counter()
        # On the loop thread. In a thread of its own the core overlapped nothing: Faust
        # fills the next batch only after this one is done, and the two threads took turns
        # on the interpreter lock; inline, a worker answered 1.3x as many clicks a second
        # (benchmarks/bench_stream.py --compare). A batch blocks the loop for milliseconds.
        result = answer_batch(model, clicks, stored, self.config.core)
        self.metrics.inference_seconds.observe(time.perf_counter() - started)
        self.metrics.sessions_recomputed.inc(result.recomputed)
        self.metrics.redelivered.inc(result.redelivered)
        if result.not_reanswered:
            log.warning(
                "%d redelivered clicks older than their session's history were not answered again",
                result.not_reanswered,
            )
        return result

    async def write_sessions(self, result: BatchResult) -> list[asyncio.Future]:
        """Write the batch's sessions; returns their changelog deliveries (awaited before the ack).

        A session whose value cannot fit in a record is not written, and its clicks of this
        batch become dead letters instead of answers (only a huge --k or --history does that).
        """
        newest: dict[int, int] = {}
        too_big: dict[str, int] = {}
        records: list[tuple[int, bytes, bytes]] = []
        for sid, session in result.sessions.items():
            key, value = sid.encode(), session.encode()
            if not record_fits(key, value, self.config.producer_max_request_size):
                too_big[sid] = len(value)
                continue
            records.append((session.partition, key, value))
            if session.last_event_ms > newest.get(session.partition, -1):
                newest[session.partition] = session.last_event_ms
        written = await self.store.write(records, self._producer())
        for sid, session in result.sessions.items():
            if sid in too_big:
                self.cache.evict(sid)  # advanced in place by the core, but not written
            else:
                self.cache.store(sid, session)
        if too_big:
            self._reject_sessions(result, too_big)
        # Only now, with the batch in the table, may the expiry clock pass its clicks.
        wall_ms = int(time.time() * 1000)
        for partition, event_ms in newest.items():
            self.clock.applied(partition, event_ms, wall_ms)
        return [delivery.future for delivery in written]

    def _reject_sessions(self, result: BatchResult, too_big: dict[str, int]) -> None:
        limit = self.config.producer_max_request_size
        for sid, size in too_big.items():
            del result.sessions[sid]
            reason = f"session: its state of {size} bytes does not fit a record ({limit})"
            result.rejected += [(c, reason) for c, _ in result.answers if c.event.session_id == sid]
        result.answers = [(c, r) for c, r in result.answers if c.event.session_id not in too_big]

    async def send_dead_letters(self, dead: Sequence[DeadLetter]) -> list[asyncio.Future]:
        if not dead:
            return []
        records: list[Record] = []
        for letter in dead:
            value = encode(letter)
            if not record_fits(letter.key, value, self.config.producer_max_request_size):
                # Only with a --dlq-prefix-bytes near the limit: keep the metadata alone.
                value = encode(dataclasses.replace(letter, original=b""))
            records.append((self.config.dlq_topic, None, letter.key, value))
            self.metrics.dead_letters.labels(field=letter.reason.split(":", 1)[0]).inc()
            log.info("dead letter %s@%d: %s", letter.topic, letter.offset, letter.reason)
        return await self._append(records)

    async def publish(self, result: BatchResult) -> list[asyncio.Future]:
        """Send the answers and the core's dead letters; returns their deliveries.

        An answer too large for a record (a huge --k with long item ids) is a dead letter.
        """
        limit = self.config.producer_max_request_size
        topic = self.config.recommendations_topic
        records: list[Record] = []
        now = time.time()
        too_big: list[tuple[Click, str]] = []
        latency = self.metrics.latency_seconds
        for click, value in result.answers:
            key = click.event.session_id.encode()
            if not record_fits(key, value, limit):
                reason = f"recommendation: {len(value)} bytes do not fit a record ({limit})"
                too_big.append((click, reason))
                continue
            records.append((topic, None, key, value))
            latency.observe(max(now - click.message_ms / 1000, 0.0))
        answered = len(records)
        sent = await self._append(records)
        self.metrics.recommendations.inc(answered)
        sent += await self.send_dead_letters(
            [
                self._dead_letter(
                    SimpleNamespace(
                        topic=c.topic,
                        partition=c.partition,
                        offset=c.offset,
                        value=c.raw,
                        key=c.key,
                    ),
                    reason,
                )
                for c, reason in [*result.rejected, *too_big]
            ]
        )
        return sent

    async def _append(self, records: Sequence[Record]) -> list[asyncio.Future]:
        """Queue records on the aiokafka producer under Faust's, in one go; their deliveries.

        Faust's `Producer.send` adds a coroutine and its sensors per record; see
        kafka_io/bulk_send.py. The callers sized each record, so none is refused here.
        """
        return [delivery.future for delivery in await append_records(self._producer(), records)]

    def _producer(self) -> AIOKafkaProducer:
        """The aiokafka producer under Faust's (its `send` is what Faust's wraps)."""
        return self.app.producer._ensure_producer()

    def _dead_letter(self, msg: Any, reason: str) -> DeadLetter:
        """The reason starts with the field at fault ("timestamp: ..."), as ValidationError's do."""
        return DeadLetter.of(
            reason,
            msg.topic,
            msg.partition,
            msg.offset,
            msg.value,
            msg.key,
            max_original_bytes=self.config.dlq_prefix_bytes,
        )

    # --- faults ----------------------------------------------------------------------------

    async def stop_worker(self, exc: BaseException | None) -> NoReturn:
        """Stop the process after a fault that is not one click's; never returns.

        The batch at fault stays held (stream_app/delivery.py), so nothing from it on is
        acknowledged: `app.crash` wakes Faust's worker, which stops cleanly (commits what was
        delivered, leaves the group) and exits with status 1, and whoever takes the
        partitions reads the rest again. The agent waits here until it is cancelled by that
        stop: returning or raising would let Faust go on with the next batch.
        """
        if self.failed is None:
            self.failed = f"stopped after a fault: {exc!r}"
            log.critical(
                "stopping the worker: %r (clicks not yet acknowledged will be read again)",
                exc,
                exc_info=exc,
            )
            # A clean stop can hang on a broker that is gone; exit in any case.
            timer = threading.Timer(STOP_GRACE_S, os._exit, (EXIT_AFTER_FAULT,))
            timer.daemon = True
            timer.start()
            await self.app.crash(exc if exc is not None else RuntimeError(self.failed))
        await asyncio.Future()  # until cancelled by the stop
        raise AssertionError("unreachable")

    def problem(self) -> str | None:
        """Why the worker cannot make progress now (for /health), or None."""
        if self.failed is not None:
            return self.failed
        held = self.acks.held_for()
        serving = self.holder.model is not None and self.follower.caught_up.is_set()
        if held > STALLED_AFTER_S and serving:  # else it waits for a model, not for Kafka
            return f"stalled: a batch has waited {held:.0f} s for Kafka to take its records"
        return None

    # --- expiry ----------------------------------------------------------------------------

    async def expire_sessions(self) -> None:
        """Delete sessions that are over; also refreshes the table-size gauge.

        Over means more than the TTL behind their partition's event-time clock
        (`stream_app/expiry.py`), not the wall clock: a worker catching up on a backlog
        keeps the sessions whose next clicks are still to be read. The scan reads only each
        value's fixed prefix. The decision is re-checked right before each delete with no
        await in between, so a session that the agent moved on meanwhile is never deleted.
        """
        ttl = self.config.core.session_ttl_ms
        clocks = self._partition_clocks()
        live = expired = 0
        candidates: list[bytes] = []
        for i, (key, raw) in enumerate(self.sessions.items()):
            seen = peek(raw)
            if seen is not None:
                last_event_ms, partition = seen
                now = clocks.get(partition)
                if now is None or now - last_event_ms <= ttl:
                    live += 1
                else:
                    candidates.append(key)
            if i % 1000 == 999:
                await asyncio.sleep(0)
        clocks = self._partition_clocks()  # afresh: the scan may have let batches in
        for key in candidates:
            seen = peek(self.sessions.get(key) or b"")
            if seen is None:
                continue  # gone meanwhile
            now = clocks.get(seen[1])
            if now is None or now - seen[0] <= ttl:
                live += 1
                continue
            with _in_partition(self.config.clicks_topic, seen[1]):
                del self.sessions[key]
            self.cache.evict(key.decode())
            expired += 1
        self.metrics.sessions_expired.inc(expired)
        self.metrics.sessions.set(live)
        if expired:
            log.info("expired %d idle sessions, %d live", expired, live)

    def _partition_clocks(self) -> dict[int, int | None]:
        """Each `clicks` partition's event time now (None: unknown, nothing expires there)."""
        wall_ms = int(time.time() * 1000)
        partitions = range(self.config.partitions)
        return {p: self.clock.now(p, wall_ms, self._end_offset(p)) for p in partitions}

    def _end_offset(self, partition: int) -> int | None:
        """The partition's end offset as the consumer last fetched it; None if unknown."""
        try:
            return self.app.consumer.highwater(TP(self.config.clicks_topic, partition))
        except Exception:  # noqa: BLE001 - not assigned here, or no consumer yet: unknown
            return None
