"""`gru4stream evaluate`: an artifact (or a run directory holding one) or a baseline on a
split's test set, under the full-ranking and/or the sampled protocol; the items are mapped
through the artifact's own vocabulary, and clicks on items it does not know are skipped and
counted.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path
from typing import Any

from batch_training.cli_args import (
    RUN_MODEL_DIR,
    CliError,
    add_source_arguments,
    choose_protocols,
    format_table,
    load_data,
    run_command,
    setup_logging,
    setup_threads,
    source_description,
    write_json,
)
from batch_training.evaluate import ArtifactScorer, limit_history, map_to_vocab
from batch_training.pipeline import evaluate_protocols
from kafka_io.cli import redact_argv
from schemas.artifact import MANIFEST, Artifact, read_artifact

log = logging.getLogger(__name__)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gru4stream evaluate", description="Evaluate an artifact or a baseline on a split."
    )
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--model", type=Path, help="an artifact dir, or a run dir holding model/")
    what.add_argument("--baseline", choices=("pop", "itemknn"), help="a baseline trained here")
    add_source_arguments(parser)
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
    # Through the scoring core, as a worker serves it (numpy on the CPU: `device` is unused).
    scorer = ArtifactScorer(artifact)
    info: dict[str, Any] = {"model": str(artifact.path), "version": artifact.version}
    if tuple(artifact.items) != tuple(split.vocab.ids):
        index = {item: i for i, item in enumerate(artifact.items)}
        eval_data, counts = map_to_vocab(eval_data, split.vocab.ids, index)
        info["unknown"] = counts.__dict__
        log.info("mapped to the model's vocabulary: %s", counts)
    return scorer, eval_data, info


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
    args = build_parser().parse_args(argv)
    setup_logging(args.quiet)
    setup_threads(args.threads)
    # a bad model fails before the data is loaded
    artifact = read_artifact(artifact_dir(args.model)) if args.model is not None else None
    split = load_data(args)
    eval_data = split.test if args.split == "test" else split.valid
    if eval_data is None:
        raise CliError(f"{split.name} has no {args.split} set")
    protocols = choose_protocols(args.protocol, eval_data)
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
    results = evaluate_protocols(
        scorer, eval_data, protocols, batch_size=args.batch_size, progress=not args.quiet
    ).timed()
    print(format_table({name: results}))
    if "unknown" in info:
        print(f"skipped (unknown to the model): {info['unknown']}")
    if args.json is not None:
        write_json(
            args.json,
            {
                "command": ["gru4stream", "evaluate", *redact_argv(argv)],
                "data": {"source": source_description(args), "split": args.split},
                "history_window": window or 0,
                **info,
                "results": results,
            },
        )
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_command(_evaluate, argv, "gru4stream evaluate")
