"""A history-window run stopped and resumed from its checkpoint ends as an unbroken one."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from batch_training.checkpoint import CheckpointError
from batch_training.cli import train_main
from batch_training.window_train import train_windows
from tests.test_windows import sequences, window_config

N_ITEMS = 30


def data():
    rng = np.random.default_rng(5)
    return sequences(*(rng.integers(0, N_ITEMS, int(n)).tolist() for n in rng.integers(3, 9, 40)))


def validate_by_loss_of_a_fixed_batch(model) -> float:
    """A validation metric that moves with the weights (higher is better)."""
    with torch.no_grad():
        return -float(model.output_weight.square().mean())


def run(epochs: int, checkpoint=None, train=None, **changes):
    config = window_config(n_epochs=epochs, batch_size=16, **changes)
    return train_windows(
        train or data(),
        config,
        n_items=N_ITEMS,
        validate=validate_by_loss_of_a_fixed_batch,
        device="cpu",
        progress=False,
        checkpoint=checkpoint,
    )


def weights(result) -> dict[str, torch.Tensor]:
    return result.model.state_dict()


def without_timing(history):
    timing = ("seconds", "events_per_s", "valid_seconds")
    return [{k: v for k, v in h.items() if k not in timing} for h in history]


def test_a_resumed_run_ends_exactly_as_an_unbroken_one(tmp_path):
    straight = run(3)
    path = tmp_path / "run.ckpt"
    first = run(1, checkpoint=path)
    assert path.exists() and len(first.history) == 1
    resumed = run(3, checkpoint=path)  # the same run, extended to 3 epochs
    assert without_timing(resumed.history) == without_timing(straight.history)
    assert resumed.best_epoch == straight.best_epoch
    for name, value in weights(straight).items():
        torch.testing.assert_close(weights(resumed)[name], value, rtol=0, atol=0)
    again = run(3, checkpoint=path)  # nothing left to train: the saved best model comes back
    assert without_timing(again.history) == without_timing(straight.history)
    for name, value in weights(straight).items():
        torch.testing.assert_close(weights(again)[name], value, rtol=0, atol=0)


def test_a_checkpoint_of_another_run_is_refused(tmp_path):
    path = tmp_path / "run.ckpt"
    run(1, checkpoint=path)
    with pytest.raises(CheckpointError, match=r"learning_rate 0\.001 \(saved\) vs 0\.01"):
        run(2, checkpoint=path, learning_rate=0.01)
    other = sequences([1, 2, 3], [4, 5, 6, 7])
    with pytest.raises(CheckpointError, match="the training data differs"):
        run(2, checkpoint=path, train=other)
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="not a readable training checkpoint"):
        run(2, checkpoint=path)


def test_train_refuses_a_checkpoint_outside_the_window_mode(tmp_path, capsys):
    argv = ["--dataset", "movielens-100k", "--preset", "quick", "--quiet"]
    argv += ["--out", str(tmp_path / "run"), "--checkpoint", str(tmp_path / "run.ckpt")]
    assert train_main(argv) == 2
    assert "resumes the history-window mode only" in capsys.readouterr().err
