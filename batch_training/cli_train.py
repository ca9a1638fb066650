"""`gru4stream train`: load a split, run the training pipeline (batch_training.pipeline), and
write a run directory:

    OUT/model/          the artifact (schemas.artifact); its manifest holds the metrics
    OUT/metrics.json    test metrics, history, config, timings, the command line
    OUT/training.png    training curves

Early stopping is on the validation Recall@20 (full ranking).
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from batch_training.cli_args import (
    RUN_MODEL_DIR,
    CliError,
    add_overrides_argument,
    add_source_arguments,
    add_valid_metric_argument,
    choose_protocols,
    format_table,
    load_data,
    run_command,
    setup_logging,
    setup_threads,
    source_description,
    write_json,
)
from batch_training.valid_metric import ValidMetric
from kafka_io.cli import redact_argv

if TYPE_CHECKING:  # the pipeline imports torch: only once a command runs
    from batch_training.pipeline import TrainedModel

log = logging.getLogger(__name__)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gru4stream train", description="Train GRU4Rec, evaluate it, export an artifact."
    )
    add_source_arguments(parser)
    parser.add_argument("--preset", required=True, help="a preset in batch_training/presets")
    parser.add_argument("--out", type=Path, required=True, help="run directory (must not exist)")
    parser.add_argument("--epochs", type=int, default=None, help="override n_epochs")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    add_overrides_argument(
        parser,
        "override a config field (repeatable); values are JSON, types are checked",
    )
    parser.add_argument("--version", default=None, help="model version (default: a timestamp)")
    parser.add_argument(
        "--protocol",
        default="auto",
        choices=("auto", "full", "sampled", "both"),
        help="test protocols; auto = full, plus sampled where the data gives negatives",
    )
    parser.add_argument("--no-validation", action="store_true", help="train all epochs")
    add_valid_metric_argument(parser)
    parser.add_argument(
        "--history-window",
        type=int,
        default=None,
        help="evaluate with at most this many clicks before the first target (default: the "
        "config's max_history, 0 = whole sequences)",
    )
    parser.add_argument("--eval-batch-size", type=int, default=256)
    parser.add_argument(
        "--checkpoint",
        type=Path,
        default=None,
        metavar="FILE",
        help="window mode: save the training state to FILE after every epoch; if FILE "
        "exists, go on from it (the same preset, overrides and data; --epochs may grow)",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bars or info logs")
    parser.add_argument(
        "--nproc",
        type=int,
        default=1,
        help="data-parallel training on N processes of this host (torchrun; gloo on CPU, "
        "NCCL on CUDA); only rank 0 evaluates and writes. batch_size is split over them",
    )
    return parser


def _without_nproc(argv: list[str]) -> list[str]:
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--nproc":
            skip = True
        elif not arg.startswith("--nproc="):
            out.append(arg)
    return out


def _preset_valid_metric(preset: dict[str, Any], name: str) -> ValidMetric | None:
    """The validation metric a preset was tuned on (`tune --valid-metric` writes it)."""
    from batch_training.config import ConfigError

    spec = preset.get("valid_metric")
    if spec is None:
        return None
    try:
        return ValidMetric.parse(str(spec))
    except ValueError as exc:
        raise ConfigError(f"preset {name}: {exc}") from None


def _train(argv: list[str]) -> int:
    from batch_training import distributed
    from batch_training.checkpoint import CheckpointError
    from batch_training.config import ConfigError, apply_overrides, load_preset, read_preset
    from batch_training.curves import plot_history
    from batch_training.pipeline import PipelineOptions, TrainingPipeline, run_pipeline

    args = build_parser().parse_args(argv)
    if args.nproc < 1:
        raise CliError(f"--nproc must be >= 1, got {args.nproc}")
    if args.nproc > 1 and not distributed.launched_by_torchrun():
        # The same command on N ranks; each rank comes back here under torchrun.
        return distributed.launch(args.nproc, ["gru4stream.cli", "train", *_without_nproc(argv)])
    rank = 0
    if distributed.launched_by_torchrun():
        args.device = distributed.init_from_env(args.device)
        rank = distributed.world()[0]
        args.quiet = args.quiet or rank > 0
    setup_logging(args.quiet)
    setup_threads(args.threads)
    if rank == 0 and args.out.exists():
        raise CliError(f"{args.out}: already exists; choose a new run directory")
    try:
        config = load_preset(args.preset)
        if args.epochs is not None:
            config = config.replace(n_epochs=args.epochs)
        config = apply_overrides(config, args.overrides)
        if args.valid_metric is None and not args.no_validation:
            args.valid_metric = _preset_valid_metric(read_preset(args.preset), args.preset)
    except ConfigError as exc:
        raise CliError(str(exc)) from None
    if args.valid_metric is not None and args.no_validation:
        raise CliError("--valid-metric: nothing is validated with --no-validation")
    if args.checkpoint is not None and config.mode != "window":
        raise CliError(f"--checkpoint: resumes the history-window mode only ({args.preset} is not)")

    t_load = time.perf_counter()
    split = load_data(args)
    log.info(
        "%s: %d items, %d training sessions / %d clicks, %d test sessions (%.1fs)",
        split.name,
        len(split.vocab.ids),
        split.train.n_sessions,
        split.train.n_clicks,
        split.test.sessions.n_sessions,
        time.perf_counter() - t_load,
    )
    window = config.max_history if args.history_window is None else args.history_window
    options = PipelineOptions(
        device=args.device,
        progress=not args.quiet,
        protocols=tuple(choose_protocols(args.protocol, split.test)),
        history_window=window,
        validate=not args.no_validation,
        eval_batch_size=args.eval_batch_size,
        checkpoint=args.checkpoint,
        valid_metric=args.valid_metric,
    )
    # What early stopping maximises: validation recall@20, NDCG@5 in window mode, or as given.
    try:
        valid_metric = TrainingPipeline(split, config, options).valid_metric
    except ValueError as exc:
        raise CliError(f"--valid-metric: {exc}") from None
    if rank > 0:  # a helper rank trains its share; rank 0 evaluates, exports and writes
        TrainingPipeline(split, config, options).train()
        distributed.shutdown()
        return 0
    version = args.version or time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    training_data = {
        "source": source_description(args),
        **dict(split.time_range),
        "n_train_sessions": int(split.train.n_sessions),
        "n_train_clicks": int(split.train.n_clicks),
    }

    def model_metrics(trained: TrainedModel) -> dict[str, Any]:
        metrics: dict[str, Any] = {f"test_{p}": m for p, m in trained.test.timed().items()}
        if trained.best_valid is not None:
            metrics[f"valid_{valid_metric}"] = trained.best_valid
        return metrics

    try:
        trained, version, artifact_dir = run_pipeline(
            split,
            config,
            options,
            args.out / RUN_MODEL_DIR,
            version=version,
            training_data=training_data,
            metrics=model_metrics,
        )
    except CheckpointError as exc:
        raise CliError(str(exc)) from None
    result, test, best_valid = trained.result, trained.test.timed(), trained.best_valid
    plot_history(result.history, args.out / "training.png")
    write_json(
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
            "train_seconds": round(trained.train_seconds, 1),
            "history_window": window,
            "valid_metric": None if best_valid is None else str(valid_metric),
            "history": result.history,
            "test": test,
        },
    )
    print(f"model {version}: {artifact_dir}")
    print(
        f"trained {len(result.history)} epochs in {trained.train_seconds:.0f}s on "
        f"{result.device}, best epoch {result.best_epoch}"
        + (f" (valid {valid_metric} {best_valid:.4f})" if best_valid else "")
    )
    print(format_table({"GRU4Rec": test}))
    distributed.shutdown()
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_command(_train, argv, "gru4stream train")
