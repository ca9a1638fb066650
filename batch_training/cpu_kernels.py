"""Fused CPU kernels for the optimiser's update (numba).

The update of Adagrad with momentum is a few arithmetic operations per value, so its cost
is memory traffic. Written as torch operations it makes 6-9 passes over every value and,
for the sparse output rows, gathers the rows out and scatters them back three times
(accumulator, velocity, parameter), after finding the step's unique rows and summing their
gradients (torch.unique, index_add_). Here each value is read and written once, in place:
- `dense_update`: every value of all dense parameters, one launch, flat loops;
- `grouped_row_update`: the touched rows of the output table as the step hands them over,
  repeats included; a row's occurrences are found with a table kept between steps and
  summed on the way.
The arithmetic is the same as `optim.AdagradMomentum`'s torch path (float32 throughout),
which stays the reference and the path for CUDA tensors; tests/test_train.py checks that
both agree.

Parallel over rows with numba's threads, as many as torch uses for the rest of the step
(a serial build with one). Compiled on first use (seconds) and cached on disk.
"""

from __future__ import annotations

import math
import threading
import types
from collections.abc import Callable, Sequence

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
# Gradients below sqrt(float32's smallest normal) square to a denormal, which the CPU
# computes through a microcode assist ~100x slower than a normal product; the sampled
# columns' gradients are often that small (softmax terms near e^-50), and they made the row
# update up to 5x slower. Their square is added as 0 instead. That changes nothing else: the
# accumulator then differs by less than 1.2e-38, which vanishes against eps in
# sqrt(acc + eps) (for any eps above 1e-30; training's is 1e-6), so steps, velocities and
# parameters stay bit-identical to the torch operations'.
_MIN_SQUARED = np.float32(np.sqrt(np.finfo(np.float32).tiny))


@njit(error_model="numpy", cache=True)
def _adagrad(
    g: np.float32,
    acc: np.float32,
    velocity: np.float32,
    lr: np.float32,
    momentum: np.float32,
    eps: np.float32,
    use_velocity: bool,
) -> tuple[np.float32, np.float32]:
    """One value's update for its gradient g: (new accumulator, step = new velocity).
    Scalars only: an array argument would be reference-counted on every call."""
    g_sq = g if abs(g) >= _MIN_SQUARED else np.float32(0.0)  # select, then square
    a = acc + g_sq * g_sq
    step = -lr * (g / math.sqrt(a + eps))
    if use_velocity:
        step = momentum * velocity + step
    return a, step


@njit(error_model="numpy", cache=True)
def _update_span(
    grad: np.ndarray,
    param: np.ndarray,
    acc: np.ndarray,
    velocity: np.ndarray,
    lr: np.float32,
    momentum: np.float32,
    eps: np.float32,
    use_velocity: bool,
) -> None:
    """`_adagrad` on every value of 1-d arrays of one length, in place. The two loops keep
    the momentum test out of the loop: with it inside, LLVM did not vectorise."""
    if use_velocity:
        for i in range(param.size):
            a, step = _adagrad(grad[i], acc[i], velocity[i], lr, momentum, eps, True)
            acc[i] = a
            velocity[i] = step
            param[i] += step
    else:
        for i in range(param.size):
            a, step = _adagrad(grad[i], acc[i], acc[i], lr, momentum, eps, False)
            acc[i] = a
            param[i] += step


# The kernels take tuples of same-typed arrays (float32, C order): several parameters
# in one launch, since a launch costs as much as updating a small parameter.
Arrays = tuple[np.ndarray, ...]
_CHUNK = 16384  # values per parallel task of the dense update


def _dense_kernel(
    grads: Arrays,
    params: Arrays,
    accs: Arrays,
    velocities: Arrays,
    lr: np.float32,
    momentum: np.float32,
    eps: np.float32,
    use_velocity: bool,
) -> None:
    # Every value of every parameter (1-d views: a flat loop vectorises, a 2-d one did not),
    # one parallel loop over chunks of them.
    n_chunks = 0
    for t in range(len(params)):
        n_chunks += (params[t].size + _CHUNK - 1) // _CHUNK
    owner = np.empty(n_chunks, dtype=np.int64)
    first = np.empty(n_chunks, dtype=np.int64)
    c = 0
    for t in range(len(params)):
        for start in range(0, params[t].size, _CHUNK):
            owner[c], first[c] = t, start
            c += 1
    for c in prange(n_chunks):
        t, lo = owner[c], first[c]
        hi = min(lo + _CHUNK, params[t].size)
        _update_span(
            grads[t][lo:hi], params[t][lo:hi], accs[t][lo:hi], velocities[t][lo:hi],
            lr, momentum, eps, use_velocity,
        )  # fmt: skip


def _grouped_kernel(
    ids: np.ndarray,
    last: np.ndarray,
    grads: np.ndarray,
    params: Arrays,
    accs: Arrays,
    velocities: Arrays,
    lr: np.float32,
    momentum: np.float32,
    eps: np.float32,
    use_velocity: bool,
) -> None:
    # Row ids[k] of the parameters gets the sum of grads[k] over its occurrences: heads[h]
    # is an id's first occurrence, chain[k] the next one (-1 after the last). Most ids occur
    # once: their gradient row is used as it is; the others' are summed into row spill[h]
    # of a buffer. grads[k] holds the parameters' gradients side by side.
    heads, chain, spill = _group(ids, last)
    sums = np.empty(((spill >= 0).sum(), grads.shape[1]), dtype=grads.dtype)
    for h in prange(heads.shape[0]):
        first = heads[h]
        r = ids[first]
        row = grads[first]
        if spill[h] >= 0:
            row = sums[spill[h]]
            row[:] = grads[first]
            k = chain[first]
            while k >= 0:
                row += grads[k]
                k = chain[k]
        offset = 0
        for t in range(len(params)):
            # Indexed in place rather than through row views or `_update_span`: each view or
            # call with arrays costs reference counting, per row.
            param, acc, velocity = params[t], accs[t], velocities[t]
            if use_velocity:
                for j in range(param.shape[1]):
                    g = row[offset + j]
                    a, step = _adagrad(g, acc[r, j], velocity[r, j], lr, momentum, eps, True)
                    acc[r, j] = a
                    velocity[r, j] = step
                    param[r, j] += step
            else:
                for j in range(param.shape[1]):
                    a, step = _adagrad(row[offset + j], acc[r, j], 0.0, lr, momentum, eps, False)
                    acc[r, j] = a
                    param[r, j] += step
            offset += param.shape[1]


@njit(**_JIT)
def _group(ids: np.ndarray, last: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(heads, chain, spill) of `_grouped_kernel` for ids (K,); `last` (n_rows,) is all -1
    on entry and on return (a table kept between calls: no allocation or sort per step)."""
    chain = np.full(ids.shape[0], -1, dtype=np.int64)
    heads = np.empty(ids.shape[0], dtype=np.int64)
    n_heads = 0
    for k in range(ids.shape[0]):
        r = ids[k]
        if r < 0 or r >= last.shape[0]:
            for h in range(n_heads):  # leave the table as it was
                last[ids[heads[h]]] = -1
            raise IndexError("row id out of range")
        if last[r] < 0:
            heads[n_heads] = k
            n_heads += 1
        else:
            chain[last[r]] = k
        last[r] = k
    spill = np.full(n_heads, -1, dtype=np.int64)
    n_spilled = 0
    for h in range(n_heads):
        last[ids[heads[h]]] = -1
        if chain[heads[h]] >= 0:
            spill[h] = n_spilled
            n_spilled += 1
    return heads[:n_heads], chain, spill


def _renamed(fn: Callable[..., None], suffix: str) -> Callable[..., None]:
    """A copy of fn under another name: numba's disk cache tells the builds of one function
    apart by signature only, so a serial and a parallel build of it would load each other."""
    name, qualname = fn.__name__ + suffix, fn.__qualname__ + suffix
    code = fn.__code__.replace(co_name=name, co_qualname=qualname)
    copy = types.FunctionType(code, fn.__globals__, name, fn.__defaults__, fn.__closure__)
    copy.__qualname__ = qualname
    return copy


# A parallel and a serial build of each kernel, both cached on disk. With one thread the
# serial one: numba's OpenMP runtime otherwise keeps a thread spinning on the other core.
_KERNELS = {
    (name, parallel): njit(parallel=parallel, **_JIT)(fn if parallel else _renamed(fn, "_serial"))
    for name, fn in (("dense", _dense_kernel), ("grouped", _grouped_kernel))
    for parallel in (True, False)
}


def usable(*tensors: Tensor) -> bool:
    """Whether the kernels can update these tensors in place: on the CPU, contiguous, float32
    values (and int64 row indices)."""
    return all(
        t.device.type == "cpu" and t.dtype in (torch.float32, torch.int64) and t.is_contiguous()
        for t in tensors
    )


def _kernel(name: str) -> Callable[..., None]:
    """A kernel built for torch's thread count, numba's threads set to match."""
    threads = max(1, min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS))
    if threads == 1:
        return _KERNELS[name, False]
    numba.set_num_threads(threads)
    return _KERNELS[name, True]


def matrices(tensors: Sequence[Tensor]) -> Arrays:
    """The tensors as 2-d arrays sharing their memory (a 1-d tensor is one row)."""
    return tuple(t.detach().view(t.shape[0] if t.dim() > 1 else 1, -1).numpy() for t in tensors)


def flat(tensors: Sequence[Tensor]) -> Arrays:
    """The (contiguous) tensors as 1-d arrays sharing their memory."""
    return tuple(t.detach().view(-1).numpy() for t in tensors)


def _settings(
    lr: float, momentum: float, eps: float, velocities: Arrays | None
) -> tuple[np.float32, np.float32, np.float32, bool]:
    return np.float32(lr), np.float32(momentum), np.float32(eps), velocities is not None


def dense_update(
    params: Arrays,
    grads: Arrays,
    accs: Arrays,
    velocities: Arrays | None,
    lr: float,
    momentum: float,
    eps: float,
) -> None:
    """acc += g^2; v = momentum v - lr g / sqrt(acc + eps); p += v, in place, on every value
    of each parameter (velocities None: no momentum, p -= lr g / sqrt(acc + eps)). The
    arrays are `flat` views of the tensors."""
    v = accs if velocities is None else velocities
    with _LAUNCH:
        _kernel("dense")(grads, params, accs, v, *_settings(lr, momentum, eps, velocities))


def grouped_row_update(
    params: Arrays,
    ids: np.ndarray,
    grads: np.ndarray,
    accs: Arrays,
    velocities: Arrays | None,
    lr: float,
    momentum: float,
    eps: float,
    last: np.ndarray,
) -> None:
    """The same update on rows of 2-d parameters of as many rows (`matrices` views): ids
    (K,) may repeat, and row ids[k] is updated once, with the sum of grads[k] over its
    occurrences; grads (K, W) holds the parameters' gradients side by side (W = their
    widths added up). This replaces finding the unique rows and summing their gradients
    (torch.unique, index_add_) before the update. last: an int64 table (n_rows,) of -1, kept
    by the caller between calls (left as it was, also when an id out of range raises
    IndexError)."""
    v = accs if velocities is None else velocities
    settings = _settings(lr, momentum, eps, velocities)
    with _LAUNCH:
        _kernel("grouped")(ids, last, grads, params, accs, v, *settings)
