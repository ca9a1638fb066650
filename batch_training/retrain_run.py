"""One retraining run: read the window, train a candidate, gate it, promote and publish it.

The steps are described in `batch_training.retrain`, the command that schedules runs.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field, replace
from typing import Any

from batch_training.archive import TopicEvents, aread_topic_events
from batch_training.config import TrainConfig, apply_overrides, load_preset
from batch_training.gate import (
    NO_DECISION,
    PINNED,
    PRIMARY_METRIC,
    PROMOTED,
    GateOptions,
    RetrainError,
    RunReport,
    SessionMetrics,
    decide,
    explain,
    held_out_sessions,
    iso,
    score_sessions,
)
from batch_training.pipeline import PipelineOptions, TrainingPipeline
from batch_training.publish import publish_artifact
from batch_training.splits import split_from_events
from kafka_io.cli import (
    KAFKA_FAILURES,
    failure_text,
    run_kafka,
)
from kafka_io.settings import KafkaSettings
from schemas.artifact import ArtifactError
from schemas.durations import format_duration
from schemas.events import DAY_MS
from schemas.registry import Registry
from schemas.topics import CLICKS, MODEL_UPDATES
from scoring import ServingModel

log = logging.getLogger(__name__)

SUPERSEDED = "superseded: not promoted"


# --- one run -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class RetrainOptions:
    topic: str = CLICKS.name
    kafka: KafkaSettings = field(default_factory=KafkaSettings)  # masks its passwords in repr
    window_ms: int = 30 * 86_400_000
    holdout_ms: int = 86_400_000
    until: int | str = "now"  # epoch ms, "now" or "latest" (newest click in the topic)
    registry: str = "models"
    preset: str | None = None
    overrides: tuple[str, ...] = ()  # key=value changes to the preset
    tolerance: float = 0.01  # absolute, in units of PRIMARY_METRIC
    primary: str = PRIMARY_METRIC
    gate: GateOptions = field(default_factory=GateOptions)  # its primary/tolerance win
    lock_timeout_ms: int = 6 * 3_600_000
    device: str = "auto"
    publish: bool = True
    updates_topic: str = MODEL_UPDATES.name
    artifact_uri_prefix: str | None = None  # registry root as the workers see it
    model_key: bytes | None = field(default=None, repr=False)  # HMAC key; never printed
    progress: bool = True
    split_options: dict[str, Any] = field(default_factory=dict)


def _now_ms() -> int:
    return int(time.time() * 1000)


def _read_archive(options: RetrainOptions, **bounds: int) -> TopicEvents:
    """The window's clicks; KafkaSetupError (one line) when the topic cannot be read."""
    return run_kafka(
        aread_topic_events(options.kafka, options.topic, progress=options.progress, **bounds),
        options.kafka,
    )


def _gate_options(options: RetrainOptions) -> GateOptions:
    return replace(options.gate, primary=options.primary, tolerance=options.tolerance)


def _score_version(registry: Registry, version: str, held: list[tuple[str, ...]]) -> SessionMetrics:
    # As a worker loads it: the serving core with its default search index.
    return score_sessions(ServingModel.from_artifact(registry.load(version)), held)


def run_locked(options: RetrainOptions) -> RunReport:
    started = time.perf_counter()
    gate = _gate_options(options)
    registry = Registry(options.registry)
    # Fail early on a broken registry rather than after an hour of training.
    served = registry.promoted()
    if served is not None:
        registry.load(served)

    if options.until == "latest":
        all_events = _read_archive(options)
        if not all_events:
            raise RetrainError(f"topic {options.topic!r} holds no valid clicks")
        end_ms = max(e.timestamp for e in all_events) + 1
        start_ms = end_ms - options.window_ms
        events = [e for e in all_events if e.timestamp >= start_ms]
    else:
        end_ms = _now_ms() if options.until == "now" else int(options.until)
        start_ms = end_ms - options.window_ms
        events = _read_archive(options, start_ms=start_ms, end_ms=end_ms)
        # The read goes by the records' Kafka timestamps; the window is about click times
        # (the same unless a producer left the record timestamp unset).
        events = [e for e in events if start_ms <= e.timestamp < end_ms]
    if not events:
        raise RetrainError(
            f"no clicks in {options.topic!r} within [{iso(start_ms)}, {iso(end_ms)})"
        )
    split = split_from_events(
        events,
        name=f"{options.topic}@{iso(end_ms)}",
        test_days=options.holdout_ms / DAY_MS,
        n_negatives=0,  # the comparison uses the full-ranking protocol only
        **options.split_options,
    )
    held = held_out_sessions(events, options.holdout_ms)
    if split.test.sessions.n_sessions == 0 or not held:
        raise RetrainError(
            f"the held-out slice (last {format_duration(options.holdout_ms)}) holds no "
            "session with two known clicks; widen --holdout or --window"
        )
    config = load_preset(options.preset) if options.preset else TrainConfig()
    if options.overrides:
        config = apply_overrides(config, list(options.overrides))
    # The shared recipe (batch_training.pipeline); no validation: the held-out slice decides.
    pipeline = TrainingPipeline(
        split, config, PipelineOptions(device=options.device, progress=options.progress)
    )
    trained = pipeline.fit()
    split_metrics = trained.test.metrics["full"]  # the split's protocol (unseen dropped)

    # Every candidate is kept; it is exported first so that the gate scores the artifact a
    # worker would load, through the serving core, like the promoted models.
    name, path = registry.new_version_dir()
    training_data = {
        "topic": options.topic,
        "first_timestamp": start_ms,
        "last_timestamp": end_ms,
        "holdout_from": max(e.timestamp for e in events) - options.holdout_ms,
        "n_events": len(events),
        "n_train_sessions": split.train.n_sessions,
        "n_holdout_sessions": len(held),
    }
    pipeline.export(
        trained, path, version=name, training_data=training_data,
        metrics={"holdout": split_metrics},
    )  # fmt: skip
    candidate = _score_version(registry, name, held)
    scored: dict[str, SessionMetrics] = {}
    if served is not None and candidate.n_sessions >= gate.min_sessions:
        wanted = [*registry.promoted_history()[-gate.compare_last :], served]
        for version in dict.fromkeys(wanted):
            if version != name:
                scored[version] = _score_version(registry, version, held)
    history = [(v, scored[v]) for v in registry.promoted_history()[-gate.compare_last :]]
    result = decide(
        candidate, None if served not in scored else (served, scored[served]), history, gate
    )
    if served is not None and served not in scored and result.decision != NO_DECISION:
        raise RetrainError(f"promoted model {served} was not scored")  # cannot happen
    baseline_metrics = scored[served].totals() if served in scored else None
    details = {
        "baseline": served,
        "baseline_metrics": baseline_metrics,
        "primary": gate.primary,
        "tolerance": gate.tolerance,
        "gate": gate.to_dict(),
        **result.details(),
        "split_metrics": split_metrics,
        "window": [start_ms, end_ms],
        "n_events": len(events),
    }
    decision, reason, published = result.decision, result.reason, False
    # Promote and publish as one step, re-reading the registry under the promotion lock:
    # an operator's pin or rollback made during training wins over this run.
    with registry.promotion_lock():
        if decision == PROMOTED:
            pinned, now_served = registry.pinned(), registry.promoted()
            if pinned is not None:
                decision = PINNED
                reason = f"{pinned} is pinned by an operator (`publish --unpin` lifts it)"
            elif now_served != served:
                decision = SUPERSEDED
                reason = f"the promoted model changed during the run ({served} -> {now_served})"
        if decision == PROMOTED:
            # Promoted before it is announced: a worker with --registry checks the registry
            # when the announcement arrives and refuses a version not (yet) promoted.
            registry.promote(name, result.reason)
            if options.publish:
                published = _publish(options, registry, name, path, candidate.totals(), details)
        registry.record(name, candidate.totals(), decision, **{**details, "reason": reason})
    if decision == PINNED:
        log.warning("%s passed the gate but was not promoted: %s", name, reason)
    return RunReport(
        candidate=name,
        decision=decision,
        reason=reason,
        metrics=candidate.totals(),
        baseline=served,
        baseline_metrics=baseline_metrics,
        n_events=len(events),
        start_ms=start_ms,
        end_ms=end_ms,
        seconds=time.perf_counter() - started,
        published=published,
    )


def _publish(
    options: RetrainOptions,
    registry: Registry,
    name: str,
    path: Any,
    metrics: dict[str, float],
    details: dict[str, Any],
) -> bool:
    uri = None
    if options.artifact_uri_prefix:
        uri = f"{options.artifact_uri_prefix.rstrip('/')}/{name}"
    try:
        asyncio.run(
            publish_artifact(
                options.kafka, path, topic=options.updates_topic, uri=uri, key=options.model_key
            )
        )
    except Exception as exc:
        kafka = isinstance(exc, KAFKA_FAILURES)
        reason = failure_text(exc, options.kafka) if kafka else str(exc)
        registry.record(name, metrics, "publish-failed", **details, error=reason)
        raise RetrainError(f"{name} passed but publishing it failed: {reason}") from exc
    return True


def explain_version(registry: Registry, version: str) -> str:
    """The gate's recorded decision on `version`, readable; ArtifactError if none."""
    entries = [d for d in registry.decisions() if d.event == "candidate" and d.version == version]
    if not entries:
        raise ArtifactError(f"{version}: no gate decision in {registry.root}/decisions.jsonl")
    return explain(entries[-1].to_dict())
