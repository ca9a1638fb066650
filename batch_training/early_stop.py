"""The best validated epoch, for both training loops (session-parallel and history-window).

After each epoch the loop records the validation metric (None when it does not validate);
the best epoch's weights are kept as a CPU copy, training stops after `patience` epochs
without a better metric, and the best weights are loaded back at the end unless they are
the last epoch's own.
"""

from __future__ import annotations

import math
from typing import Any

from torch import Tensor, nn


class BestEpoch:
    def __init__(self, patience: int, validated: bool) -> None:
        self.patience = patience
        self.validated = validated  # without validation every epoch is the best so far
        self.metric = -math.inf
        self.epoch = 0
        self._state: dict[str, Tensor] | None = None

    def record(self, epoch: int, metric: float | None, model: nn.Module) -> None:
        """After epoch `epoch`, with its validation metric (higher is better)."""
        if not self.validated:
            self.epoch = epoch
        elif metric is not None and metric > self.metric:
            self.metric, self.epoch = metric, epoch
            self._state = {
                k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()
            }

    def should_stop(self, epoch: int) -> bool:
        return self.validated and epoch - self.epoch >= self.patience

    def restore(self, model: nn.Module, last_epoch: int) -> None:
        """Load the best epoch's weights into model, unless they are already there."""
        if self._state is not None and self.epoch != last_epoch:
            model.load_state_dict(self._state)

    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint keeps of it (batch_training/checkpoint.py)."""
        return {"metric": self.metric, "epoch": self.epoch, "weights": self._state}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.metric, self.epoch, self._state = state["metric"], state["epoch"], state["weights"]
