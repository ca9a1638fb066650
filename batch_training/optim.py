"""The authors' optimiser: Adagrad with momentum on the scaled step, sparse-row aware.

For each parameter (or each touched row of a sparse gradient g):
    acc <- acc + g^2
    v   <- momentum * v - lr * g / sqrt(acc + eps)
    p   <- p + v
Rows that a step does not touch keep their accumulator, velocity and value: with 40k+ items
a step then costs O(rows touched), not O(n_items).

On the CPU the update runs as one fused pass per parameter (`cpu_kernels`); the torch
operations below are the reference and the path for other devices.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import torch
from torch import Tensor
from torch.optim import Optimizer

from batch_training import cpu_kernels
from batch_training.cpu_kernels import Arrays


def coalesce_rows(rows: Tensor, row_grads: Tensor) -> tuple[Tensor, Tensor]:
    """Rows (R,) that may repeat and their gradients (R, W) -> the sorted unique rows and
    each one's summed gradient."""
    unique, inverse = torch.unique(rows, sorted=True, return_inverse=True)
    summed = row_grads.new_zeros(len(unique), row_grads.shape[1])
    return unique, summed.index_add_(0, inverse, row_grads)


class AdagradMomentum(Optimizer):
    def __init__(
        self,
        params: Iterable[Tensor],
        lr: float = 0.05,
        momentum: float = 0.0,
        eps: float = 1e-6,
        fused: bool = True,
    ) -> None:
        if lr <= 0.0 or not 0.0 <= momentum < 1.0 or eps <= 0.0:
            raise ValueError(f"bad Adagrad settings lr={lr}, momentum={momentum}, eps={eps}")
        super().__init__(params, {"lr": lr, "momentum": momentum, "eps": eps})
        self.fused = fused  # use cpu_kernels where the tensors allow it
        self._views: dict[tuple, tuple] = {}  # see _arrays
        for group in self.param_groups:
            for p in group["params"]:
                self.state[p]["acc"] = torch.zeros_like(p)
                if momentum > 0:
                    self.state[p]["velocity"] = torch.zeros_like(p)

    @torch.no_grad()
    def step(self, closure=None):  # noqa: ANN001 - torch's Optimizer signature
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self.update()
        return loss

    @torch.no_grad()
    def update(self) -> None:
        """`step` without a closure and without the hooks torch wraps around every
        optimiser's `step` (a profiler range and hook lookups, ~30 us a call: a measurable
        part of a small model's training step). Training calls this."""
        for group in self.param_groups:
            lr, momentum, eps = group["lr"], group["momentum"], group["eps"]
            dense = [p for p in group["params"] if p.grad is not None and not p.grad.is_sparse]
            if dense:
                self._dense_step(dense, lr, momentum, eps)
            for p in group["params"]:
                if p.grad is not None and p.grad.is_sparse:
                    # Duplicate row indices must be summed first: the update is not linear in
                    # g. (Free when the gradient is already coalesced.)
                    grad = p.grad.coalesce()
                    self._row_step(p, grad.indices()[0], grad.values(), lr, momentum, eps)

    @torch.no_grad()
    def step_rows(self, rows: Tensor, row_grads: Tensor, params: Sequence[Tensor]) -> None:
        """The sparse update of `step` from plain rows and values, without a sparse tensor
        (building and checking one costs more than the small models' update itself).

        rows (R,) row ids, repeats allowed: a row's gradients add up over its occurrences
        (training hands over the rows of a step's inputs and scored items as they come);
        row_grads (R, W): the rows' gradients of `params` side by side (2-d parameters of
        the same number of rows whose widths add up to W; training's output weights and
        biases).
        """
        group = self._group_of(params[0])
        lr, momentum, eps = group["lr"], group["momentum"], group["eps"]
        if not self._fusable(rows, row_grads, *params):
            rows, row_grads = coalesce_rows(rows, row_grads)
            widths = [p.shape[1] for p in params]
            for p, values in zip(params, row_grads.split(widths, dim=1), strict=True):
                self._row_step(p, rows, values, lr, momentum, eps)
            return
        # Fused: each row updated once, in place, its occurrences summed on the way.
        self._fused_rows(params, rows, row_grads, lr, momentum, eps)

    def _fused_rows(
        self,
        params: Sequence[Tensor],
        rows: Tensor,
        row_grads: Tensor,
        lr: float,
        momentum: float,
        eps: float,
    ) -> None:
        states = [self.state[p] for p in params]
        if "last" not in states[0]:  # the grouping's table, all -1 between calls
            states[0]["last"] = torch.full((params[0].shape[0],), -1, dtype=torch.int64)
        values, acc, velocity, (last,) = self._arrays(params, cpu_kernels.matrices)
        ids, grads = rows.numpy(), row_grads.detach().numpy()
        cpu_kernels.grouped_row_update(values, ids, grads, acc, velocity, lr, momentum, eps, last)

    def _arrays(
        self, params: Sequence[Tensor], view: Callable[[Sequence[Tensor]], Arrays]
    ) -> tuple[Arrays, Arrays, Arrays | None, Arrays]:
        """numpy views of params, their accumulators, velocities (None without momentum)
        and grouping table ("last", where kept), made once for the same memory (keyed by
        the tensors' addresses): making them costs as much as updating a small parameter."""
        states = [self.state[p] for p in params]
        tensors = [*params, *(t for s in states for t in s.values())]
        key = (view, *(t.data_ptr() for t in tensors))
        if key not in self._views:
            if len(self._views) > 64:  # memory replaced again and again: do not hold it all
                self._views.clear()
            self._views[key] = (
                view(params),
                view([s["acc"] for s in states]),
                view([s["velocity"] for s in states]) if "velocity" in states[0] else None,
                cpu_kernels.flat([s["last"] for s in states[:1] if "last" in s]),
            )
        return self._views[key]

    def _group_of(self, p: Tensor) -> dict:
        for group in self.param_groups:
            if any(q is p for q in group["params"]):
                return group
        raise ValueError("parameter not optimised here")

    def _fusable(self, *tensors: Tensor) -> bool:
        return self.fused and cpu_kernels.usable(*tensors)

    def _dense_step(self, params: list[Tensor], lr: float, momentum: float, eps: float) -> None:
        states = [self.state[p] for p in params]
        if self._fusable(*params, *(p.grad for p in params)):  # one launch for all
            values, acc, velocity, _ = self._arrays(params, cpu_kernels.flat)
            grads = cpu_kernels.flat([p.grad for p in params])
            cpu_kernels.dense_update(values, grads, acc, velocity, lr, momentum, eps)
            return
        # One foreach call per operation for all dense parameters (few dispatches: the small
        # models are dominated by per-op overhead), into a denominator buffer kept per
        # parameter (no allocation per step).
        for s, p in zip(states, params, strict=True):
            if "denom" not in s:
                s["denom"] = torch.empty_like(p)
        grads = [p.grad for p in params]
        acc, denom = [s["acc"] for s in states], [s["denom"] for s in states]
        torch._foreach_addcmul_(acc, grads, grads)
        for a, d in zip(acc, denom, strict=True):  # (no foreach op writes into given buffers)
            torch.add(a, eps, out=d)
        torch._foreach_sqrt_(denom)
        if momentum > 0:
            velocity = [s["velocity"] for s in states]
            torch._foreach_mul_(velocity, momentum)
            torch._foreach_addcdiv_(velocity, grads, denom, value=-lr)
            torch._foreach_add_(params, velocity)
        else:
            torch._foreach_addcdiv_(params, grads, denom, value=-lr)

    def _row_step(
        self, p: Tensor, rows: Tensor, values: Tensor, lr: float, momentum: float, eps: float
    ) -> None:
        """Update rows (R,) (unique) of p with their gradients values (R, *p.shape[1:])."""
        state = self.state[p]
        if p.dim() == 2 and self._fusable(p, rows, values):
            self._fused_rows([p], rows, values, lr, momentum, eps)
            return
        acc = state["acc"].index_select(0, rows).addcmul_(values, values)
        state["acc"].index_copy_(0, rows, acc)
        denom = acc.add_(eps).sqrt_()  # acc's rows are stored: reuse the buffer
        if momentum > 0:
            velocity = state["velocity"].index_select(0, rows).mul_(momentum)
            step = velocity.addcdiv_(values, denom, value=-lr)
            state["velocity"].index_copy_(0, rows, step)
        else:
            step = values.div(denom).mul_(-lr)
        p.index_add_(0, rows, step)
