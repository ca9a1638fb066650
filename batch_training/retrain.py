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
4. exports the candidate as the next registry version (every candidate is kept), then
   scores it and the promoted model(s) as workers serve them on the RAW held-out sessions
   (`batch_training.gate`: serving core, its search index, seen items excluded; a target a
   model does not know is a miss for it);
5. decides (`batch_training.gate.decide`): promoted when a paired bootstrap over sessions
   says, at `--confidence`, that the candidate is not worse than the promoted model, nor
   than the best of the last `--compare-last` promoted ones, by more than `--tolerance` on
   `--metric` and on the other metric; fewer than `--min-sessions` held-out sessions: "no
   decision". Every decision with its intervals goes to decisions.jsonl (`--explain V`);
6. under the registry's promotion lock, re-reads it: an operator's pin (or rollback, which
   pins) keeps the candidate out ("pinned: not promoted"); otherwise promotes it and
   announces it on `model-updates` (signed with `--model-key-file` when given).

Only one run at a time per registry: a run takes `ROOT/retrain.lock` first (stale after
`--lock-timeout` or when its process is gone) and a second one exits 3 at once.

Without `--every` it runs once and exits (cron, a Kubernetes CronJob): 0 after a run that
promoted or kept the model, 1 when the run failed (no data, broker, artifact), 2 on usage
errors, 3 when another run holds the lock. With `--every` it runs at that period until
SIGTERM/SIGINT, which end the loop after the run in progress (a killed run leaves no partial
version: artifacts are written atomically); a failed run is reported and retried at the
next period. Each run prints one summary line.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
import time

from batch_training.cli_args import add_overrides_argument
from batch_training.gate import (
    METRICS,
    PRIMARY_METRIC,
    GateOptions,
    RetrainError,
)
from batch_training.retrain_run import RetrainOptions, explain_version, run_locked
from kafka_io.cli import (
    add_kafka_arguments,
    report_failure,
    run_kafka,
    settings_from_args,
)
from kafka_io.errors import KafkaSetupError, check_connection
from kafka_io.settings import KafkaConfigError
from schemas.artifact import ArtifactError
from schemas.durations import format_duration, parse_duration_ms
from schemas.events import ValidationError, parse_time_text
from schemas.registry import LockHeld, Registry, RunLock
from schemas.signing import KeyFileError, read_key_file
from schemas.topics import CLICKS, MODEL_UPDATES

log = logging.getLogger(__name__)

DEFAULT_REGISTRY_ENV = "GRU4STREAM_MODELS"
PROG = "gru4stream retrain"
EXIT_LOCKED = 3  # another run holds the registry's retrain lock


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
    try:
        return parse_time_text(text)
    except ValidationError as exc:
        raise argparse.ArgumentTypeError(f"{text!r}: {exc.reason}") from None


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
    add_overrides_argument(
        parser,
        "override one training hyperparameter (repeatable)",
    )
    parser.add_argument(
        "--tolerance",
        type=float,
        default=0.01,
        help="promote if the lower confidence bound of candidate - reference is >= "
        "-tolerance on both metrics (absolute; default 0.01)",
    )
    parser.add_argument(
        "--metric",
        choices=METRICS,
        default=PRIMARY_METRIC,
        help=f"primary gate metric (default {PRIMARY_METRIC}); the other one is a guard",
    )
    parser.add_argument(
        "--confidence",
        type=float,
        default=0.95,
        help="one-sided confidence of the bound (default 0.95)",
    )
    parser.add_argument(
        "--bootstrap-samples",
        type=int,
        default=1000,
        help="paired bootstrap resamples of held-out sessions (default 1000)",
    )
    parser.add_argument(
        "--min-sessions",
        type=int,
        default=100,
        help="fewer held-out sessions: no decision, not promoted (default 100)",
    )
    parser.add_argument(
        "--compare-last",
        type=int,
        default=3,
        help="also compare with the best of the last N promoted versions (default 3; 0: off)",
    )
    parser.add_argument(
        "--lock-timeout",
        type=_duration_arg,
        default="6h",
        help="a retrain lock older than this is stale (default 6h)",
    )
    parser.add_argument(
        "--explain", metavar="VERSION",
        help="print the gate's recorded decision on VERSION and exit",
    )  # fmt: skip
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
        primary=args.metric,
        gate=GateOptions(
            confidence=args.confidence,
            bootstrap_samples=args.bootstrap_samples,
            min_sessions=args.min_sessions,
            compare_last=args.compare_last,
        ),
        lock_timeout_ms=args.lock_timeout,
        device=args.device,
        publish=not args.no_publish,
        updates_topic=args.updates_topic,
        artifact_uri_prefix=args.artifact_uri_prefix,
        model_key=key,
        progress=not args.no_progress,
    )


def _run_and_report(options: RetrainOptions) -> int:
    lock = RunLock(options.registry, options.lock_timeout_ms)
    try:
        lock.acquire()  # first of all: a second run must not even read the archive
    except LockHeld as exc:
        print(f"retrain: not started: {exc}", file=sys.stderr, flush=True)
        return EXIT_LOCKED
    try:
        # Before reading or training: a wrong CA file or password is named at once.
        run_kafka(check_connection(options.kafka), options.kafka)
        report = run_locked(options)
    except KafkaSetupError as exc:
        return report_failure(PROG, exc)
    except (RetrainError, ArtifactError, ValueError) as exc:
        print(f"retrain failed: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:  # broker or training failures end this run with the reason
        log.exception("retrain run failed")
        print(f"retrain failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    finally:
        lock.release()
    print(report.summary(options.primary, options.tolerance), flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.tolerance < 0:
        parser.error("--tolerance must be >= 0")
    if not 0.5 <= args.confidence < 1:
        parser.error("--confidence must be in [0.5, 1)")
    if args.bootstrap_samples < 1 or args.min_sessions < 1 or args.compare_last < 0:
        parser.error("--bootstrap-samples and --min-sessions must be >= 1, --compare-last >= 0")
    if args.explain is not None:
        try:
            print(explain_version(Registry(args.registry), args.explain))
        except ArtifactError as exc:
            print(f"retrain --explain: {exc}", file=sys.stderr)
            return 1
        return 0
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
