"""Ranking metrics on 1-based ranks, shared by training evaluation and stream replay.

Tie rule: a target that scores the same as another item ranks BELOW it, so
rank = number of items whose score is >= the target's score (the target included). An
evaluated model gains nothing from constant or degenerate scores.

NaN scores count as the worst possible score (-inf): a NaN item never outranks anything, and
a NaN target ranks last (rank = number of candidates).

For a target at rank r and a cut-off k, averaged over examples:
    recall@k (= hr@k)  1 if r <= k else 0
    mrr@k              1 / r if r <= k else 0
    ndcg@k             1 / log2(r + 1) if r <= k else 0   (one relevant item, so IDCG = 1)
With no examples every metric is 0.0 and "n_examples" is 0.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

DEFAULT_KS = (1, 5, 10, 20)
_KINDS = ("recall", "mrr", "ndcg")


def ranks_from_scores(scores: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """1-based rank of each row's target among all columns, ties counted against the target.

    scores: (B, N) float; targets: (B,) int column indices. Returns int64 (B,).
    """
    scores = np.asarray(scores, dtype=np.float64)
    targets = np.asarray(targets, dtype=np.int64)
    if scores.ndim != 2 or targets.shape != (scores.shape[0],):
        raise ValueError(
            f"scores must be (B, N) and targets (B,), got {scores.shape}, {targets.shape}"
        )
    if targets.size and (targets.min() < 0 or targets.max() >= scores.shape[1]):
        raise ValueError(f"targets must lie in [0, {scores.shape[1]})")
    scores = np.where(np.isnan(scores), -np.inf, scores)
    target_scores = scores[np.arange(scores.shape[0]), targets][:, None]  # (B, 1)
    return (scores >= target_scores).sum(axis=1).astype(np.int64)


def _check_ranks(ranks: np.ndarray | Iterable[int]) -> np.ndarray:
    ranks = np.asarray(ranks).reshape(-1)
    integral = np.issubdtype(ranks.dtype, np.integer) or np.all(ranks == np.floor(ranks))
    if ranks.size and not integral:
        raise ValueError("ranks must be whole numbers")
    ranks = ranks.astype(np.int64)
    if ranks.size and ranks.min() < 1:
        raise ValueError(f"ranks are 1-based, got {ranks.min()}")
    return ranks


def _metric_sums(ranks: np.ndarray, ks: tuple[int, ...]) -> dict[str, float]:
    """Sum (not mean) of each metric over the given ranks, so batches can be added up."""
    sums: dict[str, float] = {}
    reciprocal = 1.0 / ranks
    discount = 1.0 / np.log2(ranks + 1.0)
    for k in ks:
        hit = ranks <= k
        sums[f"recall@{k}"] = float(hit.sum())
        sums[f"mrr@{k}"] = float(reciprocal[hit].sum())
        sums[f"ndcg@{k}"] = float(discount[hit].sum())
    return sums


def _finish(sums: dict[str, float], n: int, include_hr: bool) -> dict[str, float]:
    result = {name: (value / n if n else 0.0) for name, value in sums.items()}
    if include_hr:
        for name in [n_ for n_ in result if n_.startswith("recall@")]:
            result["hr@" + name.split("@", 1)[1]] = result[name]
    result["n_examples"] = n
    return result


def _check_ks(ks: Iterable[int]) -> tuple[int, ...]:
    ks = tuple(int(k) for k in ks)
    if not ks or min(ks) < 1:
        raise ValueError(f"cut-offs must be positive, got {ks}")
    return ks


def rank_metrics(
    ranks: np.ndarray | Iterable[int], ks: Iterable[int] = DEFAULT_KS, *, include_hr: bool = False
) -> dict[str, float]:
    """Mean recall@k, mrr@k and ndcg@k over 1-based ranks (plus hr@k when asked), and
    "n_examples"."""
    ranks = _check_ranks(ranks)
    ks = _check_ks(ks)
    return _finish(_metric_sums(ranks, ks), int(ranks.size), include_hr)


class MetricAccumulator:
    """rank_metrics over ranks that arrive batch by batch; result() equals rank_metrics on all
    of them at once."""

    def __init__(self, ks: Iterable[int] = DEFAULT_KS, *, include_hr: bool = False) -> None:
        self.ks = _check_ks(ks)
        self.include_hr = include_hr
        self.n = 0
        self._sums = {name: 0.0 for name in _metric_sums(np.ones(0, np.int64), self.ks)}

    def add(self, ranks: np.ndarray | Iterable[int]) -> None:
        ranks = _check_ranks(ranks)
        for name, value in _metric_sums(ranks, self.ks).items():
            self._sums[name] += value
        self.n += int(ranks.size)

    def result(self) -> dict[str, float]:
        return _finish(self._sums, self.n, self.include_hr)
