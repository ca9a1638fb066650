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

import errno
import hashlib
import io
import os
import stat
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
# Why a worker refused a model: the `reason` label of its refusal counter (a fixed set, so
# the metric's cardinality stays bounded whatever the announcements say).
REFUSAL_REASONS = (
    "outside_registry",  # not ROOT/<version> of the worker's registry once resolved
    "not_promoted",  # a version the registry never promoted (a rejected candidate)
    "symlink",  # the artifact directory or one of its files is a symbolic link
    "checksum",  # bytes that do not match the manifest or the announced checksum
    "signature",  # missing or wrong HMAC with --model-key-file
    "stale",  # an announcement older than the serving version, not marked as a rollback
    "invalid",  # anything else: missing or malformed files, shapes, version mismatch
)


class ArtifactError(ValueError):
    """An artifact that cannot be served: says what is wrong and where.

    `reason` is one of REFUSAL_REASONS, for counting refusals by kind.
    """

    def __init__(self, message: str, reason: str = "invalid") -> None:
        super().__init__(message)
        self.reason = reason if reason in REFUSAL_REASONS else "invalid"


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
    manifest_sha256: str = ""  # of the manifest bytes read (what an announcement carries)

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


def _open_dir(root: Path, follow_symlinks: bool) -> int:
    flags = os.O_RDONLY | os.O_DIRECTORY | getattr(os, "O_CLOEXEC", 0)
    if not follow_symlinks:
        flags |= os.O_NOFOLLOW
    try:
        return os.open(root, flags)
    except FileNotFoundError:
        raise ArtifactError(f"{root}: no such directory, so no {MANIFEST}") from None
    except OSError as exc:
        if not follow_symlinks and os.path.islink(root):
            raise ArtifactError(
                f"{root}: is a symbolic link; an artifact must be a real directory", "symlink"
            ) from None
        if exc.errno == errno.ENOTDIR:
            raise ArtifactError(f"{root}: not a directory, so no {MANIFEST}") from None
        raise ArtifactError(f"{root}: cannot open: {exc.strerror}") from None


def _read_file(dir_fd: int, root: Path, name: str, follow_symlinks: bool) -> bytes:
    """One artifact file's bytes, read once; only a regular file (never a FIFO or device)."""
    path = root / name
    # O_NONBLOCK: opening a FIFO must not wait for a writer; it is refused just below.
    flags = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)
    if not follow_symlinks:
        flags |= os.O_NOFOLLOW
    try:
        fd = os.open(name, flags, dir_fd=dir_fd)
    except FileNotFoundError:
        if name == MANIFEST:
            raise ArtifactError(f"{path}: no {MANIFEST} (not an artifact directory?)") from None
        raise ArtifactError(f"{path}: missing") from None
    except OSError as exc:
        if exc.errno == errno.ELOOP and not follow_symlinks:
            raise ArtifactError(
                f"{path}: is a symbolic link; artifact files must be regular files", "symlink"
            ) from None
        raise ArtifactError(f"{path}: cannot open: {exc.strerror}") from None
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            raise ArtifactError(f"{path}: not a regular file")
        return f.read()


def _parse_manifest(data: bytes, path: Path) -> Manifest:
    try:
        decoded = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise ArtifactError(f"{path}: not valid JSON: {exc}") from None
    if not isinstance(decoded, dict):
        raise ArtifactError(f"{path}: must be a JSON object")
    return Manifest.from_dict(decoded, where=str(path))


def read_manifest(directory: str | os.PathLike[str]) -> Manifest:
    root = Path(directory)
    dir_fd = _open_dir(root, follow_symlinks=True)
    try:
        data = _read_file(dir_fd, root, MANIFEST, follow_symlinks=True)
    finally:
        os.close(dir_fd)
    return _parse_manifest(data, root / MANIFEST)


def read_artifact(
    directory: str | os.PathLike[str],
    *,
    manifest_sha256: str | None = None,
    follow_symlinks: bool = True,
) -> Artifact:
    """Load and verify an artifact: checksums, shapes, finiteness, vocabulary.

    Each file is read once into memory, and the bytes whose sha256 was checked are the
    bytes parsed: a file swapped between the check and the load cannot slip in.
    `manifest_sha256` (an announcement's checksum) must then match the manifest's bytes.
    `follow_symlinks=False` refuses a symlinked directory or file (what a worker loads
    from an announcement), so a link cannot point it outside the registry.
    """
    root = Path(directory)
    dir_fd = _open_dir(root, follow_symlinks)
    blobs: dict[str, bytes] = {}
    try:
        raw_manifest = _read_file(dir_fd, root, MANIFEST, follow_symlinks)
        if manifest_sha256 is not None:
            got = hashlib.sha256(raw_manifest).hexdigest()
            if got != manifest_sha256:
                raise ArtifactError(
                    f"{root / MANIFEST}: sha256 {got[:12]}... does not match the announced "
                    f"checksum {manifest_sha256[:12]}...",
                    "checksum",
                )
        manifest = _parse_manifest(raw_manifest, root / MANIFEST)
        for name in (WEIGHTS, ITEMS):
            data = _read_file(dir_fd, root, name, follow_symlinks)
            want = manifest.files.get(name)
            if want is None:
                raise ArtifactError(f"{root / MANIFEST}: no checksum recorded for {name}")
            got = hashlib.sha256(data).hexdigest()
            if got != want:
                raise ArtifactError(
                    f"{root / name}: sha256 {got[:12]}... does not match the manifest's "
                    f"{want[:12]}...",
                    "checksum",
                )
            blobs[name] = data
    finally:
        os.close(dir_fd)
    try:
        with np.load(io.BytesIO(blobs.pop(WEIGHTS)), allow_pickle=False) as npz:
            weights = {name: npz[name] for name in npz.files}
    except Exception as exc:  # any decoding failure means a bad file
        raise ArtifactError(f"{root / WEIGHTS}: unreadable: {exc}") from None
    _check_weights(manifest, weights, str(root / WEIGHTS))
    try:
        items = orjson.loads(blobs.pop(ITEMS))
    except orjson.JSONDecodeError as exc:
        raise ArtifactError(f"{root / ITEMS}: not valid JSON: {exc}") from None
    items = _check_items(manifest, items, str(root / ITEMS))
    return Artifact(root, manifest, weights, items, hashlib.sha256(raw_manifest).hexdigest())
