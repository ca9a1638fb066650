"""The worker's async shell around the pure core: table access, sends, expiry, model wait.

Faust picks a table key's RocksDB partition and changelog partition from the *current event*.
A micro-batch from `take_events` spans partitions, so every table read and write here runs
inside `_in_partition(...)`, which makes the click's own partition the current one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import weakref
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace
from typing import Any

import faust
import orjson
from faust.streams import _current_event

from schemas.events import DeadLetter, ValidationError, encode
from stream_app.config import WorkerConfig
from stream_app.core import BatchResult, Click, answer_batch, decode_message
from stream_app.inference import ServingModel
from stream_app.metrics import WorkerMetrics
from stream_app.model_updates import ModelHolder, ModelUpdateFollower, SwapRecord
from stream_app.sessions import SessionDecodeError, SessionState, peek

log = logging.getLogger(__name__)


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
        # One thread for inference (one core per worker), one for loading models, so that
        # building a new index never stalls the batches of the old model.
        self.inference_pool = ThreadPoolExecutor(1, thread_name_prefix="inference")
        self.loader_pool = ThreadPoolExecutor(1, thread_name_prefix="model-loader")
        self.follower = ModelUpdateFollower(
            config.bootstrap,
            config.model_updates_topic,
            self.holder,
            self.loader_pool,
            config.serving_options(),
        )
        self.sessions: Any = None  # the faust Table, set by the app factory
        self.started_at = time.time()

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
            self.metrics.model_refusals.inc()

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
            try:
                click = decode_message(raw, msg.key, self.config.core)
            except ValidationError as exc:
                dead.append(_dead_letter(msg, str(exc)))
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
        stored: dict[str, SessionState | None] = {}
        for click in clicks:
            sid = click.event.session_id
            if sid in stored:
                continue
            with _in_partition(click.topic, click.partition):
                raw = self.sessions.get(sid.encode())
            try:
                stored[sid] = None if raw is None else SessionState.decode(raw)
            except SessionDecodeError as exc:
                log.error("session %r: stored value unreadable, starting over: %s", sid, exc)
                stored[sid] = None
        return stored

    async def answer(
        self, model: ServingModel, clicks: list[Click], stored: dict[str, SessionState | None]
    ) -> BatchResult:
        started = time.perf_counter()
        if self.config.naive:
            result = answer_batch(model, clicks, stored, self.config.core)
        else:
            loop = asyncio.get_running_loop()
            result = await loop.run_in_executor(
                self.inference_pool, answer_batch, model, clicks, stored, self.config.core
            )
        self.metrics.inference_seconds.observe(time.perf_counter() - started)
        self.metrics.sessions_recomputed.inc(result.recomputed)
        self.metrics.redelivered.inc(result.redelivered)
        if result.not_reanswered:
            log.warning(
                "%d redelivered clicks older than their session's history were not answered again",
                result.not_reanswered,
            )
        return result

    def write_sessions(self, result: BatchResult) -> None:
        topic = self.config.clicks_topic
        for sid, session in result.sessions.items():
            with _in_partition(topic, session.partition):
                self.sessions[sid.encode()] = session.encode()

    async def send_dead_letters(self, dead: Sequence[DeadLetter]) -> None:
        for letter in dead:
            await self._send(self.config.dlq_topic, letter.key, encode(letter))
            self.metrics.dead_letters.labels(field=letter.reason.split(":", 1)[0]).inc()
            log.info("dead letter %s@%d: %s", letter.topic, letter.offset, letter.reason)

    async def publish(self, result: BatchResult) -> None:
        await self.send_dead_letters(
            [
                _dead_letter(
                    SimpleNamespace(
                        topic=c.topic,
                        partition=c.partition,
                        offset=c.offset,
                        value=c.raw,
                        key=c.key,
                    ),
                    reason,
                )
                for c, reason in result.rejected
            ]
        )
        now = time.time()
        for click, rec in result.answers:
            key = rec["session_id"].encode()
            await self._send(self.config.recommendations_topic, key, orjson.dumps(rec))
            self.metrics.latency_seconds.observe(max(now - click.message_ms / 1000, 0.0))
        self.metrics.recommendations.inc(len(result.answers))

    async def _send(self, topic: str, key: bytes | None, value: bytes) -> None:
        """Straight to the producer that Faust flushes before every offset commit.

        Faust's Topic.send adds about as much work per message again as the whole answer;
        at-least-once holds because a commit waits for everything sent here. A delivery
        that fails for good stops the worker, so its clicks are read again after a restart.
        """
        delivery = await self.app.producer.send(topic, key, value, None, None, None)
        delivery.add_done_callback(self._on_delivered)

    def _on_delivered(self, delivery: asyncio.Future) -> None:
        if delivery.cancelled() or delivery.exception() is None:
            return
        exc = delivery.exception()
        log.error("could not deliver to Kafka, stopping (clicks will be re-read): %r", exc)
        asyncio.ensure_future(self.app.crash(exc))

    # --- expiry ----------------------------------------------------------------------------

    async def expire_sessions(self) -> None:
        """Delete sessions idle for longer than the TTL; also refreshes the table-size gauge.

        The scan reads only each value's fixed prefix. The decision is re-checked right
        before each delete with no await in between, so a session that the agent touched
        meanwhile is never deleted.
        """
        ttl = self.config.core.session_ttl_ms
        now = int(time.time() * 1000)
        live = expired = 0
        candidates: list[tuple[bytes, int]] = []
        for i, (key, raw) in enumerate(self.sessions.items()):
            seen = peek(raw)
            if seen is not None and now - seen[0] <= ttl:
                live += 1
            elif seen is not None:
                candidates.append((key, seen[1]))
            if i % 1000 == 999:
                await asyncio.sleep(0)
        for key, partition in candidates:
            seen = peek(self.sessions.get(key) or b"")
            if seen is None:
                continue  # gone meanwhile
            if now - seen[0] <= ttl:
                live += 1
                continue
            with _in_partition(self.config.clicks_topic, partition):
                del self.sessions[key]
            expired += 1
        self.metrics.sessions_expired.inc(expired)
        self.metrics.sessions.set(live)
        if expired:
            log.info("expired %d idle sessions, %d live", expired, live)


def _dead_letter(msg: Any, reason: str) -> DeadLetter:
    """The reason starts with the field at fault ("timestamp: ..."), as ValidationError's do."""
    return DeadLetter(
        reason=reason,
        topic=msg.topic,
        partition=msg.partition,
        offset=msg.offset,
        original=bytes(msg.value or b""),
        key=None if msg.key is None else bytes(msg.key),
    )
