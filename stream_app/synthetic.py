"""Random but valid model artifacts, for tests and benchmarks of the serving path.

The weights are drawn at the scale of a trained GRU4Rec (uniform +-1/sqrt(H), like torch's
GRU initialisation) so hidden states and scores have realistic spreads; the item support
follows a Zipf-like law, like click counts do. With `rank`, item vectors (output weights and
input embeddings) lie near a low-dimensional subspace, as trained embeddings do; i.i.d.
uniform item vectors are the worst case for graph search (HNSW) in 100 dimensions.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np

from schemas.artifact import Manifest, expected_shapes, write_artifact


def random_weights(
    manifest: Manifest, seed: int = 0, rank: int | None = None
) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    weights: dict[str, np.ndarray] = {}
    for name, shape in expected_shapes(manifest).items():
        if name == "item_support":
            ranks = rng.permutation(manifest.n_items) + 1
            weights[name] = np.floor(1000.0 / ranks).astype(np.float32) + 1.0
            continue
        if rank and name in ("output_weight", "item_embedding"):
            weights[name] = _low_rank(rng, shape, rank)
            continue
        fan = shape[-1] if len(shape) == 2 else manifest.layers[-1]
        bound = 1.0 / np.sqrt(fan) if name.startswith("gru.") else 0.5
        if name == "output_bias":
            bound = 0.1
        weights[name] = rng.uniform(-bound, bound, size=shape).astype(np.float32)
    return weights


def _low_rank(rng: np.random.Generator, shape: tuple[int, ...], rank: int) -> np.ndarray:
    """(n, d) rows near a rank-`rank` subspace, entries with std ~0.29 like uniform +-0.5."""
    n, d = shape
    factors = rng.standard_normal((n, rank), dtype=np.float32)
    basis = rng.standard_normal((rank, d), dtype=np.float32) * np.float32(0.28 / np.sqrt(rank))
    noise = rng.standard_normal((n, d), dtype=np.float32) * np.float32(0.05)
    return factors @ basis + noise


def write_random_artifact(
    directory: str | os.PathLike[str],
    *,
    version: str = "v1",
    n_items: int = 100,
    layers: tuple[int, ...] = (32,),
    input_kind: str = "shared",
    embedding_dim: int = 0,
    seed: int = 0,
    items: list[str] | None = None,
) -> Path:
    """Write an artifact with random weights; item ids are "i0", "i1", ... unless given."""
    if input_kind == "embedding" and embedding_dim <= 0:
        embedding_dim = 16
    manifest = Manifest(
        version=version,
        input_kind=input_kind,
        n_items=n_items,
        layers=tuple(layers),
        embedding_dim=embedding_dim if input_kind == "embedding" else 0,
        hyperparameters={"synthetic": True, "seed": seed},
        created_at=int(time.time() * 1000),
    )
    ids = items if items is not None else [f"i{i}" for i in range(n_items)]
    return write_artifact(directory, manifest, random_weights(manifest, seed), ids)
