"""Fused CPU kernels for the optimiser's update (numba).

The update of Adagrad with momentum is a few arithmetic operations per value, so its cost
is memory traffic. Written as torch operations it makes 6-9 passes over every value and,
for the sparse output rows, gathers the rows out and scatters them back three times
(accumulator, velocity, parameter); on the papers' BPR-max setup that was a third of a
training step. Here each value is read and written once, in place, by one kernel over
rows: the touched rows of the output table, or every row of a dense parameter. The
arithmetic is the same as `optim.AdagradMomentum`'s torch path (float32 throughout), which
stays the reference and the path for CUDA tensors; tests/test_train.py checks that both
agree.

Parallel over rows with numba's threads, as many as torch uses for the rest of the step
(serial with one). Compiled on first use (about a second) and cached on disk.
"""

from __future__ import annotations

import functools
import math
import threading
from collections.abc import Callable

import numba
import numpy as np
import torch
from numba import njit, prange
from torch import Tensor

# error_model="numpy": division follows IEEE (no Python ZeroDivisionError check), which
# lets LLVM vectorise the loops; eps > 0 keeps the denominator positive anyway.
_JIT = {"error_model": "numpy", "cache": True, "nogil": True}
# numba's fallback threading layer (workqueue, where neither OpenMP nor TBB is found) aborts
# on parallel launches from two threads at once, as `tune --jobs N` would make.
_LAUNCH = threading.Lock()


def _row_update(
    rows: np.ndarray,
    grads: np.ndarray,
    offset: int,
    param: np.ndarray,
    acc: np.ndarray,
    velocity: np.ndarray,
    lr: np.float32,
    momentum: np.float32,
    eps: np.float32,
    use_velocity: bool,
) -> None:
    # rows are unique, so the threads never write the same row.
    width = param.shape[1]
    for i in prange(rows.shape[0]):
        r = rows[i]
        for j in range(width):
            g = grads[i, offset + j]
            a = acc[r, j] + g * g
            acc[r, j] = a
            step = -lr * (g / math.sqrt(a + eps))
            if use_velocity:
                step = momentum * velocity[r, j] + step
                velocity[r, j] = step
            param[r, j] += step


# With one thread, the serial build: numba's OpenMP pool (a second one beside torch's) keeps
# a thread spinning on another core after each parallel call. It is not cached on disk:
# numba's cache tells compiled versions apart by signature only, so the serial and the
# parallel build would overwrite and load each other.
_KERNELS = {
    True: njit(parallel=True, **_JIT)(_row_update),
    False: njit(**{**_JIT, "cache": False})(_row_update),
}


def usable(*tensors: Tensor) -> bool:
    """Whether the kernels can update these tensors in place: on the CPU, contiguous, float32
    values (and int64 row indices)."""
    return all(
        t.device.type == "cpu" and t.dtype in (torch.float32, torch.int64) and t.is_contiguous()
        for t in tensors
    )


def _kernel() -> Callable[..., None]:
    """The row kernel for torch's thread count, numba's threads set to match."""
    threads = max(1, min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS))
    if threads == 1:
        return _KERNELS[False]
    numba.set_num_threads(threads)
    return _KERNELS[True]


@functools.lru_cache(maxsize=64)
def _all_rows(n: int) -> Tensor:
    return torch.arange(n)


def _array(t: Tensor) -> np.ndarray:
    return t.detach().numpy()


def dense_update(
    param: Tensor,
    grad: Tensor,
    acc: Tensor,
    velocity: Tensor | None,
    lr: float,
    momentum: float,
    eps: float,
) -> None:
    """acc += g^2; v = momentum v - lr g / sqrt(acc + eps); p += v, in place: the row update
    over all rows (a 1-d parameter is one row)."""
    rows = param.shape[0] if param.dim() > 1 else 1
    p, g, a = (t.view(rows, -1) for t in (param, grad, acc))
    v = None if velocity is None else velocity.view(rows, -1)
    row_update(p, _all_rows(rows), g, 0, a, v, lr, momentum, eps)


def row_update(
    param: Tensor,
    rows: Tensor,
    grads: Tensor,
    offset: int,
    acc: Tensor,
    velocity: Tensor | None,
    lr: float,
    momentum: float,
    eps: float,
) -> None:
    """The same update on rows (R,) (unique) of a 2-d param; row i's gradient is
    grads[i, offset : offset + param.shape[1]]."""
    vel = velocity if velocity is not None else acc
    arrays = [_array(t) for t in (rows, grads)], [_array(t) for t in (param, acc, vel)]
    settings = (np.float32(lr), np.float32(momentum), np.float32(eps), velocity is not None)
    with _LAUNCH:
        _kernel()(*arrays[0], offset, *arrays[1], *settings)
