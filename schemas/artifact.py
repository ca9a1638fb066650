"""The model artifact: one directory per version, written by training, read by workers.

    <dir>/manifest.json   version, hyperparameters, shapes, data range, metrics, checksums
    <dir>/weights.npz     plain numpy arrays (no pickles), names below
    <dir>/items.json      external item ids, position = internal index

Weights (torch GRUCell conventions, gates ordered r, z, n; H = hidden size of a layer):

    gru.{l}.weight_ih  (3H, in_l)   in_0 = embedding dim, or n_items for one-hot input
    gru.{l}.weight_hh  (3H, H)
    gru.{l}.bias_ih    (3H,)
    gru.{l}.bias_hh    (3H,)
    item_embedding     (n_items, d)  only when input_kind == "embedding"
    output_weight      (n_items, H_last)  also the input embedding when input_kind == "shared"
    output_bias        (n_items,)
    item_support       (n_items,)    training-set click counts, for the popularity fallback

One GRU step, for a layer with input x and state h:
    r = sigmoid(W_ir x + b_ir + W_hr h + b_hr)
    z = sigmoid(W_iz x + b_iz + W_hz h + b_hz)
    n = tanh(W_in x + b_in + r * (W_hn h + b_hn))
    h' = (1 - z) * n + z * h
Scores are h_last @ output_weight.T + output_bias (the loss's final activation is monotone,
so it does not change the ranking and is left out).
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import orjson

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
WEIGHTS = "weights.npz"
ITEMS = "items.json"
INPUT_KINDS = ("shared", "embedding", "onehot")


class ArtifactError(ValueError):
    """An artifact that cannot be served: says what is wrong and where."""


@dataclass(frozen=True)
class Manifest:
    version: str
    input_kind: str
    n_items: int
    layers: tuple[int, ...]
    embedding_dim: int  # 0 unless input_kind == "embedding"
    hyperparameters: dict[str, Any] = field(default_factory=dict)
    training_data: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    created_at: int = 0  # epoch ms
    files: dict[str, str] = field(default_factory=dict)  # name -> sha256
    format_version: int = FORMAT_VERSION

    def to_dict(self) -> dict[str, Any]:
        return {
            "format_version": self.format_version,
            "version": self.version,
            "input_kind": self.input_kind,
            "n_items": self.n_items,
            "layers": list(self.layers),
            "embedding_dim": self.embedding_dim,
            "hyperparameters": self.hyperparameters,
            "training_data": self.training_data,
            "metrics": self.metrics,
            "created_at": self.created_at,
            "files": self.files,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str = "manifest") -> Manifest:
        try:
            manifest = cls(
                version=str(d["version"]),
                input_kind=str(d["input_kind"]),
                n_items=int(d["n_items"]),
                layers=tuple(int(x) for x in d["layers"]),
                embedding_dim=int(d.get("embedding_dim", 0)),
                hyperparameters=dict(d.get("hyperparameters") or {}),
                training_data=dict(d.get("training_data") or {}),
                metrics=dict(d.get("metrics") or {}),
                created_at=int(d.get("created_at", 0)),
                files={str(k): str(v) for k, v in dict(d.get("files") or {}).items()},
                format_version=int(d.get("format_version", -1)),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ArtifactError(f"{where}: missing or malformed field: {exc}") from None
        if manifest.format_version != FORMAT_VERSION:
            raise ArtifactError(
                f"{where}: format_version {manifest.format_version}, this code reads "
                f"{FORMAT_VERSION}"
            )
        if manifest.input_kind not in INPUT_KINDS:
            raise ArtifactError(f"{where}: input_kind {manifest.input_kind!r} not in {INPUT_KINDS}")
        if manifest.n_items < 1 or not manifest.layers or min(manifest.layers) < 1:
            raise ArtifactError(f"{where}: n_items and layer sizes must be positive")
        return manifest


@dataclass(frozen=True)
class Artifact:
    path: Path
    manifest: Manifest
    weights: dict[str, np.ndarray]
    items: tuple[str, ...]

    @property
    def version(self) -> str:
        return self.manifest.version


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def expected_shapes(manifest: Manifest) -> dict[str, tuple[int, ...]]:
    """The shape every weight must have, derived from the manifest alone."""
    n, layers = manifest.n_items, manifest.layers
    shapes: dict[str, tuple[int, ...]] = {
        "output_weight": (n, layers[-1]),
        "output_bias": (n,),
        "item_support": (n,),
    }
    if manifest.input_kind == "embedding":
        shapes["item_embedding"] = (n, manifest.embedding_dim)
        in_dim = manifest.embedding_dim
    elif manifest.input_kind == "shared":
        in_dim = layers[-1]
    else:
        in_dim = n
    for i, hidden in enumerate(layers):
        shapes[f"gru.{i}.weight_ih"] = (3 * hidden, in_dim)
        shapes[f"gru.{i}.weight_hh"] = (3 * hidden, hidden)
        shapes[f"gru.{i}.bias_ih"] = (3 * hidden,)
        shapes[f"gru.{i}.bias_hh"] = (3 * hidden,)
        in_dim = hidden
    return shapes


def _check_weights(manifest: Manifest, weights: dict[str, np.ndarray], where: str) -> None:
    shapes = expected_shapes(manifest)
    missing = sorted(set(shapes) - set(weights))
    if missing:
        raise ArtifactError(f"{where}: missing arrays {missing}")
    for name, shape in shapes.items():
        array = weights[name]
        if tuple(array.shape) != shape:
            raise ArtifactError(f"{where}: {name} has shape {tuple(array.shape)}, expected {shape}")
        if not np.issubdtype(array.dtype, np.floating):
            raise ArtifactError(f"{where}: {name} has dtype {array.dtype}, expected floating point")
        if not np.all(np.isfinite(array)):
            raise ArtifactError(f"{where}: {name} holds NaN or infinite values")


def _check_items(manifest: Manifest, items: Any, where: str) -> tuple[str, ...]:
    if not isinstance(items, list) or not all(isinstance(i, str) and i for i in items):
        raise ArtifactError(f"{where}: must be a JSON list of non-empty strings")
    if len(items) != manifest.n_items:
        raise ArtifactError(f"{where}: {len(items)} items, manifest says {manifest.n_items}")
    if len(set(items)) != len(items):
        raise ArtifactError(f"{where}: duplicate item ids")
    return tuple(items)


def write_artifact(
    directory: str | os.PathLike[str],
    manifest: Manifest,
    weights: dict[str, np.ndarray],
    items: list[str] | tuple[str, ...],
) -> Path:
    """Write an artifact atomically (temp dir + rename); refuses to overwrite a version."""
    target = Path(directory)
    if target.exists():
        raise ArtifactError(f"{target}: already exists; artifacts are immutable")
    weights = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in weights.items()}
    _check_weights(manifest, weights, str(target))
    _check_items(manifest, list(items), str(target / ITEMS))
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    np.savez(staging / WEIGHTS, **weights)
    (staging / ITEMS).write_bytes(orjson.dumps(list(items)))
    files = {name: sha256_file(staging / name) for name in (WEIGHTS, ITEMS)}
    final = Manifest(**{**manifest.__dict__, "files": files})
    (staging / MANIFEST).write_bytes(orjson.dumps(final.to_dict(), option=orjson.OPT_INDENT_2))
    os.rename(staging, target)
    return target


def manifest_checksum(directory: str | os.PathLike[str]) -> str:
    return sha256_file(Path(directory) / MANIFEST)


def read_manifest(directory: str | os.PathLike[str]) -> Manifest:
    path = Path(directory) / MANIFEST
    if not path.is_file():
        raise ArtifactError(f"{path}: no manifest (not an artifact directory?)")
    try:
        data = orjson.loads(path.read_bytes())
    except orjson.JSONDecodeError as exc:
        raise ArtifactError(f"{path}: not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ArtifactError(f"{path}: must be a JSON object")
    return Manifest.from_dict(data, where=str(path))


def read_artifact(directory: str | os.PathLike[str]) -> Artifact:
    """Load and verify an artifact: checksums, shapes, finiteness, vocabulary."""
    root = Path(directory)
    manifest = read_manifest(root)
    for name in (WEIGHTS, ITEMS):
        path = root / name
        if not path.is_file():
            raise ArtifactError(f"{path}: missing")
        want = manifest.files.get(name)
        if want is None:
            raise ArtifactError(f"{root / MANIFEST}: no checksum recorded for {name}")
        got = sha256_file(path)
        if got != want:
            raise ArtifactError(
                f"{path}: sha256 {got[:12]}... does not match the manifest's {want[:12]}..."
            )
    try:
        with np.load(root / WEIGHTS, allow_pickle=False) as npz:
            weights = {name: npz[name] for name in npz.files}
    except Exception as exc:  # any decoding failure means a bad file
        raise ArtifactError(f"{root / WEIGHTS}: unreadable: {exc}") from None
    _check_weights(manifest, weights, str(root / WEIGHTS))
    try:
        items = orjson.loads((root / ITEMS).read_bytes())
    except orjson.JSONDecodeError as exc:
        raise ArtifactError(f"{root / ITEMS}: not valid JSON: {exc}") from None
    return Artifact(root, manifest, weights, _check_items(manifest, items, str(root / ITEMS)))
