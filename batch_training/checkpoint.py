"""A history-window training run saved after every epoch, so that it can stop and go on.

An epoch of MovieLens-1M in the window mode takes about two minutes on two CPU threads, and
the seed paper's setup trains until validation stops improving (tens of epochs). With
`gru4stream train --checkpoint FILE` the run writes its whole state to FILE after each
epoch; the same command run again reads FILE and continues with the next epoch, exactly as
if it had never stopped (bit for bit on the CPU): the weights, Adam's moments, both random
generators (the negatives and the order of the next epoch come from them), the history and
the best epoch so far.

A checkpoint belongs to one configuration and one training set: resuming with another one
is refused, with the fields that differ. Only `n_epochs` may change, to extend a run.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from batch_training.config import TrainConfig

FORMAT = 1


class CheckpointError(ValueError):
    """A checkpoint that cannot be resumed here: says which file and why."""


def fingerprint(config: TrainConfig, n_items: int, items: np.ndarray) -> dict[str, Any]:
    """What a checkpoint must match to be resumed: the configuration and the training data."""
    settings = config.to_dict()
    del settings["n_epochs"]  # a run may be extended
    digest = hashlib.sha256(np.ascontiguousarray(items, dtype=np.int64).tobytes()).hexdigest()
    return {"format": FORMAT, "config": settings, "n_items": n_items, "train_items": digest}


def save(path: Path, state: dict[str, Any]) -> None:
    """Write `state` to `path` whole or not at all (a crash mid-write leaves the old file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    torch.save(state, partial)
    os.replace(partial, path)


def load(path: Path, expected: dict[str, Any]) -> dict[str, Any]:
    """The state saved in `path`, if it was saved by a run of the `expected` fingerprint."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - whatever the file holds, the answer is the same
        raise CheckpointError(f"{path}: not a readable training checkpoint ({exc})") from None
    saved = state.get("fingerprint") if isinstance(state, dict) else None
    if not isinstance(saved, dict):
        raise CheckpointError(f"{path}: not a training checkpoint (no fingerprint)")
    if saved != expected:
        raise CheckpointError(f"{path}: saved by another run: {_differences(saved, expected)}")
    return state


def _differences(saved: dict[str, Any], expected: dict[str, Any]) -> str:
    out = []
    for key in sorted(set(saved) | set(expected)):
        old, new = saved.get(key), expected.get(key)
        if key == "config" and isinstance(old, dict) and isinstance(new, dict):
            out += [
                f"{name} {old.get(name)!r} (saved) vs {new.get(name)!r}"
                for name in sorted(set(old) | set(new))
                if old.get(name) != new.get(name)
            ]
        elif key == "train_items" and old != new:
            out.append("the training data differs")
        elif old != new:
            out.append(f"{key} {old!r} (saved) vs {new!r}")
    return "; ".join(out)
