"""GRU4Rec's losses over a session-parallel mini-batch.

Every loss takes the score matrix of one step, `scores` (B, C) with C = B + n_sample:
column j < B is lane j's target (so the diagonal holds each lane's positive and the other
targets of the batch are its negatives), and the last n_sample columns are extra sampled
items shared by the batch. Each returns the per-lane loss (B,); training sums and divides
by the configured batch size, as the authors do.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from batch_training.config import TrainConfig

# The authors' guard inside log() for BPR-max.
_EPS = 1e-24

LossFn = Callable[[Tensor, Tensor | None], Tensor]


def positive_mask(scores: Tensor) -> Tensor:
    """(B, C) bool, True at each lane's own target (the diagonal of the first B columns)."""
    rows = torch.arange(scores.shape[0], device=scores.device)
    cols = torch.arange(scores.shape[1], device=scores.device)
    return rows[:, None] == cols[None, :]


def negative_mask(scores: Tensor, in_batch: bool = True) -> Tensor:
    """(B, C) bool, True where a column is a negative for the row.

    in_batch=False keeps only the sampled columns (C >= B): the other lanes' targets are
    then not negatives.
    """
    if in_batch:
        return ~positive_mask(scores)
    cols = torch.arange(scores.shape[1], device=scores.device)
    return (cols >= scores.shape[0])[None, :].expand(scores.shape[0], -1)


def positive_scores(scores: Tensor) -> Tensor:
    """(B, C) -> (B,): the score of each lane's target."""
    return scores.diagonal()


def softmax_over_negatives(scores: Tensor, negatives: Tensor | None = None) -> Tensor:
    """Softmax of each row over its negatives only, 0 elsewhere. (B, C)."""
    negatives = negative_mask(scores) if negatives is None else negatives
    return torch.softmax(scores.masked_fill(~negatives, float("-inf")), dim=1)


def cross_entropy_loss(
    scores: Tensor,
    log_q: Tensor | None = None,
    logq: float = 0.0,
    negatives: Tensor | None = None,
) -> Tensor:
    """-log softmax(target) over target + negatives, with the logQ correction.

    log_q: (C,) log of how often each column's item is drawn as a negative. The authors
    use log(support) for in-batch columns (targets occur in proportion to their clicks)
    and sample_alpha * log(support) for the sampled columns, and subtract logq * log_q
    from every row's column, the positive's included.
    """
    if logq > 0.0 and log_q is not None:
        scores = scores - logq * log_q[None, :]
    if negatives is not None:
        scores = scores.masked_fill(~(negatives | positive_mask(scores)), float("-inf"))
    return -torch.log_softmax(scores, dim=1).diagonal()


def bpr_max_loss(scores: Tensor, bpreg: float, negatives: Tensor | None = None) -> Tensor:
    """BPR-max: -log sum_j s_j sigmoid(r_i - r_j) + bpreg * sum_j s_j r_j^2.

    s_j is the softmax over the negatives, so the hardest negatives dominate both terms.
    """
    weights = softmax_over_negatives(scores, negatives)
    pos = positive_scores(scores)[:, None]
    ranking = torch.sum(torch.sigmoid(pos - scores) * weights, dim=1)
    regulariser = torch.sum(scores.square() * weights, dim=1)
    return -torch.log(ranking + _EPS) + bpreg * regulariser


def top1_max_loss(scores: Tensor, negatives: Tensor | None = None) -> Tensor:
    """TOP1-max: sum_j s_j (sigmoid(r_j - r_i) + sigmoid(r_j^2)), s_j as in BPR-max."""
    weights = softmax_over_negatives(scores, negatives)
    pos = positive_scores(scores)[:, None]
    return torch.sum(weights * (torch.sigmoid(scores - pos) + torch.sigmoid(scores.square())), 1)


def bpr_loss(scores: Tensor, negatives: Tensor | None = None) -> Tensor:
    """BPR of the first paper: mean over the negatives of -log sigmoid(r_i - r_j)."""
    negatives = negative_mask(scores) if negatives is None else negatives
    pos = positive_scores(scores)[:, None]
    pairwise = -F.logsigmoid(pos - scores) * negatives
    return pairwise.sum(dim=1) / negatives.sum(dim=1)


def top1_loss(scores: Tensor, negatives: Tensor | None = None) -> Tensor:
    """TOP1 of the first paper: mean over negatives of sigmoid(r_j - r_i) + sigmoid(r_j^2)."""
    negatives = negative_mask(scores) if negatives is None else negatives
    pos = positive_scores(scores)[:, None]
    pairwise = (torch.sigmoid(scores - pos) + torch.sigmoid(scores.square())) * negatives
    return pairwise.sum(dim=1) / negatives.sum(dim=1)


def final_activation(scores: Tensor, kind: str, elu_param: float) -> Tensor:
    if kind == "elu":
        return F.elu(scores, alpha=elu_param)
    if kind == "linear":
        return scores
    raise ValueError(f"unknown final activation {kind!r}")


def loss_function(config: TrainConfig) -> LossFn:
    """The configured loss as f(scores (B, C), log_q (C,) or None) -> per-lane loss (B,)."""
    in_batch = config.in_batch_negatives

    def negatives(scores: Tensor) -> Tensor | None:
        return None if in_batch else negative_mask(scores, in_batch=False)

    def ranked(inner: Callable[[Tensor, Tensor | None], Tensor]) -> LossFn:
        def fn(scores: Tensor, log_q: Tensor | None = None) -> Tensor:
            activated = final_activation(scores, config.final_act, config.elu_param)
            return inner(activated, negatives(scores))

        return fn

    if config.loss == "cross-entropy":

        def xe(scores: Tensor, log_q: Tensor | None = None) -> Tensor:
            return cross_entropy_loss(scores, log_q, config.logq, negatives(scores))

        return xe
    if config.loss == "bpr-max":
        return ranked(lambda s, neg: bpr_max_loss(s, config.bpreg, neg))
    if config.loss == "top1-max":
        return ranked(top1_max_loss)
    if config.loss == "bpr":
        return ranked(bpr_loss)
    if config.loss == "top1":
        return ranked(top1_loss)
    raise ValueError(f"unknown loss {config.loss!r}")
