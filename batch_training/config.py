"""GRU4Rec hyperparameters: one frozen dataclass, and presets read from `presets/*.json`.

Names and defaults follow the authors' implementation (Hidasi et al. 2016; Hidasi &
Karatzoglou 2018), so the published parameter files map onto this one to one.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

PRESETS_DIR = Path(__file__).resolve().parent / "presets"

LOSSES = ("cross-entropy", "bpr-max", "top1-max", "bpr", "top1")
FINAL_ACTIVATIONS = ("elu", "linear")
OPTIMIZERS = ("adagrad", "adam")
MODES = ("session", "window")


class ConfigError(ValueError):
    """A configuration or preset that cannot be used: says which key and why."""


@dataclass(frozen=True)
class TrainConfig:
    # What is optimised. cross-entropy is a softmax over the target and the negatives;
    # bpr-max / top1-max weight the negatives by their softmax (Hidasi & Karatzoglou 2018);
    # bpr / top1 are the pairwise losses of the first paper, averaged over the negatives.
    loss: str = "cross-entropy"
    # Applied to the scores before the ranking losses; cross-entropy always uses the softmax.
    final_act: str = "elu"
    elu_param: float = 0.5
    # Hidden sizes of the stacked GRU layers.
    layers: tuple[int, ...] = (100,)
    # > 0: a separate item embedding of this size feeds the first layer.
    embedding: int = 0
    # True: the output weights double as the input embedding (ignores `embedding`).
    # With neither, the first layer reads the item as a one-hot vector (a row lookup).
    constrained_embedding: bool = True
    dropout_p_embed: float = 0.0
    dropout_p_hidden: float = 0.0
    learning_rate: float = 0.05
    # Momentum on the Adagrad-scaled step (the authors' optimiser); unused by Adam.
    momentum: float = 0.0
    optimizer: str = "adagrad"
    # Adagrad updates only the item rows a step touches (the authors' indexed updates);
    # False computes dense gradients and updates every row, kept to measure the difference.
    sparse_updates: bool = True
    # Coupled L2 as torch's Adam applies it; only with optimizer="adam" (the authors use none).
    weight_decay: float = 0.0
    # Parallel session lanes per mini-batch; the in-batch targets are the shared negatives.
    batch_size: int = 64
    # Extra negatives per mini-batch, shared by all lanes, drawn ~ support ** sample_alpha.
    n_sample: int = 2048
    sample_alpha: float = 0.5
    # False: only the sampled items are negatives (as in models trained with per-example
    # sampled negatives, e.g. ReChorus); needs n_sample > 0.
    in_batch_negatives: bool = True
    # How many sampled item ids are drawn at once (the authors' default: 10 million).
    sample_cache_size: int = 10_000_000
    # Weight of the score regulariser of BPR-max.
    bpreg: float = 1.0
    # Strength of the logQ correction of the cross-entropy loss (0 = off).
    logq: float = 0.0
    n_epochs: int = 10
    # Epochs without a better validation score before stopping (needs a validate callback).
    patience: int = 3
    seed: int = 42
    # > 0: sessions are cut into pieces so no target sees more than this many earlier items
    # (the fixed history window of sequence models such as ReChorus); 0 = whole sessions.
    max_history: int = 0
    # "session": session-parallel lanes (batch_training.train). "window": ReChorus's training
    # of sequential models (batch_training.window_train): every position is one example, its
    # last `max_history` items run through the GRU from a zero state (backpropagation through
    # the window), `n_sample` uniform negatives per example outside the user's items, BPR
    # (or cross-entropy, where n_sample 0 scores the target against every item).
    mode: str = "session"
    # bfloat16 autocast for the matrix products, on CUDA only (CPU always runs float32). Off by
    # default: GRU4Rec's per-step products are small, so casts can cost more than they save;
    # measure with benchmarks/bench_training.py --variants sparse amp.
    mixed_precision: bool = False
    # Free-form provenance, not used by training (which preset, why these values).
    notes: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "layers", tuple(int(x) for x in self.layers))
        self.validate()

    def validate(self) -> None:
        def bad(key: str, why: str) -> ConfigError:
            return ConfigError(f"TrainConfig.{key}={getattr(self, key)!r}: {why}")

        if self.loss not in LOSSES:
            raise bad("loss", f"must be one of {LOSSES}")
        if self.final_act not in FINAL_ACTIVATIONS:
            raise bad("final_act", f"must be one of {FINAL_ACTIVATIONS}")
        if self.final_act == "elu" and self.elu_param <= 0:
            raise bad("elu_param", "must be > 0 with final_act='elu' (use 'linear' instead)")
        if not self.layers or min(self.layers) < 1:
            raise bad("layers", "needs at least one layer, every size >= 1")
        if self.embedding < 0:
            raise bad("embedding", "must be >= 0")
        for key in ("dropout_p_embed", "dropout_p_hidden"):
            if not 0.0 <= getattr(self, key) < 1.0:
                raise bad(key, "must be in [0, 1)")
        if self.learning_rate <= 0:
            raise bad("learning_rate", "must be > 0")
        if not 0.0 <= self.momentum < 1.0:
            raise bad("momentum", "must be in [0, 1)")
        if self.optimizer not in OPTIMIZERS:
            raise bad("optimizer", f"must be one of {OPTIMIZERS}")
        if self.weight_decay < 0:
            raise bad("weight_decay", "must be >= 0")
        if self.weight_decay > 0 and self.optimizer != "adam":
            raise bad("weight_decay", "only supported with optimizer='adam'")
        if self.batch_size < 1:
            raise bad("batch_size", "must be >= 1")
        if self.n_sample < 0:
            raise bad("n_sample", "must be >= 0")
        if not self.in_batch_negatives and self.n_sample < 1:
            raise bad("in_batch_negatives", "False needs n_sample >= 1 sampled negatives")
        if self.sample_alpha < 0:
            raise bad("sample_alpha", "must be >= 0")
        if self.n_sample > 0 and self.sample_cache_size < self.n_sample:
            raise bad("sample_cache_size", "must hold at least one mini-batch of samples")
        if self.bpreg < 0 or self.logq < 0:
            raise bad("bpreg" if self.bpreg < 0 else "logq", "must be >= 0")
        if self.n_epochs < 1:
            raise bad("n_epochs", "must be >= 1")
        if self.patience < 1:
            raise bad("patience", "must be >= 1")
        if self.max_history < 0 or self.max_history == 1:
            raise bad("max_history", "must be 0 (off) or >= 2")
        if self.mode not in MODES:
            raise bad("mode", f"must be one of {MODES}")
        if self.mode == "window":
            self._validate_window(bad)

    def _validate_window(self, bad: Callable[[str, str], ConfigError]) -> None:
        """What the history-window mode implements: ReChorus's GRU4Rec, BPR or a softmax."""
        needs = {
            "max_history": (self.max_history >= 2, "the window: must be >= 2"),
            "loss": (self.loss in ("bpr", "cross-entropy"), "must be 'bpr' or 'cross-entropy'"),
            "optimizer": (self.optimizer == "adam", "must be 'adam'"),
            "embedding": (self.embedding > 0, "must be > 0 (an item embedding feeds the GRU)"),
            "constrained_embedding": (not self.constrained_embedding, "must be false"),
            "layers": (len(self.layers) == 1, "must be one GRU layer"),
            "dropout_p_embed": (self.dropout_p_embed == 0, "must be 0"),
            "dropout_p_hidden": (self.dropout_p_hidden == 0, "must be 0"),
            "n_sample": (
                self.n_sample >= 1 or (self.n_sample == 0 and self.loss == "cross-entropy"),
                "negatives per example: must be >= 1 (0, every item, with cross-entropy)",
            ),
        }
        for key, (ok, why) in needs.items():
            if not ok:
                raise bad(key, f"{why} with mode='window'")

    @property
    def input_kind(self) -> str:
        """How the first layer reads an item, in artifact terms."""
        if self.constrained_embedding:
            return "shared"
        return "embedding" if self.embedding > 0 else "onehot"

    def replace(self, **changes: Any) -> TrainConfig:
        unknown = sorted(set(changes) - {f.name for f in dataclasses.fields(self)})
        if unknown:
            raise ConfigError(f"unknown TrainConfig keys: {unknown}")
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["layers"] = list(self.layers)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str = "config") -> TrainConfig:
        """Build from plain values, checking keys and types (JSON numbers, bools, lists)."""
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - set(fields))
        if unknown:
            raise ConfigError(f"{where}: unknown keys {unknown}; known: {sorted(fields)}")
        defaults = cls()
        values: dict[str, Any] = {}
        for key, value in d.items():
            values[key] = _coerce(key, value, getattr(defaults, key), where)
        try:
            return cls(**values)
        except ConfigError as exc:
            raise ConfigError(f"{where}: {exc}") from None


def _coerce(key: str, value: Any, default: Any, where: str) -> Any:
    """Accept a value only if it has the default's type (ints are fine for floats)."""
    ok: bool
    if isinstance(default, bool):
        ok = isinstance(value, bool)
    elif isinstance(default, int):
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif isinstance(default, float):
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        value = float(value) if ok else value
    elif isinstance(default, str):
        ok = isinstance(value, str)
    elif isinstance(default, tuple):
        ok = isinstance(value, list | tuple) and all(
            isinstance(x, int) and not isinstance(x, bool) for x in value
        )
        value = tuple(value) if ok else value
    else:
        ok = True
    if not ok:
        raise ConfigError(
            f"{where}: {key}={value!r} has type {type(value).__name__}, "
            f"expected {type(default).__name__}"
        )
    return value


def list_presets() -> list[str]:
    return sorted(p.stem for p in PRESETS_DIR.glob("*.json"))


def read_preset(name: str) -> dict[str, Any]:
    """The whole preset file: {"config": {...}, "source": "...", "notes": "..."}."""
    path = PRESETS_DIR / f"{name}.json"
    if not path.is_file():
        raise ConfigError(f"no preset {name!r}; available: {list_presets()}")
    try:
        data = orjson.loads(path.read_bytes())
    except orjson.JSONDecodeError as exc:
        raise ConfigError(f"{path.name}: not valid JSON: {exc}") from None
    if not isinstance(data, dict) or not isinstance(data.get("config"), dict):
        raise ConfigError(f"{path.name}: must be an object with a 'config' object")
    return data


def load_preset(name: str, **overrides: Any) -> TrainConfig:
    """A preset's config, with optional overrides (same key and type checks)."""
    data = read_preset(name)
    values = {**data["config"], **overrides}
    values.setdefault("notes", f"preset {name}")
    return TrainConfig.from_dict(values, where=f"preset {name}")


def apply_overrides(config: TrainConfig, pairs: list[str]) -> TrainConfig:
    """`key=value` strings from a command line: values parse as JSON, else stay strings.

    `layers` also accepts `512` or `256,128`.
    """
    values = config.to_dict()
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key:
            raise ConfigError(f"override {pair!r}: expected key=value")
        if key not in values:
            raise ConfigError(f"override {pair!r}: unknown key {key!r}; known: {sorted(values)}")
        if key == "layers" and "[" not in raw:
            try:
                values[key] = [int(x) for x in raw.split(",")]
            except ValueError:
                raise ConfigError(f"override {pair!r}: layers must be integers") from None
            continue
        try:
            values[key] = orjson.loads(raw)
        except orjson.JSONDecodeError:
            values[key] = raw
    return TrainConfig.from_dict(values, where="overrides")
