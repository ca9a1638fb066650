"""The authors' optimiser: Adagrad with momentum on the scaled step, sparse-row aware.

For each parameter (or each touched row of a sparse gradient g):
    acc <- acc + g^2
    v   <- momentum * v - lr * g / sqrt(acc + eps)
    p   <- p + v
Rows that a step does not touch keep their accumulator, velocity and value: with 40k+ items
a step then costs O(rows touched), not O(n_items).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor
from torch.optim import Optimizer


class AdagradMomentum(Optimizer):
    def __init__(
        self,
        params: Iterable[Tensor],
        lr: float = 0.05,
        momentum: float = 0.0,
        eps: float = 1e-6,
    ) -> None:
        if lr <= 0.0 or not 0.0 <= momentum < 1.0 or eps <= 0.0:
            raise ValueError(f"bad Adagrad settings lr={lr}, momentum={momentum}, eps={eps}")
        super().__init__(params, {"lr": lr, "momentum": momentum, "eps": eps})
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
        for group in self.param_groups:
            lr, momentum, eps = group["lr"], group["momentum"], group["eps"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if p.grad.is_sparse:
                    self._sparse_step(p, p.grad, state, lr, momentum, eps)
                else:
                    self._dense_step(p, p.grad, state, lr, momentum, eps)
        return loss

    @staticmethod
    def _dense_step(p: Tensor, grad: Tensor, state: dict, lr: float, momentum: float, eps: float):
        acc = state["acc"]
        acc.addcmul_(grad, grad)
        scaled = grad / (acc + eps).sqrt_()
        if momentum > 0:
            velocity = state["velocity"]
            velocity.mul_(momentum).add_(scaled, alpha=-lr)
            p.add_(velocity)
        else:
            p.add_(scaled, alpha=-lr)

    @staticmethod
    def _sparse_step(p: Tensor, grad: Tensor, state: dict, lr: float, momentum: float, eps: float):
        # Duplicate row indices must be summed first: the update is not linear in g.
        grad = grad.coalesce()
        rows = grad.indices()[0]
        values = grad.values()  # (n_rows, *p.shape[1:])
        acc = state["acc"].index_select(0, rows).addcmul_(values, values)
        state["acc"].index_copy_(0, rows, acc)
        step = values / (acc + eps).sqrt_() * -lr
        if momentum > 0:
            velocity = state["velocity"].index_select(0, rows).mul_(momentum).add_(step)
            state["velocity"].index_copy_(0, rows, velocity)
            step = velocity
        p.index_add_(0, rows, step)
