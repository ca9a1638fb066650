"""A trained model to a versioned artifact (`schemas.artifact`): plain arrays, no pickles."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from batch_training.train import TrainResult
from schemas.artifact import Manifest, write_artifact


class Vocab(Protocol):
    """What export needs of `batch_training.sessions.ItemVocab`."""

    ids: tuple[str, ...]


def export_artifact(
    result: TrainResult,
    vocab: Vocab,
    out_dir: str | os.PathLike[str],
    *,
    version: str,
    item_support: np.ndarray,
    training_data: dict[str, Any],
    metrics: dict[str, Any],
) -> Path:
    """Write the artifact into `out_dir` (the version's own directory, which must not exist).

    The manifest's hyperparameters are the training config; `training_data` (e.g. the time
    range) and `metrics` go in as given, with the best epoch and the epochs run added to the
    training data.
    """
    model = result.model
    items = tuple(str(i) for i in vocab.ids)
    if len(items) != model.n_items:
        raise ValueError(f"vocabulary has {len(items)} items, the model {model.n_items}")
    support = np.asarray(item_support, dtype=np.float32)
    if support.shape != (model.n_items,):
        raise ValueError(f"item_support has shape {support.shape}, expected ({model.n_items},)")
    weights = model.export_weights()
    weights["item_support"] = support
    manifest = Manifest(
        version=version,
        input_kind=model.input_kind,
        n_items=model.n_items,
        layers=model.layers,
        embedding_dim=model.embedding_dim,
        hyperparameters=result.config.to_dict(),
        training_data={
            **training_data,
            "best_epoch": result.best_epoch,
            "epochs_run": len(result.history),
        },
        metrics=dict(metrics),
        created_at=int(time.time() * 1000),
    )
    return write_artifact(out_dir, manifest, weights, items)
