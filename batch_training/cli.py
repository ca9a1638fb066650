"""`gru4stream train` and `gru4stream evaluate`.

train: load a split (a named dataset, an event file, or a time range of the clicks topic),
train GRU4Rec with early stopping on the validation Recall@20 (full ranking), evaluate on the
test set, and write a run directory:

    OUT/model/          the artifact (schemas.artifact); its manifest holds the metrics
    OUT/metrics.json    test metrics, history, config, timings, the command line
    OUT/training.png    training curves

evaluate: an artifact (or a run directory holding one) or a baseline on a split's test set,
under the full-ranking and/or the sampled protocol; the items are mapped through the
artifact's own vocabulary, and clicks on items it does not know are skipped and counted.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import orjson

from batch_training.evaluate import (
    FULL_KS,
    SAMPLED_KS,
    GRU4RecScorer,
    SessionScorer,
    evaluate_full,
    evaluate_sampled,
    limit_history,
    map_to_vocab,
)
from kafka_io.cli import (
    add_kafka_arguments,
    redact_argv,
    report_failure,
    run_kafka,
    settings_from_args,
)
from kafka_io.errors import KafkaSetupError, check_connection
from kafka_io.settings import KafkaConfigError
from schemas.artifact import MANIFEST, Artifact, ArtifactError, read_artifact

log = logging.getLogger(__name__)

RUN_MODEL_DIR = "model"
VALID_METRIC = "recall@20"


class CliError(Exception):
    """A user error: printed as one line, exit status 2."""


# --- where the data comes from ------------------------------------------------------------


def _add_source_arguments(parser: argparse.ArgumentParser) -> None:
    source = parser.add_argument_group("data (one of)")
    group = source.add_mutually_exclusive_group(required=True)
    group.add_argument("--dataset", help="a dataset name (see schemas.datasets.DATASET_NAMES)")
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
        help="a batch_training.data.SplitOptions field, e.g. valid_days=7 (repeatable)",
    )
    add_kafka_arguments(parser)  # for --topic


def _time_arg(value: str | None, flag: str) -> int | None:
    if value is None:
        return None
    from schemas.events import ValidationError, parse_timestamp

    try:
        return parse_timestamp(int(value) if value.lstrip("-").isdigit() else value)
    except ValidationError as exc:
        raise CliError(f"{flag} {value!r}: {exc}") from None


def load_data(args: argparse.Namespace) -> Any:
    """The DatasetSplit the arguments name; CliError for an unknown dataset or bad file."""
    from batch_training import data
    from schemas.datasets import DATASET_NAMES, DatasetFormatError, read_event_file

    options = _split_options(args.split_options)
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
            return data.load_split(args.dataset, **options)
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
            return data.split_from_events(events, name=args.file.stem, **options)
    except (DatasetFormatError, FileNotFoundError, ValueError, TypeError) as exc:
        raise CliError(str(exc)) from None
    events = _topic_events(args)  # Kafka failures are one line of their own (exit 1)
    try:
        return data.split_from_events(events, name=args.topic, **options)
    except (ValueError, TypeError) as exc:
        raise CliError(str(exc)) from None


def _topic_events(args: argparse.Namespace) -> Any:
    """The clicks of --topic in [--from, --to); KafkaConfigError for wrong Kafka settings,
    KafkaSetupError (one line) when the topic cannot be read."""
    from batch_training import data

    settings = settings_from_args(args)
    start, end = _time_arg(args.start, "--from"), _time_arg(args.end, "--to")
    run_kafka(check_connection(settings), settings)
    return run_kafka(
        data.aread_topic_events(settings, args.topic, start_ms=start, end_ms=end), settings
    )


def _split_options(pairs: list[str]) -> dict[str, Any]:
    """KEY=VALUE pairs with JSON values (bare words stay strings); names checked by data."""
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


def _source_description(args: argparse.Namespace) -> dict[str, Any]:
    if args.dataset is not None:
        described: dict[str, Any] = {"dataset": args.dataset}
    elif args.file is not None:
        described = {"file": str(args.file)}
    else:
        described = {"topic": args.topic, "from": args.start, "to": args.end}
    if args.max_sessions is not None:
        described["max_sessions"] = args.max_sessions
    if args.split_options:
        described["split_options"] = _split_options(args.split_options)
    return described


# --- evaluation shared by both commands ---------------------------------------------------


def _protocols(requested: str, eval_data: Any) -> list[str]:
    has_negatives = eval_data.negatives is not None
    if requested == "auto":
        return ["full", "sampled"] if has_negatives else ["full"]
    wanted = ["full", "sampled"] if requested == "both" else [requested]
    if "sampled" in wanted and not has_negatives:
        raise CliError("the sampled protocol needs given negatives; this dataset has none")
    return wanted


def run_protocols(
    scorer: SessionScorer,
    eval_data: Any,
    protocols: Sequence[str],
    *,
    batch_size: int,
    progress: bool,
) -> dict[str, dict[str, float]]:
    results: dict[str, dict[str, float]] = {}
    for protocol in protocols:
        t0 = time.perf_counter()
        if protocol == "full":
            metrics = evaluate_full(
                scorer, eval_data, FULL_KS, batch_size=batch_size, progress=progress
            )
        else:
            metrics = evaluate_sampled(
                scorer, eval_data, SAMPLED_KS, batch_size=batch_size, progress=progress
            )
        metrics["seconds"] = round(time.perf_counter() - t0, 2)
        results[protocol] = metrics
    return results


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


def _write_json(path: Path, payload: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(orjson.dumps(payload, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY))


def _setup_threads(threads: int | None) -> None:
    if threads is not None:
        if threads < 1:
            raise CliError(f"--threads must be >= 1, got {threads}")
        import torch

        torch.set_num_threads(threads)


def _setup_logging(quiet: bool) -> None:
    logging.basicConfig(
        level=logging.WARNING if quiet else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


def _main(body: Callable[[list[str]], int], argv: list[str] | None, prog: str) -> int:
    try:
        return body(sys.argv[1:] if argv is None else list(argv))
    except (KafkaConfigError, KafkaSetupError) as exc:
        return report_failure(prog, exc)
    except (CliError, ArtifactError) as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2


# --- train --------------------------------------------------------------------------------


def _train_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gru4stream train", description="Train GRU4Rec, evaluate it, export an artifact."
    )
    _add_source_arguments(parser)
    parser.add_argument("--preset", required=True, help="a preset in batch_training/presets")
    parser.add_argument("--out", type=Path, required=True, help="run directory (must not exist)")
    parser.add_argument("--epochs", type=int, default=None, help="override n_epochs")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config field (repeatable); values are JSON, types are checked",
    )
    parser.add_argument("--version", default=None, help="model version (default: a timestamp)")
    parser.add_argument(
        "--protocol",
        default="auto",
        choices=("auto", "full", "sampled", "both"),
        help="test protocols; auto = full, plus sampled where the data gives negatives",
    )
    parser.add_argument("--no-validation", action="store_true", help="train all epochs")
    parser.add_argument(
        "--history-window",
        type=int,
        default=None,
        help="evaluate with at most this many clicks before the first target (default: the "
        "config's max_history, 0 = whole sequences)",
    )
    parser.add_argument("--eval-batch-size", type=int, default=256)
    parser.add_argument("--quiet", action="store_true", help="no progress bars or info logs")
    return parser


def _train(argv: list[str]) -> int:
    from batch_training.config import ConfigError, apply_overrides, load_preset
    from batch_training.export import export_artifact
    from batch_training.train import plot_history, train

    args = _train_parser().parse_args(argv)
    _setup_logging(args.quiet)
    _setup_threads(args.threads)
    if args.out.exists():
        raise CliError(f"{args.out}: already exists; choose a new run directory")
    try:
        config = load_preset(args.preset)
        if args.epochs is not None:
            config = config.replace(n_epochs=args.epochs)
        config = apply_overrides(config, args.overrides)
    except ConfigError as exc:
        raise CliError(str(exc)) from None

    t_load = time.perf_counter()
    split = load_data(args)
    n_items = len(split.vocab.ids)
    support = split.item_support
    log.info(
        "%s: %d items, %d training sessions / %d clicks, %d test sessions (%.1fs)",
        split.name,
        n_items,
        split.train.n_sessions,
        split.train.n_clicks,
        split.test.sessions.n_sessions,
        time.perf_counter() - t_load,
    )
    protocols = _protocols(args.protocol, split.test)
    progress = not args.quiet
    window = config.max_history if args.history_window is None else args.history_window
    test_data = limit_history(split.test, window)

    validate = None
    if split.valid is not None and not args.no_validation:
        valid_data = limit_history(split.valid, window)

        def validate(model: Any) -> float:
            scorer = GRU4RecScorer(model)
            return evaluate_full(
                scorer, valid_data, (20,), batch_size=args.eval_batch_size, progress=progress
            )[VALID_METRIC]

    t_train = time.perf_counter()
    result = train(
        split.train,
        config,
        n_items=n_items,
        item_support=support,
        validate=validate,
        device=args.device,
        progress=progress,
    )
    train_seconds = time.perf_counter() - t_train

    test = run_protocols(
        GRU4RecScorer(result.model),
        test_data,
        protocols,
        batch_size=args.eval_batch_size,
        progress=progress,
    )
    version = args.version or time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    training_data = {
        "source": _source_description(args),
        **dict(split.time_range),
        "n_train_sessions": int(split.train.n_sessions),
        "n_train_clicks": int(split.train.n_clicks),
    }
    best = next((h for h in result.history if h["epoch"] == result.best_epoch), {})
    model_metrics = {f"test_{p}": m for p, m in test.items()}
    if best.get("valid") is not None:
        model_metrics[f"valid_{VALID_METRIC}"] = best["valid"]
    artifact_dir = export_artifact(
        result,
        split.vocab,
        args.out / RUN_MODEL_DIR,
        version=version,
        item_support=support,
        training_data=training_data,
        metrics=model_metrics,
    )
    read_artifact(artifact_dir)  # what a worker will read: fail here, not there
    plot_history(result.history, args.out / "training.png")
    _write_json(
        args.out / "metrics.json",
        {
            "command": ["gru4stream", "train", *redact_argv(argv)],
            "version": version,
            "data": training_data,
            "preset": args.preset,
            "config": result.config.to_dict(),
            "device": result.device,
            "epochs_run": len(result.history),
            "best_epoch": result.best_epoch,
            "train_seconds": round(train_seconds, 1),
            "history_window": window,
            "history": result.history,
            "test": test,
        },
    )
    print(f"model {version}: {artifact_dir}")
    print(
        f"trained {len(result.history)} epochs in {train_seconds:.0f}s on {result.device}, "
        f"best epoch {result.best_epoch}"
        + (f" (valid {VALID_METRIC} {best['valid']:.4f})" if best.get("valid") else "")
    )
    print(format_table({"GRU4Rec": test}))
    return 0


def train_main(argv: list[str] | None = None) -> int:
    return _main(_train, argv, "gru4stream train")


# --- evaluate -----------------------------------------------------------------------------


def _evaluate_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gru4stream evaluate", description="Evaluate an artifact or a baseline on a split."
    )
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--model", type=Path, help="an artifact dir, or a run dir holding model/")
    what.add_argument("--baseline", choices=("pop", "itemknn"), help="a baseline trained here")
    _add_source_arguments(parser)
    parser.add_argument("--protocol", default="auto", choices=("auto", "full", "sampled", "both"))
    parser.add_argument("--split", default="test", choices=("test", "valid"))
    parser.add_argument("--json", type=Path, default=None, help="write the metrics here")
    parser.add_argument("--device", default="cpu", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument(
        "--history-window",
        type=int,
        default=None,
        help="at most this many clicks before the first target (default: the model's "
        "max_history, 0 = whole sequences)",
    )
    parser.add_argument("--knn-neighbours", type=int, default=100)
    parser.add_argument("--knn-lambda", type=float, default=20.0)
    parser.add_argument("--knn-alpha", type=float, default=0.5)
    parser.add_argument("--quiet", action="store_true")
    return parser


def artifact_dir(path: Path) -> Path:
    """An artifact directory, or a run directory from `train` that holds one."""
    if not path.exists():
        raise CliError(f"{path}: no such directory")
    if not (path / MANIFEST).is_file() and (path / RUN_MODEL_DIR / MANIFEST).is_file():
        return path / RUN_MODEL_DIR
    return path


def _model_scorer(
    artifact: Artifact, split: Any, eval_data: Any, device: str
) -> tuple[Any, Any, dict]:
    from batch_training.model import GRU4Rec
    from batch_training.train import resolve_device

    model = GRU4Rec.from_artifact(artifact, device=resolve_device(device))
    info: dict[str, Any] = {"model": str(artifact.path), "version": artifact.version}
    if tuple(artifact.items) != tuple(split.vocab.ids):
        index = {item: i for i, item in enumerate(artifact.items)}
        eval_data, counts = map_to_vocab(eval_data, split.vocab.ids, index)
        info["unknown"] = counts.__dict__
        log.info("mapped to the model's vocabulary: %s", counts)
    return GRU4RecScorer(model), eval_data, info


def _baseline_scorer(args: argparse.Namespace, split: Any) -> tuple[Any, dict]:
    from batch_training.baselines import ItemKNN, MostPopular

    n_items = len(split.vocab.ids)
    t0 = time.perf_counter()
    if args.baseline == "pop":
        scorer: Any = MostPopular.fit(split.train, n_items)
        info: dict[str, Any] = {"baseline": "most-popular"}
    else:
        scorer = ItemKNN.fit(
            split.train,
            n_items,
            n_neighbours=args.knn_neighbours,
            lmbd=args.knn_lambda,
            alpha=args.knn_alpha,
        )
        info = {
            "baseline": "item-knn",
            "n_neighbours": args.knn_neighbours,
            "lambda": args.knn_lambda,
            "alpha": args.knn_alpha,
        }
    info["fit_seconds"] = round(time.perf_counter() - t0, 2)
    return scorer, info


def _evaluate(argv: list[str]) -> int:
    args = _evaluate_parser().parse_args(argv)
    _setup_logging(args.quiet)
    _setup_threads(args.threads)
    # a bad model fails before the data is loaded
    artifact = read_artifact(artifact_dir(args.model)) if args.model is not None else None
    split = load_data(args)
    eval_data = split.test if args.split == "test" else split.valid
    if eval_data is None:
        raise CliError(f"{split.name} has no {args.split} set")
    protocols = _protocols(args.protocol, eval_data)
    window = args.history_window
    if window is None and artifact is not None:
        window = int(artifact.manifest.hyperparameters.get("max_history", 0) or 0)
    eval_data = limit_history(eval_data, window or 0)
    if artifact is not None:
        scorer, eval_data, info = _model_scorer(artifact, split, eval_data, args.device)
        name = f"GRU4Rec {info['version']}"
    else:
        scorer, info = _baseline_scorer(args, split)
        name = info["baseline"]
    results = run_protocols(
        scorer, eval_data, protocols, batch_size=args.batch_size, progress=not args.quiet
    )
    print(format_table({name: results}))
    if "unknown" in info:
        print(f"skipped (unknown to the model): {info['unknown']}")
    if args.json is not None:
        _write_json(
            args.json,
            {
                "command": ["gru4stream", "evaluate", *redact_argv(argv)],
                "data": {"source": _source_description(args), "split": args.split},
                "history_window": window or 0,
                **info,
                "results": results,
            },
        )
    return 0


def evaluate_main(argv: list[str] | None = None) -> int:
    return _main(_evaluate, argv, "gru4stream evaluate")
