"""A training step written out by hand: forward, loss and gradients without autograd.

Autograd records a graph of ~60 small operations per step and walks it back; for the small
models of the papers (100 units, 32 lanes) that bookkeeping, not arithmetic, is most of the
step. Here the step of the common setup is computed directly, with its gradients from
their closed forms, in a few large operations:

    x   = dropout(Wy[item])                      input: the item's output row (shared)
    h'  = dropout(GRU(x, h))                      one layer, gates r, z, n as torch's GRUCell
    s   = h' Wy[cols]^T + by[cols]               targets of all lanes, then sampled items
    L   = sum over lanes of loss(s) / batch_size  cross-entropy (logQ) or BPR-max (bpreg)

Covered (`FastStep.supports`): one GRU layer, the shared embedding (constrained_embedding),
sparse Adagrad updates, cross-entropy or BPR-max with the other lanes' targets as negatives,
no autocast. Everything else (several layers, separate embeddings, one-hot input, the
other losses, Adam, dense updates, in_batch_negatives=False, bfloat16) trains through
autograd in `train._train_step`, which stays the reference: tests/test_fast_step.py checks
that both give the same gradients and the same updated parameters.

The step leaves the GRU's gradients in the parameters' `.grad` and returns the touched
output rows with their gradients, one row per input and per scored column, unsummed: the
optimiser sums a row's occurrences in its update (the autograd path hands over unique rows,
and data-parallel training coalesces them first). Dropout draws its masks
with `model.dropout_mask`, in the model's order: a seed gives the same masks on both paths.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from batch_training.config import TrainConfig
from batch_training.model import GRU4Rec, dropout_mask
from batch_training.stage_timer import StageTimer

# The authors' guard inside log() for BPR-max (as batch_training.losses).
_EPS = 1e-24
# Softmax terms below exp(-50) of the row's largest are taken as exp(-50) (at most 2e-22 of
# the row's sum, far below float32's resolution of it): smaller ones would reach the
# gradient products as denormal floats, which the CPU computes up to 30x slower.
_MIN_EXPONENT = -50.0


@dataclass
class StepResult:
    per_lane: Tensor  # (B,) loss of each lane, not yet divided by the batch size
    hidden: list[Tensor]  # the new carried state, [(B, H)]
    rows: Tensor  # (B + C,) the output rows the step touched: inputs, then scored columns
    row_grads: Tensor  # (B + C, H + 1) their weight and bias gradients side by side


class FastStep:
    """Forward and backward of one session-parallel step of a one-layer, shared-embedding
    GRU4Rec trained by sparse Adagrad with cross-entropy or BPR-max."""

    def __init__(self, model: GRU4Rec, config: TrainConfig) -> None:
        if not self.supports(model, config):
            raise ValueError("this model or configuration needs the autograd step")
        self.model = model
        self.cell = model.cells[0]
        self.hidden_size = model.layers[0]
        self.loss = config.loss
        self.scale = 1.0 / config.batch_size  # the authors divide by the configured size
        self.logq = config.logq
        self.bpreg = config.bpreg
        self.elu = config.final_act == "elu"
        self.elu_param = config.elu_param

    @staticmethod
    def supports(model: GRU4Rec, config: TrainConfig, use_amp: bool = False) -> bool:
        """Whether this step computes exactly what autograd would for this setup."""
        return (
            model.input_kind == "shared"
            and len(model.cells) == 1
            and model.sparse_grad
            and config.optimizer == "adagrad"
            and config.loss in ("cross-entropy", "bpr-max")
            and config.in_batch_negatives
            and not use_amp
        )

    @torch.no_grad()
    def __call__(
        self,
        inputs: Tensor,
        columns: Tensor,
        log_q: Tensor | None,
        hidden: list[Tensor],
        timer: StageTimer | None = None,
    ) -> StepResult:
        """inputs (B,) items fed, columns (C,) items scored (the B targets first), log_q (C,)
        for the logQ correction or None, hidden [(B, H)] the carried state."""
        model, cell, n = self.model, self.cell, self.hidden_size
        weight, bias = model.output_weight, model.output_bias
        h = hidden[0]

        # Forward, keeping what the gradients need.
        x = weight.index_select(0, inputs)  # (B, H)
        embed_mask = dropout_mask(x, model.dropout_p_embed)
        if embed_mask is not None:
            x.mul_(embed_mask)
        gi = torch.addmm(cell.bias_ih, x, cell.weight_ih.t())  # (B, 3H): r, z, n blocks
        gh = torch.addmm(cell.bias_hh, h, cell.weight_hh.t())
        rz = torch.add(gi[:, : 2 * n], gh[:, : 2 * n]).sigmoid_()  # (B, 2H)
        r, z = rz[:, :n], rz[:, n:]
        cand = torch.addcmul(gi[:, 2 * n :], r, gh[:, 2 * n :]).tanh_()  # (B, H)
        h_minus_cand = h - cand
        # (B, H + 1): the new state and a column of ones, so that one product below gives
        # the scored rows' weight and bias gradients together.
        out = torch.ones(len(inputs), n + 1, dtype=x.dtype, device=x.device)
        state = out[:, :n]
        torch.addcmul(cand, z, h_minus_cand, out=state)  # h' = (1 - z) cand + z h
        hidden_mask = dropout_mask(state, model.dropout_p_hidden)
        if hidden_mask is not None:
            state.mul_(hidden_mask)
        col_weight = weight.index_select(0, columns)  # (C, H)
        scores = torch.addmm(bias.index_select(0, columns).view(-1), state, col_weight.t())
        if timer:
            timer.tick("forward")

        if self.loss == "cross-entropy":
            per_lane, d_scores = self._cross_entropy(scores, log_q)
        else:
            per_lane, d_scores = self._bpr_max(scores)
        if timer:
            timer.tick("loss")

        # Backward: scores -> state and scored rows. The rows' gradients go into one block,
        # inputs' rows first; a row that occurs several times (an input also scored, an item
        # sampled twice) is summed by the optimiser (AdagradMomentum.step_rows).
        b = len(inputs)
        row_grads = torch.empty(b + len(columns), n + 1, dtype=x.dtype, device=x.device)
        d_state = d_scores @ col_weight  # (B, H)
        torch.mm(d_scores.t(), out, out=row_grads[b:])  # (C, H + 1): weight and bias rows
        if hidden_mask is not None:
            d_state.mul_(hidden_mask)
        # GRU: h' = cand + z (h - cand), cand = tanh(gi_n + r gh_n), r, z = sigmoid(gi + gh).
        d_gates = torch.empty_like(gi)  # (B, 3H) gradient of gi = of gh in the r, z blocks
        d_rz, d_cand_pre = d_gates[:, : 2 * n], d_gates[:, 2 * n :]
        torch.mul(d_state, 1.0 - z, out=d_cand_pre).mul_(1.0 - cand * cand)
        torch.mul(d_cand_pre, gh[:, 2 * n :], out=d_rz[:, :n])  # d r
        torch.mul(d_state, h_minus_cand, out=d_rz[:, n:])  # d z
        d_rz.mul_(rz * (1.0 - rz))
        d_gh = d_gates.clone()
        d_gh[:, 2 * n :].mul_(r)
        cell.weight_ih.grad = d_gates.t() @ x  # (3H, H)
        cell.bias_ih.grad = d_gates.sum(0)
        cell.weight_hh.grad = d_gh.t() @ h
        cell.bias_hh.grad = d_gh.sum(0)
        d_x = torch.mm(d_gates, cell.weight_ih, out=row_grads[:b, :n])  # (B, H)
        row_grads[:b, n] = 0.0  # the input lookup has no bias
        if embed_mask is not None:
            d_x.mul_(embed_mask)
        return StepResult(per_lane, [state], torch.cat([inputs, columns]), row_grads)

    def _cross_entropy(self, scores: Tensor, log_q: Tensor | None) -> tuple[Tensor, Tensor]:
        """-log softmax(s - logq log_q) at the target; its gradient softmax - onehot."""
        if self.logq > 0.0 and log_q is not None:
            scores.sub_(log_q, alpha=self.logq)
        scores.sub_(scores.amax(dim=1, keepdim=True)).clamp_(min=_MIN_EXPONENT)  # (B, C), <= 0
        pos = scores.diagonal().clone()
        total = scores.exp_().sum(dim=1)  # scores now hold exp(s - max)
        per_lane = torch.log(total) - pos
        d_scores = scores.mul_((self.scale / total)[:, None])  # softmax / batch_size
        d_scores.diagonal().sub_(self.scale)
        return per_lane, d_scores

    def _bpr_max(self, scores: Tensor) -> tuple[Tensor, Tensor]:
        """BPR-max and its gradient; a = act(s), w = softmax of a over the negatives:

        L_i = -log(sum_j w_ij sig(a_i - a_ij)) + bpreg sum_j w_ij a_ij^2
        dL/da_ij = w_ij (bpreg a_ij (a_ij + 2) - u_i sig_ij^2 - g_i)   (j a negative)
        dL/da_ii = -u_i sum_j w_ij sig_ij (1 - sig_ij)                 (the target)
        with u_i = 1 / (ranking_i + eps) and g_i = bpreg reg_i - u_i ranking_i.
        The softmax is kept unnormalised (e) and each row's 1 / sum_j e_ij applied to the
        row sums: fewer passes over the (B, C) scores.
        """
        act = torch.nn.functional.elu_(scores, self.elu_param) if self.elu else scores
        diagonal = act.diagonal()
        pos = diagonal.clone()  # (B,)
        diagonal.fill_(float("-inf"))  # the target is not its own negative
        e = torch.sub(act, act.amax(dim=1, keepdim=True)).clamp_(min=_MIN_EXPONENT).exp_()
        e.diagonal().zero_()  # (B, C), 0 at the targets
        diagonal.copy_(pos)
        norm = 1.0 / e.sum(dim=1)

        def row_sums(x: Tensor) -> Tensor:  # sum_j w_ij x_ij, (B,)
            return torch.linalg.vecdot(x, e, dim=1) * norm

        sig = torch.sub(pos[:, None], act).sigmoid_()  # sig(a_i - a_ij)
        ranking = row_sums(sig)
        square = act * act
        reg = row_sums(square)
        sig_sq = sig.mul_(sig)
        u = 1.0 / (ranking + _EPS)
        per_lane = self.bpreg * reg - torch.log(ranking + _EPS)
        pos_grad = u * (row_sums(sig_sq) - ranking)
        # d_act = w (bpreg a (a + 2) - u sig^2 - g) / batch_size, with w = e norm: each
        # row's factor f = norm / batch_size goes into the coefficients (one pass fewer).
        f = norm * self.scale
        d_act = square.add_(act, alpha=2.0).mul_((self.bpreg * f)[:, None])
        d_act.addcmul_(sig_sq, (u * f)[:, None], value=-1.0)
        d_act.sub_(((self.bpreg * reg - u * ranking) * f)[:, None]).mul_(e)
        d_act.diagonal().copy_(pos_grad * self.scale)
        if self.elu:
            # elu'(s) is 1 where a > 0, else a + alpha: ATen's ELU backward computes
            # d_act elu'(s) from the activation a in one pass (is_result=True).
            d_act = torch.ops.aten.elu_backward(d_act, self.elu_param, 1.0, 1.0, True, act)
        return per_lane, d_act
