"""Search spaces for `gru4stream tune`: which TrainConfig fields are searched, over what.

A space is a JSON file (`batch_training/spaces/NAME.json`, or any path):

    {
      "source": "where the ranges come from",
      "fixed": {"loss": "cross-entropy", ...},          # TrainConfig fields every trial shares
      "params": {
        "layers": {"type": "int", "low": 64, "high": 512, "step": 32},   # one layer of that size
        "learning_rate": {"type": "float", "low": 0.01, "high": 0.25, "step": 0.005},
        "logq": {"type": "categorical", "choices": [0.0, 1.0]}
      }
    }

Types: `int` (low, high, optional step or log), `float` (low, high, optional step or log),
`categorical` (choices: numbers, strings or booleans). Every key must be a TrainConfig field;
the loader builds a config at each end of every range, so a value the trainer would refuse
fails here, naming the key and the file, not in the middle of a search.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from batch_training.config import ConfigError, TrainConfig

SPACES_DIR = Path(__file__).resolve().parent / "spaces"

KINDS = ("int", "float", "categorical")
_ENTRY_KEYS = {
    "int": {"type", "low", "high", "step", "log"},
    "float": {"type", "low", "high", "step", "log"},
    "categorical": {"type", "choices"},
}
# Fields that are provenance, not hyperparameters.
_NOT_SEARCHABLE = {"notes"}


class SpaceError(ValueError):
    """A search space that cannot be used: names the file and the key."""


def _number(value: Any, *, integer: bool) -> bool:
    if isinstance(value, bool):
        return False
    return isinstance(value, int) if integer else isinstance(value, int | float)


@dataclass(frozen=True)
class Param:
    """One searched TrainConfig field."""

    name: str
    kind: str
    low: float | None = None
    high: float | None = None
    step: float | None = None
    log: bool = False
    choices: tuple[Any, ...] = ()

    def suggest(self, trial: Any) -> Any:
        """The trial's value (an `optuna.Trial`)."""
        if self.kind == "int":
            return trial.suggest_int(
                self.name, int(self.low), int(self.high), step=int(self.step or 1), log=self.log
            )
        if self.kind == "float":
            return trial.suggest_float(
                self.name, float(self.low), float(self.high), step=self.step, log=self.log
            )
        return trial.suggest_categorical(self.name, list(self.choices))

    def extremes(self) -> list[Any]:
        """The values the loader checks: both ends of a range, every choice."""
        if self.kind == "categorical":
            return list(self.choices)
        cast = int if self.kind == "int" else float
        return [cast(self.low), cast(self.high)]

    def contains(self, value: Any) -> bool:
        """Whether `value` is one of the points this parameter can take."""
        if self.kind == "categorical":
            return value in self.choices
        if not _number(value, integer=self.kind == "int"):
            return False
        if not float(self.low) <= value <= float(self.high):
            return False
        if self.step is None:
            return True
        steps = (value - float(self.low)) / float(self.step)
        return abs(steps - round(steps)) < 1e-6

    def to_dict(self) -> dict[str, Any]:
        if self.kind == "categorical":
            return {"type": self.kind, "choices": list(self.choices)}
        out: dict[str, Any] = {"type": self.kind, "low": self.low, "high": self.high}
        if self.step is not None:
            out["step"] = self.step
        if self.log:
            out["log"] = True
        return out


def config_with(base: TrainConfig, values: dict[str, Any], where: str = "tune") -> TrainConfig:
    """`base` with the searched values; an int for `layers` is one layer of that size."""
    merged = base.to_dict()
    merged.pop("notes")
    for key, value in values.items():
        if isinstance(value, float):  # stepped floats come back as 0.30000000000000004
            value = float(f"{value:.12g}")
        merged[key] = [value] if key == "layers" and not isinstance(value, list) else value
    return TrainConfig.from_dict(merged, where=where)


@dataclass(frozen=True)
class SearchSpace:
    name: str
    source: str
    fixed: dict[str, Any]
    params: tuple[Param, ...]

    def base(self) -> TrainConfig:
        return TrainConfig.from_dict(dict(self.fixed), where=f"space {self.name} fixed")

    def suggest(self, trial: Any, base: TrainConfig) -> TrainConfig:
        """A trial's TrainConfig: `base` with one value drawn for every searched field."""
        values = {p.name: p.suggest(trial) for p in self.params}
        return config_with(base, values, where=f"space {self.name}, trial {trial.number}")

    def values_of(self, config: TrainConfig, where: str) -> dict[str, Any]:
        """The searched fields' values in `config` (one layer's size for `layers`), to try
        as a trial; a value the space cannot take is a SpaceError naming it."""
        values = {}
        for param in self.params:
            value = getattr(config, param.name)
            if param.name == "layers" and param.kind != "categorical":
                if len(value) != 1:
                    raise SpaceError(f"{where}: layers {list(value)}: the space searches one layer")
                value = value[0]
            if isinstance(value, tuple):
                value = list(value)
            if not param.contains(value):
                raise SpaceError(
                    f"{where}: {param.name}={value!r} is not in space {self.name} "
                    f"({param.to_dict()})"
                )
            values[param.name] = value
        return values

    def without(self, names: set[str]) -> SearchSpace:
        """The space with these fields no longer searched (fixed from the command line)."""
        return dataclasses.replace(
            self, params=tuple(p for p in self.params if p.name not in names)
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "fixed": self.fixed,
            "params": {p.name: p.to_dict() for p in self.params},
        }


def list_spaces() -> list[str]:
    return sorted(p.stem for p in SPACES_DIR.glob("*.json"))


def space_path(name: str) -> Path:
    """A space's file: a name in batch_training/spaces, or a path to a JSON file."""
    if name.endswith(".json") or "/" in name:
        return Path(name)
    path = SPACES_DIR / f"{name}.json"
    if not path.is_file():
        raise SpaceError(f"no search space {name!r}; available: {list_spaces()} or a .json path")
    return path


def load_space(name: str) -> SearchSpace:
    """Read and check a space (see the module docstring); SpaceError says what is wrong."""
    path = space_path(name)
    where = path.name
    try:
        data = orjson.loads(path.read_bytes())
    except FileNotFoundError:
        raise SpaceError(f"{path}: no such file") from None
    except orjson.JSONDecodeError as exc:
        raise SpaceError(f"{where}: not valid JSON: {exc}") from None
    if not isinstance(data, dict) or not isinstance(data.get("params"), dict):
        raise SpaceError(f"{where}: must be an object with a 'params' object")
    unknown = sorted(set(data) - {"source", "notes", "fixed", "params"})
    if unknown:
        raise SpaceError(f"{where}: unknown top-level keys {unknown}")
    fixed = data.get("fixed", {})
    if not isinstance(fixed, dict):
        raise SpaceError(f"{where}: 'fixed' must be an object of TrainConfig fields")
    fields = {f.name for f in dataclasses.fields(TrainConfig)} - _NOT_SEARCHABLE
    params = tuple(_param(key, entry, fields, where) for key, entry in data["params"].items())
    if not params:
        raise SpaceError(f"{where}: 'params' is empty, nothing to search")
    both = sorted(set(fixed) & {p.name for p in params})
    if both:
        raise SpaceError(f"{where}: {both} both fixed and searched")
    stem = path.stem if path.parent == SPACES_DIR else str(path)
    space = SearchSpace(stem, str(data.get("source", "")), fixed, params)
    try:
        base = space.base()
        for param in params:
            for value in param.extremes():
                config_with(base, {param.name: value}, where=f"{where}: params.{param.name}")
    except ConfigError as exc:
        raise SpaceError(str(exc)) from None
    return space


def _param(key: str, entry: Any, fields: set[str], where: str) -> Param:
    if key not in fields:
        raise SpaceError(
            f"{where}: unknown TrainConfig key {key!r} in params; known: {sorted(fields)}"
        )
    here = f"{where}: params.{key}"
    if not isinstance(entry, dict) or entry.get("type") not in KINDS:
        raise SpaceError(f"{here}: needs an object with 'type' one of {KINDS}")
    kind = entry["type"]
    extra = sorted(set(entry) - _ENTRY_KEYS[kind])
    if extra:
        raise SpaceError(f"{here}: unknown keys {extra} for type {kind!r}")
    if kind == "categorical":
        choices = entry.get("choices")
        if not isinstance(choices, list) or not choices:
            raise SpaceError(f"{here}: 'choices' must be a non-empty list")
        if not all(c is None or isinstance(c, bool | int | float | str) for c in choices):
            raise SpaceError(f"{here}: choices must be numbers, strings or booleans")
        return Param(key, kind, choices=tuple(choices))
    integer = kind == "int"
    low, high, step, log = entry.get("low"), entry.get("high"), entry.get("step"), entry.get("log")
    if not (_number(low, integer=integer) and _number(high, integer=integer)) or low > high:
        raise SpaceError(f"{here}: needs {kind} 'low' <= 'high', got {low!r}, {high!r}")
    if log is not None and not isinstance(log, bool):
        raise SpaceError(f"{here}: 'log' must be true or false")
    if step is not None and (not _number(step, integer=integer) or step <= 0):
        raise SpaceError(f"{here}: 'step' must be a positive {kind}")
    if log and low <= 0:
        raise SpaceError(f"{here}: a log range needs 'low' > 0")
    if log and step is not None and step != 1:
        raise SpaceError(f"{here}: 'step' and 'log' exclude each other")  # as in Optuna
    return Param(key, kind, low=low, high=high, step=step, log=bool(log))
