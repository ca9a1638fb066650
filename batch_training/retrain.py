"""Scheduled retraining: train on the archive, compare with the served model, promote or not.

`gru4stream retrain --topic clicks --window 30d [--every 6h] [--registry ROOT] [--preset NAME]
[--tolerance 0.01] [--holdout 1d] [--until T] [--kafka-config FILE] [--bootstrap HOST:PORT]`

One run:
1. reads the clicks of the window [until - window, until) from the archive topic
   (`until` defaults to now; `latest` means the newest click in the topic);
2. splits them by time (`batch_training.splits.split_from_events`, its session-log
   preprocessing included): sessions starting within `holdout` of the newest click are the
   held-out slice, the sessions before are training data (the vocabulary is their items);
3. trains GRU4Rec (the preset, or the defaults; CUDA when present);
4. evaluates the candidate and the promoted model (mapped onto the candidate's vocabulary)
   on the same held-out slice (`batch_training.gate`). Held-out clicks on items the candidate
   never saw in training are dropped by the split, for both models alike;
5. promotes the candidate when its primary metric (recall@20) is not worse than the promoted
   model's by more than `tolerance`, an ABSOLUTE difference (`batch_training.gate.decide`);
6. keeps every candidate in the registry (immutable, for inspection and rollback), records
   each decision in the registry's log, and announces a promoted one on `model-updates`
   (promoted first: workers with `--registry` load only promoted versions; signed with
   `--model-key-file` when given).

Without `--every` it runs once and exits (cron, a Kubernetes CronJob): 0 after a run that
promoted or kept the model, 1 when the run failed (no data, broker, artifact), 2 on usage
errors. With `--every` it runs at that period until SIGTERM/SIGINT, which end the loop
after the run in progress (a killed run leaves no partial version: artifacts are written
atomically); a failed run is reported and retried at the next period. Each run prints one
summary line.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from batch_training.archive import TopicEvents, aread_topic_events
from batch_training.config import TrainConfig, apply_overrides, load_preset
from batch_training.evaluate import evaluate_full
from batch_training.gate import (
    PRIMARY_METRIC,
    MappedArtifactScorer,
    RetrainError,
    RunReport,
    decide,
    iso,
)
from batch_training.pipeline import PipelineOptions, TrainingPipeline
from batch_training.publish import publish_artifact
from batch_training.splits import split_from_events
from kafka_io.cli import (
    KAFKA_FAILURES,
    add_kafka_arguments,
    failure_text,
    report_failure,
    run_kafka,
    settings_from_args,
)
from kafka_io.errors import KafkaSetupError, check_connection
from kafka_io.settings import KafkaConfigError, KafkaSettings
from schemas.artifact import ArtifactError
from schemas.durations import format_duration, parse_duration_ms
from schemas.events import DAY_MS, ValidationError, parse_timestamp
from schemas.registry import Registry
from schemas.signing import KeyFileError, read_key_file
from schemas.topics import CLICKS, MODEL_UPDATES

log = logging.getLogger(__name__)

DEFAULT_REGISTRY_ENV = "GRU4STREAM_MODELS"
PROG = "gru4stream retrain"


# --- durations and times ---------------------------------------------------------------------


def parse_duration(text: str) -> int:
    """'30d', '6h', '15m', '90s', '500ms', '2w', '1.5h' -> milliseconds (a unit is required)."""
    ms = int(parse_duration_ms(text))
    if ms < 1:
        raise ValueError(f"{text!r}: a duration must be at least 1ms")
    return ms


def _duration_arg(text: str) -> int:
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _until_arg(text: str) -> int | str:
    if text in ("now", "latest"):
        return text
    value: Any = int(text) if text.lstrip("-").isdigit() else text
    try:
        return parse_timestamp(value)
    except ValidationError as exc:
        raise argparse.ArgumentTypeError(f"{text!r}: {exc.reason}") from None


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


def run_once(options: RetrainOptions) -> RunReport:
    """One retraining run (see the module doc); raises RetrainError / ArtifactError."""
    started = time.perf_counter()
    registry = Registry(options.registry)
    # Fail early on a broken registry rather than after an hour of training.
    served = registry.promoted()
    served_artifact = registry.load(served) if served is not None else None

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
    if split.test.sessions.n_sessions == 0:
        raise RetrainError(
            f"the held-out slice (last {format_duration(options.holdout_ms)}) holds no "
            "session with two known clicks; widen --holdout or --window"
        )
    config = load_preset(options.preset) if options.preset else TrainConfig()
    if options.overrides:
        config = apply_overrides(config, list(options.overrides))
    # The shared recipe (batch_training.pipeline), in steps: the gate below sits between
    # evaluating the candidate and exporting it. No validation: the held-out slice decides.
    pipeline = TrainingPipeline(
        split, config, PipelineOptions(device=options.device, progress=options.progress)
    )
    trained = pipeline.fit()
    metrics = trained.test.metrics["full"]

    baseline_metrics = None
    if served_artifact is not None:
        scorer = MappedArtifactScorer(served_artifact, split.vocab.ids)
        baseline_metrics = evaluate_full(scorer, split.test, progress=options.progress)
    decision = decide(
        metrics, baseline_metrics, primary=options.primary, tolerance=options.tolerance
    )

    name, path = registry.new_version_dir()
    training_data = {
        "topic": options.topic,
        "first_timestamp": start_ms,
        "last_timestamp": end_ms,
        "holdout_from": max(e.timestamp for e in events) - options.holdout_ms,
        "n_events": len(events),
        "n_train_sessions": split.train.n_sessions,
        "n_holdout_sessions": split.test.sessions.n_sessions,
    }
    pipeline.export(
        trained, path, version=name, training_data=training_data, metrics={"holdout": metrics}
    )
    details = {
        "baseline": served,
        "baseline_metrics": baseline_metrics,
        "primary": options.primary,
        "tolerance": options.tolerance,
        "window": [start_ms, end_ms],
        "n_events": len(events),
    }
    published = False
    if decision == "promoted":
        # Promoted before it is announced: a worker with --registry checks the registry
        # when the announcement arrives and refuses a version not (yet) promoted.
        registry.promote(name, f"{options.primary} within tolerance of {served or 'nothing'}")
        if options.publish:
            uri = None
            if options.artifact_uri_prefix:
                uri = f"{options.artifact_uri_prefix.rstrip('/')}/{name}"
            try:
                asyncio.run(
                    publish_artifact(
                        options.kafka,
                        path,
                        topic=options.updates_topic,
                        uri=uri,
                        key=options.model_key,
                    )
                )
            except Exception as exc:
                kafka = isinstance(exc, KAFKA_FAILURES)
                reason = failure_text(exc, options.kafka) if kafka else str(exc)
                registry.record(name, metrics, "publish-failed", **details, error=reason)
                raise RetrainError(f"{name} passed but publishing it failed: {reason}") from exc
            published = True
    registry.record(name, metrics, decision, **details)
    return RunReport(
        candidate=name,
        decision=decision,
        metrics=metrics,
        baseline=served,
        baseline_metrics=baseline_metrics,
        n_events=len(events),
        start_ms=start_ms,
        end_ms=end_ms,
        seconds=time.perf_counter() - started,
        published=published,
    )


# --- command line ------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gru4stream retrain",
        description="retrain GRU4Rec from the archive topic; promote only if not worse",
    )
    parser.add_argument("--topic", default=CLICKS.name, help="archive topic (default clicks)")
    parser.add_argument(
        "--window", type=_duration_arg, default="30d", help="training window, e.g. 30d"
    )
    parser.add_argument(
        "--every", type=_duration_arg, help="repeat at this period (e.g. 6h); default: run once"
    )
    parser.add_argument(
        "--holdout",
        type=_duration_arg,
        default="1d",
        help="most recent part of the window held out for the comparison (default 1d)",
    )
    parser.add_argument(
        "--until",
        type=_until_arg,
        default="now",
        help="end of the window: epoch ms, ISO 8601, 'now' (default) or 'latest' (newest click)",
    )
    parser.add_argument(
        "--registry",
        default=os.environ.get(DEFAULT_REGISTRY_ENV, "models"),
        help=f"model registry root (default ${DEFAULT_REGISTRY_ENV} or ./models)",
    )
    parser.add_argument("--preset", help="training preset (batch_training/presets/NAME.json)")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one training hyperparameter (repeatable)",
    )
    parser.add_argument(
        "--tolerance",
        type=float,
        default=0.01,
        help=f"promote if {PRIMARY_METRIC} >= promoted's - tolerance (absolute; default 0.01)",
    )
    parser.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda")
    parser.add_argument(
        "--updates-topic", default=MODEL_UPDATES.name, help="where promoted versions go"
    )
    parser.add_argument(
        "--artifact-uri-prefix",
        help="the registry root as the workers see it, when it differs from --registry",
    )
    parser.add_argument(
        "--no-publish", action="store_true", help="promote in the registry only, announce nothing"
    )
    parser.add_argument(
        "--model-key-file",
        help="sign announcements with the HMAC key in this file (workers given it require it)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    add_kafka_arguments(parser)
    return parser


def options_from_args(args: argparse.Namespace) -> RetrainOptions:
    """The run's options; KeyFileError for an unusable --model-key-file, KafkaConfigError for
    wrong Kafka settings."""
    key = read_key_file(args.model_key_file) if args.model_key_file else None
    return RetrainOptions(
        topic=args.topic,
        kafka=settings_from_args(args),
        window_ms=args.window,
        holdout_ms=args.holdout,
        until=args.until,
        registry=args.registry,
        preset=args.preset,
        overrides=tuple(args.overrides),
        tolerance=args.tolerance,
        device=args.device,
        publish=not args.no_publish,
        updates_topic=args.updates_topic,
        artifact_uri_prefix=args.artifact_uri_prefix,
        model_key=key,
        progress=not args.no_progress,
    )


def _run_and_report(options: RetrainOptions) -> int:
    try:
        # Before reading or training: a wrong CA file or password is named at once.
        run_kafka(check_connection(options.kafka), options.kafka)
        report = run_once(options)
    except KafkaSetupError as exc:
        return report_failure(PROG, exc)
    except (RetrainError, ArtifactError, ValueError) as exc:
        print(f"retrain failed: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:  # broker or training failures end this run with the reason
        log.exception("retrain run failed")
        print(f"retrain failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    print(report.summary(options.primary, options.tolerance), flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.tolerance < 0:
        parser.error("--tolerance must be >= 0")
    try:
        options = options_from_args(args)
    except KeyFileError as exc:
        parser.error(str(exc))
    except KafkaConfigError as exc:
        return report_failure(PROG, exc)
    if options.holdout_ms >= options.window_ms:
        parser.error("--holdout must be shorter than --window")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.every is None:
        return _run_and_report(options)

    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    period_s = args.every / 1000
    while not stop.is_set():
        began = time.monotonic()
        _run_and_report(options)
        wait = max(period_s - (time.monotonic() - began), 0.0)
        if wait:
            log.info("next run in %s", format_duration(int(wait * 1000)))
        stop.wait(wait)
    return 0


if __name__ == "__main__":
    sys.exit(main())
