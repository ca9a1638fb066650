"""Small real model artifacts for the registry, publish, replay and retrain tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from schemas.artifact import Manifest, expected_shapes, write_artifact


def make_artifact(
    directory: str | Path,
    *,
    version: str = "v0001",
    n_items: int = 20,
    layers: tuple[int, ...] = (8,),
    input_kind: str = "shared",
    embedding_dim: int = 0,
    seed: int = 0,
    items: list[str] | None = None,
    metrics: dict | None = None,
) -> Path:
    """Write a valid artifact with random weights (scale 0.5, so scores are not all equal)."""
    manifest = Manifest(
        version=version,
        input_kind=input_kind,
        n_items=n_items,
        layers=layers,
        embedding_dim=embedding_dim,
        hyperparameters={"loss": "cross-entropy"},
        training_data={"n_events": 0},
        metrics=metrics or {"recall@20": 0.1},
        created_at=1_700_000_000_000,
    )
    rng = np.random.default_rng(seed)
    weights = {
        name: (0.5 * rng.standard_normal(shape)).astype(np.float32)
        for name, shape in expected_shapes(manifest).items()
    }
    weights["item_support"] = np.abs(weights["item_support"]) * 10
    items = items if items is not None else [f"item-{i}" for i in range(n_items)]
    return write_artifact(directory, manifest, weights, items)
