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
import asyncio
import logging
import os
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import replace
from typing import NamedTuple

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from tqdm import tqdm

from schemas.events import ClickEvent, ValidationError, encode_click, validate_click

log = logging.getLogger(__name__)

DEFAULT_BOOTSTRAP = "127.0.0.1:9092"
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
    bootstrap: str,
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
    be reached raises `aiokafka.errors.KafkaError`.
    """
    if create_topic:
        await _ensure_clicks_topic(bootstrap, topic)
    if total is None and isinstance(events, Sequence):
        total = len(events)
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        acks="all",
        enable_idempotence=True,
        linger_ms=5,
        request_timeout_ms=30_000,
    )
    await producer.start()
    counts = {"sent": 0, "failed": 0}
    bar = tqdm(total=total, unit="click", desc=f"producing to {topic}", disable=not progress)
    pending: set[asyncio.Future] = set()

    def failed(reason: str) -> None:
        counts["failed"] += 1
        if errors is not None and len(errors) < MAX_KEPT_ERRORS:
            errors.append(reason)
        if counts["failed"] <= 5:
            log.warning("not published: %s", reason)
        bar.update(1)

    def done(fut: asyncio.Future) -> None:
        pending.discard(fut)
        if fut.cancelled() or fut.exception() is not None:
            failed(f"delivery failed: {fut.exception() if not fut.cancelled() else 'cancelled'}")
        else:
            counts["sent"] += 1
            bar.update(1)

    start = time.monotonic()
    now_ms = int(time.time() * 1000)
    try:
        for i, event in enumerate(events):
            if rate:
                ahead = start + i / rate - time.monotonic()
                if ahead > 0:
                    await asyncio.sleep(ahead)
            try:
                validate_click(event.to_dict(), now_ms=now_ms)
            except ValidationError as exc:
                failed(f"event {i} ({event.session_id!r}): {exc}")
                continue
            fut = await producer.send(
                topic,
                encode_click(event),
                key=event.session_id.encode(),
                timestamp_ms=event.timestamp,
            )
            pending.add(fut)
            fut.add_done_callback(done)
        await producer.flush()
        if pending:
            await asyncio.wait(set(pending))
    finally:
        await producer.stop()
        bar.close()
    return PublishResult(counts["sent"], counts["failed"])


async def _ensure_clicks_topic(bootstrap: str, topic: str) -> None:
    # deploy.kafka.admin is imported here so that `publish_events(create_topic=False)` needs
    # nothing but aiokafka.
    from deploy.kafka.admin import create_topics
    from schemas.topics import CLICKS, spec_named

    created = await create_topics(bootstrap, [spec_named(topic, CLICKS)])
    if created:
        log.info("created topic %s with the settings of %s", topic, CLICKS.name)


def load_events(args: argparse.Namespace) -> list[ClickEvent]:
    """The events the command line names, sorted by timestamp (stable: file order on ties)."""
    from schemas import datasets

    if args.dataset:
        events = list(datasets.iter_events(args.dataset, limit=args.limit))
    else:
        reader = datasets.read_event_file(
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
    from schemas.datasets import DATASET_NAMES

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
    p.add_argument(
        "--bootstrap",
        default=os.environ.get("GRU4STREAM_BOOTSTRAP", DEFAULT_BOOTSTRAP),
        help="broker host:port (default: $GRU4STREAM_BOOTSTRAP or 127.0.0.1:9092)",
    )
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
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.rate is not None and args.rate <= 0:
        print("gru4stream produce: error: --rate must be positive", file=sys.stderr)
        return 2
    if args.limit is not None and args.limit < 0:
        print("gru4stream produce: error: --limit must not be negative", file=sys.stderr)
        return 2
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
        result = asyncio.run(
            publish_events(
                events,
                args.bootstrap,
                args.topic,
                rate=args.rate,
                progress=not args.no_progress,
                errors=errors,
            )
        )
    except (KafkaError, OSError, RuntimeError) as exc:
        reason = str(exc) if type(exc).__name__ in str(exc) else f"{type(exc).__name__}: {exc}"
        print(f"gru4stream produce: error: broker {args.bootstrap}: {reason}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    first, last = _time_span(events)
    print(
        f"sent {result.sent} clicks to {args.topic} on {args.bootstrap}, failed {result.failed}"
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
