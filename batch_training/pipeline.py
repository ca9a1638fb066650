"""The one training recipe: a split -> train GRU4Rec -> evaluate on the test set -> artifact.

`gru4stream train` (batch_training.cli_train), `gru4stream retrain` (batch_training.retrain)
and the demo (gru4stream.demo) all go through `TrainingPipeline`, so a model is trained,
validated, evaluated and exported the same way whichever of them made it. Where the split
comes from, and what happens to the artifact afterwards (a run directory, a registry gate,
a demo announcement), stays with the caller.

Training is session-parallel (batch_training.train), or history windows as ReChorus trains
(batch_training.window_train) with `TrainConfig.mode = "window"`; both give a GRU4Rec.

Straight through: `run_pipeline`. Retraining evaluates the served model between evaluating
the candidate and exporting it, so it calls the steps: `fit()`, its gate, then `export()`.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from batch_training import distributed
from batch_training.config import TrainConfig
from batch_training.evaluate import (
    FULL_KS,
    SAMPLED_KS,
    GRU4RecScorer,
    SessionScorer,
    evaluate_full,
    evaluate_sampled,
    limit_history,
)
from batch_training.export import export_artifact
from batch_training.model import GRU4Rec
from batch_training.train import TrainResult, train
from batch_training.valid_metric import ValidMetric
from batch_training.window_train import train_windows
from schemas.artifact import read_artifact

VALID_METRIC = ValidMetric("full", "recall", 20)  # the default: full-ranking Recall@20
# The history-window mode stops as ReChorus does: on NDCG@5 of the validation set's target
# among its sampled negatives (when the split gives negatives; else VALID_METRIC).
WINDOW_VALID_METRIC = ValidMetric("sampled", "ndcg", 5)


class Split(Protocol):
    """What the pipeline needs of `batch_training.sessions.DatasetSplit`."""

    train: Any  # SessionData
    valid: Any | None  # EvalData, or None for a split without a validation set
    test: Any  # EvalData
    vocab: Any  # ItemVocab

    @property
    def item_support(self) -> np.ndarray: ...


@dataclass(frozen=True)
class PipelineOptions:
    """How to train and evaluate; the defaults are what retrain and the demo use."""

    device: str = "auto"
    progress: bool = True  # training progress bars
    eval_progress: bool | None = None  # evaluation progress bars; None = as `progress`
    protocols: tuple[str, ...] = ("full",)  # test protocols: "full" and/or "sampled"
    history_window: int = 0  # evaluate with at most this many clicks before a target; 0 = all
    validate: bool = False  # early stopping on the split's validation set, when it has one
    eval_batch_size: int = 256
    checkpoint: Path | None = None  # window mode: saved after every epoch, resumed if there
    valid_metric: ValidMetric | None = None  # None = the mode's default

    @property
    def show_eval_progress(self) -> bool:
        return self.progress if self.eval_progress is None else self.eval_progress


@dataclass(frozen=True)
class Evaluation:
    """Metrics per protocol, and the seconds each protocol took (kept apart: only the
    train command's outputs carry timings)."""

    metrics: dict[str, dict[str, float]]
    seconds: dict[str, float] = field(default_factory=dict)

    def timed(self) -> dict[str, dict[str, float]]:
        """The metrics with each protocol's "seconds" added, as metrics.json holds them."""
        return {p: {**m, "seconds": self.seconds[p]} for p, m in self.metrics.items()}


def evaluate_protocols(
    scorer: SessionScorer,
    eval_data: Any,
    protocols: Sequence[str],
    *,
    batch_size: int,
    progress: bool,
) -> Evaluation:
    """Any scorer (GRU4Rec, an artifact, a baseline) under the given protocols."""
    metrics: dict[str, dict[str, float]] = {}
    seconds: dict[str, float] = {}
    for protocol in protocols:
        t0 = time.perf_counter()
        if protocol == "full":
            metrics[protocol] = evaluate_full(
                scorer, eval_data, FULL_KS, batch_size=batch_size, progress=progress
            )
        else:
            metrics[protocol] = evaluate_sampled(
                scorer, eval_data, SAMPLED_KS, batch_size=batch_size, progress=progress
            )
        seconds[protocol] = round(time.perf_counter() - t0, 2)
    return Evaluation(metrics, seconds)


@dataclass(frozen=True)
class TrainedModel:
    """A trained model and its test metrics, not exported yet."""

    result: TrainResult
    test: Evaluation
    train_seconds: float

    @property
    def model(self) -> GRU4Rec:
        return self.result.model

    @property
    def best_valid(self) -> float | None:
        """The validation metric of the epoch whose weights the model holds, if validated."""
        best = next((h for h in self.result.history if h["epoch"] == self.result.best_epoch), {})
        return best.get("valid")


class TrainingPipeline:
    """train -> evaluate -> export of one split with one config."""

    def __init__(self, split: Split, config: TrainConfig, options: PipelineOptions) -> None:
        self.split = split
        self.config = config
        self.options = options

    @property
    def test_data(self) -> Any:
        return limit_history(self.split.test, self.options.history_window)

    @property
    def valid_metric(self) -> ValidMetric:
        """What early stopping maximises, on the validation set."""
        valid = self.split.valid
        sampled = valid is not None and valid.negatives is not None
        if self.options.valid_metric is None:
            window = self.config.mode == "window" and sampled
            return WINDOW_VALID_METRIC if window else VALID_METRIC
        metric = self.options.valid_metric
        if metric.protocol == "sampled" and valid is not None and not sampled:
            raise ValueError(
                f"validation metric {metric}: the validation set has no sampled negatives; "
                "choose a full-ranking metric such as recall@20"
            )
        return metric

    def _validator(self) -> Callable[[GRU4Rec], float] | None:
        opts = self.options
        if not opts.validate or self.split.valid is None:
            return None
        valid_data = limit_history(self.split.valid, opts.history_window)
        metric = self.valid_metric
        protocol = evaluate_sampled if metric.protocol == "sampled" else evaluate_full

        def validate(model: GRU4Rec) -> float:
            return protocol(
                GRU4RecScorer(model),
                valid_data,
                (metric.k,),
                batch_size=opts.eval_batch_size,
                progress=opts.show_eval_progress,
            )[metric.key]

        return validate

    def train(self) -> tuple[TrainResult, float]:
        """The trained model (the best validated epoch's) and the seconds training took."""
        t0 = time.perf_counter()
        if self.config.mode == "window":
            if distributed.world()[1] > 1:
                raise ValueError("the history-window mode trains in one process; drop --nproc")
            result = train_windows(
                self.split.train,
                self.config,
                n_items=len(self.split.vocab.ids),
                validate=self._validator(),
                device=self.options.device,
                progress=self.options.progress,
                checkpoint=self.options.checkpoint,
            )
            return result, time.perf_counter() - t0
        if self.options.checkpoint is not None:
            raise ValueError("a checkpoint resumes the history-window mode only (mode='window')")
        result = train(
            self.split.train,
            self.config,
            n_items=len(self.split.vocab.ids),
            item_support=self.split.item_support,
            validate=self._validator(),
            device=self.options.device,
            progress=self.options.progress,
        )
        return result, time.perf_counter() - t0

    def evaluate(self, model: GRU4Rec) -> Evaluation:
        opts = self.options
        return evaluate_protocols(
            GRU4RecScorer(model),
            self.test_data,
            opts.protocols,
            batch_size=opts.eval_batch_size,
            progress=opts.show_eval_progress,
        )

    def fit(self) -> TrainedModel:
        result, seconds = self.train()
        return TrainedModel(result, self.evaluate(result.model), seconds)

    def export(
        self,
        trained: TrainedModel,
        out_dir: str | os.PathLike[str],
        *,
        version: str,
        training_data: dict[str, Any],
        metrics: dict[str, Any],
    ) -> Path:
        """The artifact in `out_dir` (which must not exist), read back as a worker would:
        a broken one fails here, not there."""
        path = export_artifact(
            trained.result,
            self.split.vocab,
            out_dir,
            version=version,
            item_support=self.split.item_support,
            training_data=training_data,
            metrics=metrics,
        )
        read_artifact(path)
        return path


def run_pipeline(
    split: Split,
    config: TrainConfig,
    options: PipelineOptions,
    out_dir: str | os.PathLike[str] | Callable[[], tuple[str, Path]],
    *,
    version: str | None = None,
    training_data: dict[str, Any],
    metrics: Callable[[TrainedModel], dict[str, Any]],
) -> tuple[TrainedModel, str, Path]:
    """Train, evaluate and export; returns (the model, its version, the artifact's path).

    out_dir: a directory, with `version`; or a callable giving (version, directory), called
    only once the model is evaluated (e.g. `Registry.new_version_dir`).
    metrics: the manifest's metrics, from the trained model.
    """
    pipeline = TrainingPipeline(split, config, options)
    trained = pipeline.fit()
    if callable(out_dir):
        version, out_dir = out_dir()
    if version is None:
        raise ValueError("run_pipeline: a version is needed with a fixed out_dir")
    path = pipeline.export(
        trained, out_dir, version=version, training_data=training_data, metrics=metrics(trained)
    )
    return trained, version, path
