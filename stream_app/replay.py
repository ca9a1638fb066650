"""`gru4stream replay`: replay archived clicks through served models, side by side.

`gru4stream replay --topic clicks [--from T0] [--to T1] --model M[,M...] [--registry ROOT]
[--k 20] [--png PATH] [--json PATH] [--live --rate N]`

The command line only. What a replay computes: stream_app/replay_offline.py (sessions from
the archive, next-click metrics of a served model) and stream_app/replay_live.py (the same
clicks through a real worker); the tables, JSON and PNG: stream_app/replay_report.py.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys

from kafka_io.cli import add_kafka_arguments, settings_from_args
from kafka_io.errors import check_connection, explain
from kafka_io.settings import KafkaConfigError, KafkaSettings
from schemas.artifact import ArtifactError
from schemas.events import ClickEvent, ValidationError, parse_time_text
from schemas.registry import Registry
from schemas.topics import CLICKS
from stream_app.replay_live import LiveResult, replay_live
from stream_app.replay_offline import (
    WORKER_DEFAULTS,
    ArchiveSlice,
    group_sessions,
    load_models,
    read_clicks,
    replay_model,
)
from stream_app.replay_report import (
    format_live_table,
    format_table,
    range_text,
    write_json,
    write_png,
)


def parse_time(text: str) -> int:
    """Epoch milliseconds or ISO 8601 (naive = UTC) -> epoch ms."""
    try:
        return parse_time_text(text)
    except ValidationError as exc:
        raise argparse.ArgumentTypeError(f"{text!r}: {exc.reason}") from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gru4stream replay",
        description="replay archived clicks through served models; next-click metrics",
    )
    parser.add_argument("--topic", default=CLICKS.name, help="archive topic (default clicks)")
    add_kafka_arguments(parser)
    parser.add_argument("--from", dest="start", type=parse_time, help="epoch ms or ISO 8601")
    parser.add_argument("--to", dest="end", type=parse_time, help="exclusive; epoch ms or ISO")
    parser.add_argument(
        "--model",
        required=True,
        help="comma-separated artifact directories or registry versions (latest, promoted)",
    )
    parser.add_argument("--registry", help="model registry root, for version names")
    parser.add_argument("--k", type=int, default=20, help="list length (default 20)")
    parser.add_argument(
        "--exclude-seen",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="never recommend items already in the session (the worker's default)",
    )
    parser.add_argument(
        "--history",
        type=int,
        default=WORKER_DEFAULTS.history_len,
        help="items of the session that are excluded, the newest first (the worker's "
        "--history, default %(default)s)",
    )
    parser.add_argument("--batch-size", type=int, default=256, help="sessions per batch")
    parser.add_argument("--png", help="write a bar chart of the metrics here")
    parser.add_argument("--json", help="write the results as JSON here")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    live = parser.add_argument_group("live replay through a worker")
    live.add_argument(
        "--live", action="store_true", help="also send the range through a worker per model"
    )
    live.add_argument("--rate", type=float, default=200.0, help="clicks per second (--live)")
    live.add_argument(
        "--answer-timeout",
        type=float,
        default=120.0,
        help="seconds to wait for the last answers (--live)",
    )
    return parser


async def read_archive(kafka: KafkaSettings, args: argparse.Namespace) -> ArchiveSlice:
    """The range the arguments name, after a connection check that names what is wrong."""
    await check_connection(kafka)
    return await read_clicks(
        kafka, args.topic, start_ms=args.start, end_ms=args.end, progress=not args.no_progress
    )


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.live and args.rate <= 0:
        parser.error("--rate must be positive")
    if args.k < 1 or args.history < 1:
        parser.error("--k and --history must be positive")
    if args.start is not None and args.end is not None and args.start >= args.end:
        parser.error("--from must be before --to")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    registry = Registry(args.registry) if args.registry else None
    try:
        kafka = settings_from_args(args)
    except KafkaConfigError as exc:
        print(f"gru4stream replay: {exc}", file=sys.stderr)
        return 2
    try:
        models = load_models(args.model, registry)
    except (ArtifactError, ValueError) as exc:
        print(f"gru4stream replay: {exc}", file=sys.stderr)
        return 1
    try:
        archive = asyncio.run(read_archive(kafka, args))
    except Exception as exc:  # noqa: BLE001 - any broker failure ends here, in one line
        print(f"gru4stream replay: {explain(exc, kafka)}", file=sys.stderr)
        return 1
    late: list[ClickEvent] = []
    sessions = group_sessions(archive.events, late)
    span = range_text(args.start, args.end)
    print(
        f"{args.topic} {span}: {len(archive.events) - len(late)} clicks in {len(sessions)} "
        f"sessions ({archive.n_invalid} invalid, {len(late)} out of order, "
        f"{archive.n_outside} outside the range)"
    )
    results = [
        replay_model(
            model,
            sessions,
            k=args.k,
            exclude_seen=args.exclude_seen,
            history=args.history,
            batch_size=args.batch_size,
            source=source,
            progress=not args.no_progress,
        )
        for source, model in models
    ]
    print(format_table(results))
    live_results: list[LiveResult] = []
    if args.live:
        for source, _ in models:
            try:
                live_results.append(
                    replay_live(
                        kafka,
                        source,
                        archive.events,
                        k=args.k,
                        rate=args.rate,
                        exclude_seen=args.exclude_seen,
                        history=args.history,
                        answer_timeout_s=args.answer_timeout,
                        progress=not args.no_progress,
                    )
                )
            except (RuntimeError, TimeoutError) as exc:  # the worker's log tail
                print(f"gru4stream replay: live replay of {source} failed: {exc}", file=sys.stderr)
                return 1
        print(f"\nlive, through a worker at {args.rate:g} clicks/s:")
        print(format_live_table(live_results, args.k))
    if args.json:
        write_json(
            args.json,
            results,
            live_results,
            rate=args.rate,
            topic=args.topic,
            **{"from": args.start, "to": args.end},
            n_events=len(archive.events) - len(late),
            n_sessions=len(sessions),
            n_invalid=archive.n_invalid,
            n_out_of_order=len(late),
            exclude_seen=args.exclude_seen,
            history=args.history,
        )
    if args.png:
        write_png(results, args.png, f"replay of {args.topic} {span}, K={args.k}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
