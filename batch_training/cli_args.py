"""What `gru4stream train` and `gru4stream evaluate` share: where the data comes from (a named
dataset, an event file, or a time range of the clicks topic), protocol choice, the results
table, JSON output, and one-line errors."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

from batch_training.valid_metric import ValidMetric
from kafka_io.cli import add_kafka_arguments, report_failure, run_kafka, settings_from_args
from kafka_io.errors import KafkaSetupError, check_connection
from kafka_io.settings import KafkaConfigError
from schemas.artifact import ArtifactError

RUN_MODEL_DIR = "model"  # the artifact's directory inside a `train` run directory


class CliError(Exception):
    """A user error: printed as one line, exit status 2."""


# --- where the data comes from ------------------------------------------------------------


def add_overrides_argument(parser: argparse.ArgumentParser, help: str) -> None:
    """`--set KEY=VALUE` (repeatable) into `args.overrides`: config fields to override."""
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help=help
    )


def add_valid_metric_argument(parser: argparse.ArgumentParser) -> None:
    """`--valid-metric [PROTOCOL:]NAME@K` into `args.valid_metric` (a ValidMetric or None)."""
    parser.add_argument(
        "--valid-metric",
        type=ValidMetric.argument,
        default=None,
        metavar="[PROTOCOL:]NAME@K",
        help="what early stopping maximises on the validation set: recall@20 (default), "
        "mrr@20, ndcg@K under full ranking; sampled:hr@K, sampled:ndcg@K among the "
        "validation set's sampled negatives (default in window mode: sampled:ndcg@5)",
    )


def add_source_arguments(parser: argparse.ArgumentParser) -> None:
    source = parser.add_argument_group("data (one of)")
    group = source.add_mutually_exclusive_group(required=True)
    group.add_argument("--dataset", help="a dataset name (see readers.paths.DATASET_NAMES)")
    group.add_argument("--file", type=Path, help="a CSV/TSV/Parquet event file")
    group.add_argument("--topic", help="a clicks topic (the archive), read by time range")
    source.add_argument("--session-col", default="session_id", help="--file: session column")
    source.add_argument("--item-col", default="item_id", help="--file: item column")
    source.add_argument("--time-col", default="timestamp", help="--file: time column")
    source.add_argument("--sep", default=None, help="--file: separator (sniffed by default)")
    source.add_argument(
        "--time-unit", default="ms", choices=("ms", "s", "iso"), help="--file: time format"
    )
    source.add_argument("--from", dest="start", help="--topic: first click time (ms or ISO)")
    source.add_argument("--to", dest="end", help="--topic: end of the range (ms or ISO)")
    source.add_argument(
        "--max-sessions", type=int, default=None, help="use only this many sessions (a slice)"
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch CPU threads (default: torch's choice; 1 avoids oversubscribing shared cores)",
    )
    source.add_argument(
        "--split-option",
        dest="split_options",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a batch_training.options.SplitOptions field, e.g. valid_days=7 (repeatable)",
    )
    add_kafka_arguments(parser)  # for --topic


def _time_arg(value: str | None, flag: str) -> int | None:
    if value is None:
        return None
    from schemas.events import ValidationError, parse_time_text

    try:
        return parse_time_text(value)
    except ValidationError as exc:
        raise CliError(f"{flag} {value!r}: {exc}") from None


def load_data(args: argparse.Namespace) -> Any:
    """The DatasetSplit the arguments name; CliError for an unknown dataset or bad file."""
    from batch_training import splits
    from readers.files import read_event_file
    from readers.parsing import DatasetFormatError
    from readers.paths import DATASET_NAMES

    options = parse_split_options(args.split_options)
    if args.max_sessions is not None:
        if args.max_sessions < 1:
            raise CliError(f"--max-sessions must be >= 1, got {args.max_sessions}")
        options["max_sessions"] = args.max_sessions
    try:
        if args.dataset is not None:
            if args.dataset not in DATASET_NAMES:
                raise CliError(
                    f"unknown dataset {args.dataset!r}; known: {', '.join(DATASET_NAMES)}"
                )
            return splits.load_split(args.dataset, **options)
        if args.file is not None:
            if not args.file.is_file():
                raise CliError(f"{args.file}: no such file")
            events = read_event_file(
                args.file,
                session_col=args.session_col,
                item_col=args.item_col,
                time_col=args.time_col,
                sep=args.sep,
                time_unit=args.time_unit,
            )
            return splits.split_from_events(events, name=args.file.stem, **options)
    except (DatasetFormatError, FileNotFoundError, ValueError, TypeError) as exc:
        raise CliError(str(exc)) from None
    events = _topic_events(args)  # Kafka failures are one line of their own (exit 1)
    try:
        return splits.split_from_events(events, name=args.topic, **options)
    except (ValueError, TypeError) as exc:
        raise CliError(str(exc)) from None


def _topic_events(args: argparse.Namespace) -> Any:
    """The clicks of --topic in [--from, --to); KafkaConfigError for wrong Kafka settings,
    KafkaSetupError (one line) when the topic cannot be read."""
    from batch_training import archive

    settings = settings_from_args(args)
    start, end = _time_arg(args.start, "--from"), _time_arg(args.end, "--to")
    run_kafka(check_connection(settings), settings)
    return run_kafka(
        archive.aread_topic_events(settings, args.topic, start_ms=start, end_ms=end), settings
    )


def parse_split_options(pairs: list[str]) -> dict[str, Any]:
    """KEY=VALUE pairs with JSON values (bare words stay strings); names checked by SplitOptions."""
    options: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key.strip():
            raise CliError(f"--split-option {pair!r}: expected KEY=VALUE")
        try:
            options[key.strip().replace("-", "_")] = orjson.loads(raw)
        except orjson.JSONDecodeError:
            options[key.strip().replace("-", "_")] = raw
    return options


def source_description(args: argparse.Namespace) -> dict[str, Any]:
    if args.dataset is not None:
        described: dict[str, Any] = {"dataset": args.dataset}
    elif args.file is not None:
        described = {"file": str(args.file)}
    else:
        described = {"topic": args.topic, "from": args.start, "to": args.end}
    if args.max_sessions is not None:
        described["max_sessions"] = args.max_sessions
    if args.split_options:
        described["split_options"] = parse_split_options(args.split_options)
    return described


# --- results shared by both commands ---------------------------------------------------


def choose_protocols(requested: str, eval_data: Any) -> list[str]:
    has_negatives = eval_data.negatives is not None
    if requested == "auto":
        return ["full", "sampled"] if has_negatives else ["full"]
    wanted = ["full", "sampled"] if requested == "both" else [requested]
    if "sampled" in wanted and not has_negatives:
        raise CliError("the sampled protocol needs given negatives; this dataset has none")
    return wanted


def format_table(rows: dict[str, dict[str, dict[str, float]]]) -> str:
    """rows: name -> protocol -> metrics; one line per (name, protocol)."""
    lines = []
    for protocol, names in (
        ("full", ["recall@5", "recall@10", "recall@20", "mrr@20", "ndcg@10", "ndcg@20"]),
        ("sampled", ["hr@5", "hr@10", "ndcg@5", "ndcg@10"]),
    ):
        present = [(name, r[protocol]) for name, r in rows.items() if protocol in r]
        if not present:
            continue
        width = max(len(name) for name, _ in present)
        lines.append(f"{protocol:<{width}}  " + "  ".join(f"{n:>9}" for n in names) + "  examples")
        for name, metrics in present:
            values = "  ".join(f"{metrics[n]:>9.4f}" for n in names)
            lines.append(f"{name:<{width}}  {values}  {metrics['n_examples']:>8}")
    return "\n".join(lines)


def write_json(path: Path, payload: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(orjson.dumps(payload, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY))


def setup_threads(threads: int | None) -> None:
    if threads is not None:
        if threads < 1:
            raise CliError(f"--threads must be >= 1, got {threads}")
        import torch

        torch.set_num_threads(threads)


def setup_logging(quiet: bool) -> None:
    logging.basicConfig(
        level=logging.WARNING if quiet else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


def run_command(body: Callable[[list[str]], int], argv: list[str] | None, prog: str) -> int:
    try:
        return body(sys.argv[1:] if argv is None else list(argv))
    except (KafkaConfigError, KafkaSetupError) as exc:
        return report_failure(prog, exc)
    except (CliError, ArtifactError) as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
