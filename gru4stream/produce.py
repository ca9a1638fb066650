"""`gru4stream produce`: publish a dataset's (or a file's) clicks to the `clicks` topic.

Events go out in timestamp order, JSON-encoded by `schemas.events.encode_click`, keyed by
session id (so one session stays on one partition, in order), through an idempotent producer
with `acks=all`. Each record's Kafka timestamp is the click's timestamp, so the archive can be
searched by time. The topic is created with the settings of `schemas.topics.CLICKS` when it does
not exist yet. Every event is checked against the click contract before it is sent; one that
breaks it is not sent and counts as failed (the first reasons are logged).

Time policy (`--time-mode`):

- `shift` (default): the whole time axis moves so that the last event published is "now";
  gaps between events and their order are kept. Several datasets predate 2000-01-01
  (MovieLens-100K is from 1997), which the click contract rejects, and a live stream should
  look live to the worker.
- `keep`: the original timestamps are published; events before 2000-01-01 or more than a day
  in the future are then refused by the contract and counted as failed.

`publish_events` is the same publishing loop for other code (the demo, tests).
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import replace
from typing import NamedTuple

from kafka_io.cli import add_kafka_arguments, report_failure, run_kafka, settings_from_args
from kafka_io.errors import KafkaSetupError, check_connection
from kafka_io.send import send_messages
from kafka_io.settings import KafkaConfigError, KafkaSettings
from kafka_io.topics import create_topics
from schemas.events import ClickEvent, ValidationError, encode_click, validate_click
from schemas.topics import CLICKS, spec_named

log = logging.getLogger(__name__)

PROG = "gru4stream produce"
TIME_MODES = ("shift", "keep")
MAX_KEPT_ERRORS = 100


class PublishResult(NamedTuple):
    sent: int
    failed: int


def align_times(
    events: Sequence[ClickEvent], mode: str = "shift", *, now_ms: int | None = None
) -> list[ClickEvent]:
    """Apply the time policy: `shift` moves every timestamp so the last one is `now_ms`."""
    if mode not in TIME_MODES:
        raise ValueError(f"time mode must be one of {TIME_MODES}, got {mode!r}")
    if mode == "keep" or not events:
        return list(events)
    now = int(time.time() * 1000) if now_ms is None else now_ms
    offset = now - max(e.timestamp for e in events)
    return [replace(e, timestamp=e.timestamp + offset) for e in events]


async def publish_events(
    events: Iterable[ClickEvent],
    settings: KafkaSettings,
    topic: str = "clicks",
    *,
    rate: float | None = None,
    progress: bool = True,
    create_topic: bool = True,
    total: int | None = None,
    errors: list[str] | None = None,
) -> PublishResult:
    """Send `events` in the given order; return how many were acknowledged and how many failed.

    `rate` limits the pace to that many events per second (None: as fast as the broker takes
    them). Failed sends and contract violations are counted, never raised: their reasons are
    logged and, when `errors` is given, the first 100 are appended to it. A broker that cannot
    be reached raises `aiokafka.errors.KafkaError`. The topic is created with the settings of
    `clicks` when it is missing (unless `create_topic` is false).
    """
    if create_topic:
        await create_topics(settings, [spec_named(topic, CLICKS)])
    if total is None and isinstance(events, Sequence):
        total = len(events)
    failures = 0

    def failed(reason: str) -> None:
        nonlocal failures
        failures += 1
        if errors is not None and len(errors) < MAX_KEPT_ERRORS:
            errors.append(reason)
        if failures <= 5:
            log.warning("not published: %s", reason)

    now_ms = int(time.time() * 1000)

    def valid_messages() -> Iterator[tuple[bytes, bytes, int]]:
        for i, event in enumerate(events):
            try:
                validate_click(event.to_dict(), now_ms=now_ms)
            except ValidationError as exc:
                failed(f"event {i} ({event.session_id!r}): {exc}")
                continue
            yield event.session_id.encode(), encode_click(event), event.timestamp

    results = await send_messages(
        settings,
        topic,
        valid_messages(),
        rate=rate,
        total=total,
        desc=f"producing to {topic}",
        progress=progress,
        request_timeout_ms=30_000,
    )
    sent = 0
    for result in results:
        if isinstance(result, BaseException):
            failed(f"delivery failed: {result}")
        else:
            sent += 1
    return PublishResult(sent, failures)


def load_events(args: argparse.Namespace) -> list[ClickEvent]:
    """The events the command line names, sorted by timestamp (stable: file order on ties)."""
    from readers.files import read_event_file
    from readers.registry import iter_events

    if args.dataset:
        events = list(iter_events(args.dataset, limit=args.limit))
    else:
        reader = read_event_file(
            args.file,
            session_col=args.session_col,
            item_col=args.item_col,
            time_col=args.time_col,
            sep=args.sep,
            time_unit=args.time_unit,
        )
        events = sorted(reader, key=lambda e: e.timestamp)
        if args.limit is not None:
            events = events[: args.limit]
    return events


def _parser() -> argparse.ArgumentParser:
    from readers.paths import DATASET_NAMES

    p = argparse.ArgumentParser(
        prog="gru4stream produce",
        description=(
            "Publish click events to a Kafka topic in timestamp order, keyed by session id, "
            "with an idempotent producer (acks=all). The topic is created with the `clicks` "
            "settings if it is missing."
        ),
        epilog=(
            "time modes: 'shift' (default) moves the whole time axis so the last published "
            "event is now, keeping gaps and order (datasets such as MovieLens-100K predate "
            "2000-01-01, which the click contract rejects); 'keep' publishes the original "
            "timestamps, and events the contract rejects are counted as failed."
        ),
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--dataset", choices=DATASET_NAMES, help="a dataset under the datasets root")
    src.add_argument("--file", help="a CSV/TSV (optionally .gz) or Parquet file of clicks")
    p.add_argument("--topic", default="clicks", help="target topic (default: clicks)")
    p.add_argument("--rate", type=float, default=None, help="events per second (default: max)")
    p.add_argument("--limit", type=int, default=None, help="publish only the first N events")
    p.add_argument("--time-mode", choices=TIME_MODES, default="shift", help="see below")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    f = p.add_argument_group("file columns (with --file)")
    f.add_argument("--session-col", default="session_id")
    f.add_argument("--item-col", default="item_id")
    f.add_argument("--time-col", default="timestamp")
    f.add_argument("--sep", default=None, help="field separator (default: guessed)")
    f.add_argument("--time-unit", choices=("ms", "s", "iso"), default="ms")
    add_kafka_arguments(p)
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.rate is not None and args.rate <= 0:
        print("gru4stream produce: error: --rate must be positive", file=sys.stderr)
        return 2
    if args.limit is not None and args.limit < 0:
        print("gru4stream produce: error: --limit must not be negative", file=sys.stderr)
        return 2
    try:
        settings = settings_from_args(args)
    except KafkaConfigError as exc:
        return report_failure(PROG, exc)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    # aiokafka logs each failed connection attempt; the one-line error below says it once.
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    try:
        events = align_times(load_events(args), args.time_mode)
    except (OSError, ValueError) as exc:  # DatasetFormatError is a ValueError
        print(f"gru4stream produce: error: {exc}", file=sys.stderr)
        return 1
    errors: list[str] = []
    try:
        run_kafka(check_connection(settings), settings)
        result = run_kafka(
            publish_events(
                events,
                settings,
                args.topic,
                rate=args.rate,
                progress=not args.no_progress,
                errors=errors,
            ),
            settings,
        )
    except KafkaSetupError as exc:
        return report_failure(PROG, exc)
    except KeyboardInterrupt:
        return 130
    first, last = _time_span(events)
    print(
        f"sent {result.sent} clicks to {args.topic} on {settings.bootstrap_servers}, "
        f"failed {result.failed}"
        f" (timestamps {first} .. {last}, time mode {args.time_mode})"
    )
    if errors:
        print(f"gru4stream produce: first failure: {errors[0]}", file=sys.stderr)
    return 0 if result.failed == 0 else 1


def _time_span(events: Sequence[ClickEvent]) -> tuple[str, str]:
    if not events:
        return "-", "-"
    fmt = "%Y-%m-%dT%H:%M:%SZ"
    return tuple(
        time.strftime(fmt, time.gmtime(ms / 1000))
        for ms in (events[0].timestamp, events[-1].timestamp)
    )


if __name__ == "__main__":
    sys.exit(main())
