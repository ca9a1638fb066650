"""Torch twin of `schemas.metrics.ranks_from_scores`, so ranks are computed where the scores
live (GPU during training evaluation) and only the small rank vectors move to the host."""

from __future__ import annotations

import torch


def ranks_from_scores(scores: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """1-based rank of each row's target, ties against the target, NaN scores as -inf.

    scores: (B, N) float; targets: (B,) long column indices. Returns int64 (B,).
    """
    target_scores = scores.gather(1, targets.view(-1, 1).long())  # (B, 1)
    # NaN never compares >=, so NaN items already count as -inf; a NaN or -inf target ties
    # with everything (as -inf) and ranks last. int32 sums are much faster than int64 on CPU.
    ranks = (scores >= target_scores).sum(dim=1, dtype=torch.int32).long()
    worst = torch.isnan(target_scores[:, 0]) | (target_scores[:, 0] == float("-inf"))
    return torch.where(worst, scores.shape[1], ranks)


def ranks_among_candidates(scores: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
    """Rank of column 0 of `candidates` among the valid (>= 0) candidate columns of its row.

    scores: (B, N); candidates: (B, C) item indices, [:, 0] the target, -1 for a dropped
    candidate (it is ignored). Ties and NaN as in ranks_from_scores. Returns int64 (B,).
    """
    valid = candidates >= 0
    picked = scores.gather(1, candidates.clamp(min=0))  # (B, C)
    picked = torch.where(torch.isnan(picked), float("-inf"), picked)
    beats = (picked >= picked[:, :1]) & valid
    return beats.sum(dim=1, dtype=torch.int64)
