"""Where a training step spends its time: a per-stage wall-clock timer for benchmarks."""

from __future__ import annotations

import time

import torch


class StageTimer:
    """Wall time per stage of the training step, summed over steps (`train(profile=...)`).

    `tick(name)` charges the time since the previous tick to `name`. On CUDA it synchronises
    first, so a stage is charged for its own kernels; that slows training down, so the timer
    is only for benchmarks. Without a timer the step calls nothing at all.
    """

    def __init__(self, device: torch.device | str = "cpu") -> None:
        self.sync = torch.device(device).type == "cuda"
        self.seconds: dict[str, float] = {}
        self.steps = 0
        self._last = time.perf_counter()

    def start(self) -> None:
        if self.sync:
            torch.cuda.synchronize()
        self._last = time.perf_counter()

    def tick(self, name: str) -> None:
        if self.sync:
            torch.cuda.synchronize()
        now = time.perf_counter()
        self.seconds[name] = self.seconds.get(name, 0.0) + now - self._last
        self._last = now

    def per_step_ms(self) -> dict[str, float]:
        return {k: 1e3 * v / max(self.steps, 1) for k, v in self.seconds.items()}
