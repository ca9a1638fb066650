"""Where a training step spends its time: a per-stage timer for benchmarks."""

from __future__ import annotations

import time

import torch


class StageTimer:
    """Wall time and process CPU time per stage of the training step, summed over steps
    (`train(profile=...)`).

    `tick(name)` charges the time since the previous tick to `name`. On CUDA it synchronises
    first, so a stage is charged for its own kernels; that slows training down, so the timer
    is only for benchmarks. Without a timer the step calls nothing at all. The CPU time (all
    threads of the process) is what a stage costs on a machine shared with other jobs, where
    wall time also counts the waits for a core.
    """

    def __init__(self, device: torch.device | str = "cpu") -> None:
        self.sync = torch.device(device).type == "cuda"
        self.seconds: dict[str, float] = {}
        self.cpu_seconds: dict[str, float] = {}
        self.steps = 0
        self._last = time.perf_counter()
        self._last_cpu = time.process_time()

    def start(self) -> None:
        if self.sync:
            torch.cuda.synchronize()
        self._last = time.perf_counter()
        self._last_cpu = time.process_time()

    def tick(self, name: str) -> None:
        if self.sync:
            torch.cuda.synchronize()
        now, now_cpu = time.perf_counter(), time.process_time()
        self.seconds[name] = self.seconds.get(name, 0.0) + now - self._last
        self.cpu_seconds[name] = self.cpu_seconds.get(name, 0.0) + now_cpu - self._last_cpu
        self._last, self._last_cpu = now, now_cpu

    def per_step_ms(self) -> dict[str, float]:
        return {k: 1e3 * v / max(self.steps, 1) for k, v in self.seconds.items()}

    def cpu_per_step_ms(self) -> dict[str, float]:
        return {k: 1e3 * v / max(self.steps, 1) for k, v in self.cpu_seconds.items()}
