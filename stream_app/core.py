"""The pure core of the worker: a micro-batch of clicks and their sessions -> answers.

No Kafka, no Faust, no event loop: the agent reads the sessions from the table, calls
`answer_batch` (on the loop thread), then writes the sessions it returns and sends the answers.

Rules (documented for producers and operators):
- A click whose message key is not its session id is a dead letter: the key decides the
  partition, and a session's state lives in exactly one partition.
- Out of order: a click whose timestamp is older than the newest accepted click of its
  session is a dead letter (equal timestamps are accepted, in offset order). The GRU reads
  a session in time order, so a late click cannot be inserted after the fact.
- A click at an offset not newer than the last one applied to its session is a redelivery
  (at-least-once after a crash): the state is not advanced twice. It is answered again:
  with the stored answer when it was the session's last click, otherwise by recomputing the
  state from the stored history up to that click (exact while the session is no longer
  than `history_len` clicks; older redeliveries are counted, not answered).
- A session is over after `session_ttl_ms` without a click, in event time: a click more
  than that after its session's last accepted click starts a new session, whether or not
  the expiry timer has deleted it yet. Event time, so that a worker catching up on a
  backlog continues the sessions it finds there (see `stream_app/expiry.py`).
- A session whose cached hidden state was computed by another model version (after a hot
  swap) is recomputed from its item history under the serving model first: from its last
  `history_len` items (50 by default), so a longer session restarts from that window.
- Items already in the session's (bounded) history are not recommended, unless
  `exclude_seen` is off.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson

from schemas.events import (
    SCHEMA_VERSION,
    ClickEvent,
    Recommendation,
    ValidationError,
    ValidationLimits,
    decode_click,
)
from scoring import ServingModel, pad_ragged
from stream_app.sessions import SessionState


@dataclass(frozen=True)
class CoreConfig:
    k: int = 20
    history_len: int = 50  # bounds the table value and the recompute after a swap
    session_ttl_ms: int = 30 * 60 * 1000
    exclude_seen: bool = True  # never recommend an item already in the session
    require_session_key: bool = True
    # The naive baseline (benchmarks only): numpy scores over all items + a full sort.
    exhaustive: bool = False
    limits: ValidationLimits = field(default_factory=ValidationLimits)


@dataclass(frozen=True)
class Click:
    """An accepted-for-now click with where it came from."""

    event: ClickEvent
    topic: str
    partition: int
    offset: int
    raw: bytes
    key: bytes | None
    message_ms: int  # the Kafka message timestamp, for click-to-recommendation latency


@dataclass
class BatchResult:
    # Recommendations as record values (`Recommendation.to_dict()` as JSON), built directly:
    # at K=20 the dataclasses cost more than the GRU step and the search together. The same
    # bytes are sent and kept as the session's last answer.
    answers: list[tuple[Click, bytes]] = field(default_factory=list)
    sessions: dict[str, SessionState] = field(default_factory=dict)  # to write back
    rejected: list[tuple[Click, str]] = field(default_factory=list)
    recomputed: int = 0  # sessions rebuilt from history (model swap or missing state)
    redelivered: int = 0  # clicks seen again after a crash
    not_reanswered: int = 0  # redelivered clicks older than the stored history
    restarted: int = 0  # expired sessions that started over

    def recommendations(self) -> list[tuple[Click, Recommendation]]:
        return [(click, Recommendation.from_dict(orjson.loads(v))) for click, v in self.answers]


def recommendation_dict(
    click: Click, scored: list[dict[str, Any]], version: str, produced_at: int
) -> dict[str, Any]:
    """The same dict as `Recommendation(...).to_dict()` (a test holds them equal)."""
    return {
        "schema_version": SCHEMA_VERSION,
        "session_id": click.event.session_id,
        "click": {
            "partition": click.partition,
            "offset": click.offset,
            "timestamp": click.event.timestamp,
            "event_id": None,
        },
        "items": scored,
        "model_version": version,
        "produced_at": produced_at,
    }


def decode_message(raw: bytes | None, key: bytes | None, config: CoreConfig) -> ClickEvent:
    """Raw message -> ClickEvent, or ValidationError with a one-line reason."""
    event = decode_click(raw, limits=config.limits)
    if config.require_session_key and key != event.session_id.encode():
        shown = "none" if key is None else repr(key[:40])
        raise ValidationError("key", f"message key {shown} is not the session id")
    return event


def _now_ms() -> int:
    return int(time.time() * 1000)


def answer_batch(
    model: ServingModel,
    clicks: Sequence[Click],
    stored: Mapping[str, SessionState | None],
    config: CoreConfig,
    now_ms: int | None = None,
) -> BatchResult:
    """Answer every click of a micro-batch, in order, and return the new session states.

    `stored` holds each session as read from the table before the batch (None if absent).
    """
    now = _now_ms() if now_ms is None else now_ms
    result = BatchResult()
    work: dict[str, SessionState] = {}
    before: dict[str, tuple[list[str], np.ndarray | None, str | None]] = {}
    # Clicks with their session's seen items (internal indices) right after the click, and
    # redelivered clicks with the items up to that click.
    accepted: list[tuple[Click, list[int]]] = []
    replays: list[tuple[Click, list[int]]] = []
    resends: list[tuple[Click, bytes]] = []

    for click in clicks:
        sid = click.event.session_id
        session = work.get(sid)
        if session is None:
            session = stored.get(sid)
            if session is not None and (
                click.event.timestamp - session.last_event_ms > config.session_ttl_ms
                or session.partition != click.partition
            ):
                session = None
                result.restarted += 1
            if session is None:
                session = SessionState(partition=click.partition)
            work[sid] = session
            before[sid] = (list(session.items), session.hidden, session.model_version)
            if session.seen is None or session.seen_version != model.version:
                session.seen = model.index_of(session.items).tolist()
                session.seen_version = model.version

        if click.offset <= session.last_offset:
            result.redelivered += 1
            last = session.last_recommendation  # parsed: only a redelivered click gets here
            if last is not None and (last.get("click") or {}).get("offset") == click.offset:
                resends.append((click, session.last_answer))
            elif click.offset in session.offsets:
                upto = session.offsets.index(click.offset) + 1
                replays.append((click, session.seen[:upto]))
            else:
                result.not_reanswered += 1
            continue
        if click.event.timestamp < session.last_event_ms:
            result.rejected.append(
                (
                    click,
                    f"timestamp: {click.event.timestamp} is older than the session's last "
                    f"event {session.last_event_ms} (out of order)",
                )
            )
            continue
        session.items.append(click.event.item_id)
        session.seen.append(model.index_one(click.event.item_id))
        session.offsets.append(click.offset)
        if len(session.items) > config.history_len:
            del session.items[: -config.history_len]
            del session.seen[: -config.history_len]
            del session.offsets[: -config.history_len]
        session.last_event_ms = click.event.timestamp
        session.touched_ms = now
        session.count += 1
        accepted.append((click, list(session.seen)))

    states = _advance(model, accepted, before, result)
    replay_states = model.run([h for _, h in replays]) if replays else None
    rows = accepted + replays
    if rows:
        all_states = states if replay_states is None else np.concatenate([states, replay_states])
        exclude = pad_ragged([h for _, h in rows], len(rows)) if config.exclude_seen else None
        pick = model.recommend_exhaustive if config.exhaustive else model.recommend
        top, top_scores = pick(all_states, config.k, exclude)
        produced = _now_ms() if now_ms is None else now_ms
        names, version = model.items, model.version
        for row, (click, _) in enumerate(rows):
            scored = [
                {"item_id": names[i], "score": s}
                for i, s in zip(top[row].tolist(), top_scores[row].tolist(), strict=True)
                if i >= 0
            ]
            value = orjson.dumps(recommendation_dict(click, scored, version, produced))
            result.answers.append((click, value))
            if row < len(accepted):
                session = work[click.event.session_id]
                # A copy: a view would keep the whole batch's states alive as long as the
                # session is cached (stream_app/session_cache.py).
                session.hidden = states[row].copy()
                session.model_version = version
                session.last_answer = value
                result.sessions[click.event.session_id] = session
    for click, last in resends:
        result.answers.append((click, last))
    return result


def _advance(
    model: ServingModel,
    accepted: list[tuple[Click, list[int]]],
    before: dict[str, tuple[list[str], np.ndarray | None, str | None]],
    result: BatchResult,
) -> np.ndarray:
    """The GRU state right after each accepted click, (N, L, H_max), in `accepted` order.

    Sessions are stepped together; a session with several clicks in the batch takes one
    step per "wave" (its 1st click in wave 0, its 2nd in wave 1, ...).
    """
    n_layers, hidden_max = len(model.layers), model.hidden_max
    sessions: dict[str, int] = {}
    seen: dict[int, int] = {}
    wave_of = np.empty(len(accepted), dtype=np.int64)
    row_of = np.empty(len(accepted), dtype=np.int64)
    for j, (click, _) in enumerate(accepted):
        row = sessions.setdefault(click.event.session_id, len(sessions))
        row_of[j] = row
        wave_of[j] = seen.get(row, 0)
        seen[row] = wave_of[j] + 1
    current = model.initial_state(len(sessions))
    stale: list[tuple[int, list[str]]] = []
    for sid, row in sessions.items():
        items, hidden, version = before[sid]
        fresh = version == model.version and hidden is not None
        if fresh and hidden.shape == (n_layers, hidden_max):
            current[row] = hidden
        elif items:
            stale.append((row, items))
    if stale:
        rebuilt = model.run([model.index_of(items) for _, items in stale])
        current[[row for row, _ in stale]] = rebuilt
        result.recomputed += len(stale)

    items = np.fromiter((seen[-1] for _, seen in accepted), np.int64, len(accepted))
    out = np.empty((len(accepted), n_layers, hidden_max), dtype=np.float32)
    for wave in range(int(wave_of.max(initial=-1)) + 1):
        picked = np.flatnonzero(wave_of == wave)  # at most one click per session
        rows = row_of[picked]
        current[rows] = model.step(current[rows], items[picked])
        out[picked] = current[rows]
    return out
