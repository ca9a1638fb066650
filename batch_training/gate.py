"""The retraining gate: both models scored as workers serve them, a paired bootstrap over
held-out sessions, the promotion rule, and one run's report.

Scoring (`score_sessions`): the candidate and the promoted model(s) are each loaded from
their artifact into the serving core (`scoring.ServingModel`, with the search index a worker
builds: exact up to `exact_max_items`, HNSW above) and replay the RAW held-out sessions
(`held_out_sessions`: not filtered by the candidate's vocabulary). At every position the
model's top-20 comes from `ServingModel.recommend` with the session's items excluded (the
worker's `exclude_seen`) and the popularity fallback for a session with no known item yet.
A target the model does not know, or one already in the session, can never be served: a
miss. So items new since training cost the candidate and the incumbent alike.

Decision (`decide`): per-session sums of hits@20 and reciprocal ranks@20 give recall@20 and
MRR@20 (sum over sessions / number of targets). For each reference (the promoted model and,
against drift, the best promoted one of the last N on the same slice) a paired bootstrap
over sessions (fixed seed) gives a one-sided lower confidence bound of candidate - reference
on both metrics; the candidate is promoted when every bound is >= -tolerance (absolute).
Too few held-out sessions: "no decision".
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np

from schemas.events import ClickEvent
from scoring import ServingModel

PRIMARY_METRIC = "recall@20"
METRICS = ("recall@20", "mrr@20")
CUTOFF = 20
PROMOTED = "promoted"
REJECTED = "rejected"
NO_DECISION = "no decision"
PINNED = "pinned: not promoted"


class RetrainError(RuntimeError):
    """A run that cannot go on (no data, nothing to evaluate on); the message says why."""


def iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="seconds")


# --- the held-out slice, scored as served --------------------------------------------------


def held_out_sessions(events: Iterable[ClickEvent], holdout_ms: int) -> list[tuple[str, ...]]:
    """Sessions starting within `holdout_ms` of the newest click, as item-id tuples in click
    order, immediate repeats dropped (as in training), at least two clicks; nothing is
    removed for being unknown to a model.

    The cutoff is taken from the raw newest click, which is never earlier than the split's
    (its preprocessing can only remove clicks), so no held-out session was trained on.
    """
    by_session: dict[str, list[ClickEvent]] = {}
    for e in events:
        by_session.setdefault(e.session_id, []).append(e)
    if not by_session:
        return []
    cutoff = max(e.timestamp for s in by_session.values() for e in s) - holdout_ms
    out = []
    for clicks in by_session.values():
        clicks.sort(key=lambda e: e.timestamp)
        if clicks[0].timestamp < cutoff:
            continue
        items = [clicks[0].item_id]
        for e in clicks[1:]:
            if e.item_id != items[-1]:
                items.append(e.item_id)
        if len(items) >= 2:
            out.append(tuple(items))
    out.sort()  # a fixed order: the bootstrap's resamples depend on it
    return out


@dataclass(frozen=True)
class SessionMetrics:
    """Per held-out session: targets, hits@20 and reciprocal ranks@20 (summed)."""

    targets: np.ndarray  # (S,) int
    hits: np.ndarray  # (S,) float
    rr: np.ndarray  # (S,) float

    @property
    def n_sessions(self) -> int:
        return len(self.targets)

    def sums(self, metric: str) -> np.ndarray:
        if metric == "recall@20":
            return self.hits
        if metric == "mrr@20":
            return self.rr
        raise RetrainError(f"unknown gate metric {metric!r}; known: {', '.join(METRICS)}")

    def totals(self) -> dict[str, float]:
        n = max(int(self.targets.sum()), 1)
        return {m: float(self.sums(m).sum() / n) for m in METRICS}


def score_sessions(
    model: ServingModel,
    sessions: Sequence[Sequence[str]],
    *,
    exclude_seen: bool = True,
    batch_size: int = 256,
) -> SessionMetrics:
    """Replay each session through the serving core; at every next click, was it in the
    model's served top-20 (and at which rank)? See the module doc for the rules."""
    n = len(sessions)
    targets = np.array([len(s) - 1 for s in sessions], dtype=np.int64)
    hits = np.zeros(n)
    rr = np.zeros(n)
    for start in range(0, n, batch_size):
        chunk = [model.index_of(s) for s in sessions[start : start + batch_size]]
        state = model.initial_state(len(chunk))
        for t in range(max(len(ix) for ix in chunk) - 1):
            feed = np.array([ix[t] if t < len(ix) else -1 for ix in chunk], dtype=np.int64)
            state = model.step(state, feed)  # -1 (unknown, or past the end) keeps the state
            rows = [r for r, ix in enumerate(chunk) if t + 1 < len(ix)]
            exclude = [chunk[r][: t + 1] for r in rows] if exclude_seen else None
            top, _ = model.recommend(state[rows], CUTOFF, exclude)
            for j, r in enumerate(rows):
                target = chunk[r][t + 1]
                where = np.flatnonzero(top[j] == target) if target >= 0 else ()
                if len(where):
                    hits[start + r] += 1.0
                    rr[start + r] += 1.0 / (int(where[0]) + 1)
    return SessionMetrics(targets, hits, rr)


@dataclass(frozen=True)
class RunReport:
    candidate: str
    decision: str  # PROMOTED, REJECTED, NO_DECISION, PINNED or "superseded: not promoted"
    reason: str
    metrics: dict[str, float]
    baseline: str | None
    baseline_metrics: dict[str, float] | None
    n_events: int
    start_ms: int
    end_ms: int
    seconds: float
    published: bool

    def summary(self, primary: str, tolerance: float) -> str:
        cand = self.metrics.get(primary, float("nan"))
        if self.baseline is None:
            versus = "no promoted model yet"
        else:
            base = (self.baseline_metrics or {}).get(primary, float("nan"))
            versus = f"{self.baseline} {base:.4f} (tolerance {tolerance:g})"
        where = " and published" if self.published else ""
        return (
            f"retrain {self.candidate}: {primary} {cand:.4f} vs {versus} -> "
            f"{self.decision}{where}; {self.reason}; {self.n_events} clicks "
            f"[{iso(self.start_ms)}, {iso(self.end_ms)}), {self.seconds:.0f} s"
        )


# --- the decision --------------------------------------------------------------------------


@dataclass(frozen=True)
class GateOptions:
    primary: str = PRIMARY_METRIC  # the guard is the other one of METRICS
    tolerance: float = 0.01  # absolute, in units of each metric
    confidence: float = 0.95  # one-sided, for the lower bound of candidate - reference
    bootstrap_samples: int = 1000
    min_sessions: int = 100
    compare_last: int = 3  # the best of the last N promoted versions is a reference too
    seed: int = 0

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class Comparison:
    reference: str
    role: str  # "promoted" and/or "best of last N"
    metric: str
    candidate: float
    baseline: float
    diff: float
    lower: float  # one-sided lower confidence bound of candidate - reference
    upper: float  # the matching upper bound (two-sided interval at 2*confidence-1)
    passed: bool

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class GateDecision:
    decision: str  # PROMOTED, REJECTED or NO_DECISION
    reason: str
    n_sessions: int
    n_targets: int
    metrics: dict[str, float]
    comparisons: list[Comparison] = field(default_factory=list)

    def details(self) -> dict[str, Any]:
        return {
            "reason": self.reason,
            "n_sessions": self.n_sessions,
            "n_targets": self.n_targets,
            "comparisons": [c.to_dict() for c in self.comparisons],
        }


def paired_bootstrap(
    cand: SessionMetrics, ref: SessionMetrics, metric: str, options: GateOptions
) -> tuple[float, float, float]:
    """(diff, lower, upper) of metric(candidate) - metric(reference), resampling sessions
    with replacement (both models on the same resampled sessions: paired)."""
    rng = np.random.default_rng(options.seed)
    n = cand.n_sessions
    weights = rng.multinomial(n, np.full(n, 1.0 / n), size=options.bootstrap_samples)
    denom = np.maximum(weights @ cand.targets, 1).astype(np.float64)
    diffs = (weights @ cand.sums(metric) - weights @ ref.sums(metric)) / denom
    alpha = 1.0 - options.confidence
    lower, upper = np.quantile(diffs, [alpha, 1.0 - alpha])
    n_t = max(int(cand.targets.sum()), 1)
    diff = float((cand.sums(metric).sum() - ref.sums(metric).sum()) / n_t)
    return diff, float(lower), float(upper)


def decide(
    candidate: SessionMetrics,
    promoted: tuple[str, SessionMetrics] | None,
    history: Sequence[tuple[str, SessionMetrics]] = (),
    options: GateOptions = GateOptions(),  # noqa: B008 - frozen, never mutated
) -> GateDecision:
    """The promotion rule (module doc). `promoted`: the served version and its scores on the
    same slice; `history`: the last promoted versions (newest last), scored alike."""
    if options.primary not in METRICS:
        raise RetrainError(f"unknown gate metric {options.primary!r}; known: {', '.join(METRICS)}")
    metrics = candidate.totals()
    n_s, n_t = candidate.n_sessions, int(candidate.targets.sum())
    if n_s < options.min_sessions:
        why = f"{n_s} held-out sessions < --min-sessions {options.min_sessions}"
        return GateDecision(NO_DECISION, why, n_s, n_t, metrics)
    if promoted is None:
        return GateDecision(PROMOTED, "no promoted model yet", n_s, n_t, metrics)
    references = {promoted[0]: ["promoted"]}
    scored = dict([*history[-options.compare_last :], promoted] if options.compare_last else [])
    scored[promoted[0]] = promoted[1]
    if options.compare_last:
        best = max(
            history[-options.compare_last :] or [promoted],
            key=lambda vm: vm[1].totals()[options.primary],
        )
        references.setdefault(best[0], []).append(f"best of last {options.compare_last}")
    guard = [m for m in METRICS if m != options.primary]
    comparisons = []
    for version, roles in references.items():
        for metric in (options.primary, *guard):
            diff, lower, upper = paired_bootstrap(candidate, scored[version], metric, options)
            comparisons.append(
                Comparison(
                    version, " and ".join(roles), metric, metrics[metric],
                    scored[version].totals()[metric], diff, lower, upper,
                    lower >= -options.tolerance,
                )
            )  # fmt: skip
    failed = [c for c in comparisons if not c.passed]
    if failed:
        c = failed[0]
        why = (
            f"{c.metric} may be worse than {c.reference} ({c.role}): lower bound "
            f"{c.lower:+.4f} < -{options.tolerance:g}"
        )
        return GateDecision(REJECTED, why, n_s, n_t, metrics, comparisons)
    why = f"not worse than {', '.join(references)} at {options.confidence:g} confidence"
    return GateDecision(PROMOTED, why, n_s, n_t, metrics, comparisons)


def explain(entry: dict[str, Any]) -> str:
    """A decision-log line of a candidate, for people (`retrain --explain VERSION`)."""
    d = entry.get("details", {})
    gate = d.get("gate", {})
    lines = [
        f"{entry['version']}: {entry['decision']} at {iso(int(entry['at']))}",
        f"  reason: {d.get('reason', '-')}",
    ]
    if "window" in d:
        lines.append(
            f"  window: [{iso(d['window'][0])}, {iso(d['window'][1])}), "
            f"{d.get('n_events', '?')} clicks; held out: {d.get('n_sessions', '?')} sessions, "
            f"{d.get('n_targets', '?')} targets"
        )
    if gate:
        lines.append(
            f"  rule: lower {gate.get('confidence')} bound of candidate - reference >= "
            f"-{gate.get('tolerance')} on {gate.get('primary')} (guard: the other metric); "
            f"paired bootstrap, {gate.get('bootstrap_samples')} resamples of sessions, "
            f"seed {gate.get('seed')}; min {gate.get('min_sessions')} sessions"
        )
    m = entry.get("metrics", {})
    lines.append("  candidate: " + ", ".join(f"{k} {m[k]:.4f}" for k in METRICS if k in m))
    for c in d.get("comparisons", []):
        mark = "ok  " if c["passed"] else "FAIL"
        lines.append(
            f"  {mark} vs {c['reference']} ({c['role']}) {c['metric']}: "
            f"{c['candidate']:.4f} vs {c['baseline']:.4f}, diff {c['diff']:+.4f} "
            f"[{c['lower']:+.4f}, {c['upper']:+.4f}]"
        )
    return "\n".join(lines)
