"""Offline replay: archived clicks through served models, next-click metrics.

Each model is a `ServingModel` (the worker's scoring path: the same GRU step, the same FAISS
top-K with the popularity fallback, the same handling of unknown items, which leave the
session state unchanged). For every click that has a next click in the same session, the
session's state after that click is asked for its top-K, and the next click is the target:
its position in the list is its rank (a target outside the list, or unknown to the model,
is a miss). Recall, MRR and NDCG at the cut-offs up to K follow `schemas.metrics`; because
only the served top-K is known, cut-offs above K cannot be reported. Catalogue coverage is
the fraction of a model's items that appear in at least one top-K list.

Events are read from every partition of the topic, validated with `schemas.events` (invalid
ones are counted and skipped, as the worker would send them to the dead-letter topic), and
kept when their event timestamp lies in [T0, T1). A session's clicks are taken in topic
order, which is the order the worker sees them (the session id is the key, so one session
lives in one partition). Sessions that began before T0 start from an empty state.

Worker rules kept here: the items among the session's last `--history` clicks (the worker's
default, 50) are not recommended again; `--no-exclude-seen` turns that off, which makes the
numbers comparable with the offline full-ranking evaluation, where every item competes. A
click older than its session's newest click is left out (the worker dead-letters it). Not
reproduced: the worker's session expiry, which runs on wall-clock time, not event time.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from tqdm import tqdm

from kafka_io.archive import read_range
from kafka_io.settings import KafkaSettings
from schemas.artifact import ArtifactError, read_artifact
from schemas.events import ClickEvent, ValidationError, decode_click
from schemas.metrics import MetricAccumulator
from schemas.registry import Registry, resolve_model
from scoring import ServingModel
from stream_app.core import CoreConfig

STANDARD_KS = (1, 5, 10, 20)
WORKER_DEFAULTS = CoreConfig()


# --- reading the archive -------------------------------------------------------------------


@dataclass
class ArchiveSlice:
    """The clicks of a time range, and what was skipped on the way."""

    events: list[ClickEvent]
    n_records: int = 0  # records read from the topic
    n_invalid: int = 0  # failed validation (the worker's dead letters)
    n_outside: int = 0  # valid, but outside [start, end)


async def read_clicks(
    kafka: KafkaSettings,
    topic: str,
    *,
    start_ms: int | None = None,
    end_ms: int | None = None,
    progress: bool = True,
) -> ArchiveSlice:
    """Every valid click of `topic` whose own timestamp is in [start_ms, end_ms), per
    partition in offset order; reads up to the end offsets seen when it starts."""
    records = (await read_range(kafka, topic, progress=progress)).records
    out = ArchiveSlice(events=[], n_records=len(records))
    for record in records:
        try:
            event = decode_click(record.value)
        except ValidationError:
            out.n_invalid += 1
            continue
        if (start_ms is not None and event.timestamp < start_ms) or (
            end_ms is not None and event.timestamp >= end_ms
        ):
            out.n_outside += 1
            continue
        out.events.append(event)
    return out


def group_sessions(
    events: Iterable[ClickEvent], out_of_order: list[ClickEvent] | None = None
) -> list[list[str]]:
    """Item sequences per session, in the given (topic) order; sessions by first appearance.

    A click older than its session's newest kept click is left out (the worker sends it to
    the dead-letter topic) and appended to `out_of_order` when given.
    """
    sessions: dict[str, list[str]] = {}
    newest: dict[str, int] = {}
    for event in events:
        sid = event.session_id
        if event.timestamp < newest.get(sid, event.timestamp):
            if out_of_order is not None:
                out_of_order.append(event)
            continue
        newest[sid] = event.timestamp
        sessions.setdefault(sid, []).append(event.item_id)
    return list(sessions.values())


# --- replaying one model -------------------------------------------------------------------


@dataclass
class ReplayResult:
    version: str
    source: str
    k: int
    metrics: dict[str, float]
    coverage: float  # fraction of the model's items recommended at least once
    n_examples: int  # clicks that had a next click
    n_unknown_targets: int  # next clicks on items the model does not know (always misses)
    n_unknown_inputs: int  # clicks on unknown items (the state is left unchanged)
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "source": self.source,
            "k": self.k,
            "metrics": self.metrics,
            "coverage": self.coverage,
            "n_examples": self.n_examples,
            "n_unknown_targets": self.n_unknown_targets,
            "n_unknown_inputs": self.n_unknown_inputs,
        }


def cutoffs(k: int) -> tuple[int, ...]:
    return tuple(sorted({c for c in STANDARD_KS if c < k} | {k}))


def replay_model(
    model: ServingModel,
    sessions: Sequence[Sequence[str]],
    *,
    k: int = 20,
    exclude_seen: bool = True,
    history: int = WORKER_DEFAULTS.history_len,
    batch_size: int = 256,
    source: str = "",
    progress: bool = True,
) -> ReplayResult:
    """Next-click metrics of one served model over whole sessions (see the module doc)."""
    if k < 1 or history < 1:
        raise ValueError(f"k and history must be positive, got {k}, {history}")
    acc = MetricAccumulator(cutoffs(k))
    recommended = np.zeros(model.n_items, dtype=bool)
    n_unknown_targets = n_unknown_inputs = 0
    # Long sessions together, so a batch's lanes end at similar steps.
    order = sorted(range(len(sessions)), key=lambda s: -len(sessions[s]))
    n_examples = sum(max(len(s) - 1, 0) for s in sessions)
    bar = tqdm(total=n_examples, desc=f"replay {model.version}", unit="ex", disable=not progress)
    for first in range(0, len(order), batch_size):
        chunk = [sessions[s] for s in order[first : first + batch_size]]
        lengths = np.array([len(s) for s in chunk], dtype=np.int64)
        items = np.full((len(chunk), int(lengths.max())), -1, dtype=np.int64)  # (b, T)
        for row, seq in enumerate(chunk):
            items[row, : len(seq)] = model.index_of(seq)
        in_session = np.arange(items.shape[1]) < lengths[:, None]  # (b, T)
        n_unknown_inputs += int(((items < 0) & in_session).sum())
        state = model.initial_state(len(chunk))
        for t in range(items.shape[1] - 1):
            rows = np.flatnonzero(lengths > t + 1)  # lanes with a next click
            state[rows] = model.step(state[rows], items[rows, t])
            # The session's last `history` items, as the worker keeps them; -1 (unknown or
            # padding) matches no item: (r, <= history).
            exclude = items[rows, max(t + 1 - history, 0) : t + 1] if exclude_seen else None
            top, _ = model.recommend(state[rows], k, exclude)  # (r, k)
            targets = items[rows, t + 1]
            hit = (top == targets[:, None]) & (targets[:, None] >= 0)
            ranks = np.where(hit.any(axis=1), hit.argmax(axis=1) + 1, k + 1)
            acc.add(ranks)
            n_unknown_targets += int((targets < 0).sum())
            recommended[top[top >= 0]] = True
            bar.update(rows.size)
    bar.close()
    metrics = acc.result()
    return ReplayResult(
        version=model.version,
        source=source,
        k=k,
        metrics=metrics,
        coverage=float(recommended.mean()),
        n_examples=int(metrics["n_examples"]),
        n_unknown_targets=n_unknown_targets,
        n_unknown_inputs=n_unknown_inputs,
    )


def load_models(specs: str, registry: Registry | None) -> list[tuple[str, ServingModel]]:
    """(source, model) for each comma-separated artifact directory, run directory or
    registry version."""
    out = []
    for spec in (s.strip() for s in specs.split(",")):
        if not spec:
            continue
        path = resolve_model(spec, registry)
        out.append((str(path), ServingModel.from_artifact(read_artifact(path))))
    if not out:
        raise ArtifactError("--model: no model given")
    return out
