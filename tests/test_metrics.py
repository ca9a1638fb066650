"""Ranking metrics on tiny arrays with hand-computed answers."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from batch_training.metrics import ranks_from_scores as torch_ranks
from schemas.metrics import MetricAccumulator, rank_metrics, ranks_from_scores


def test_ranks_count_ties_against_the_target():
    scores = np.array(
        [
            [0.1, 0.9, 0.5, 0.3],  # target 2 (0.5): only 0.9 above -> rank 2
            [0.5, 0.5, 0.5, 0.1],  # target 0 ties with two others -> rank 3
            [0.2, 0.2, 0.2, 0.2],  # all equal -> last
            [0.7, 0.1, 0.2, 0.3],  # target is the best -> rank 1
        ]
    )
    targets = np.array([2, 0, 1, 0])
    assert ranks_from_scores(scores, targets).tolist() == [2, 3, 4, 1]


def test_nan_scores_count_as_worst():
    scores = np.array(
        [
            [np.nan, 0.3, 0.1],  # NaN item does not outrank target 2 (0.1)
            [np.nan, 0.3, 0.1],  # NaN target ranks last
            [np.nan, np.nan, 0.1],  # the target ties with no one
        ]
    )
    assert ranks_from_scores(scores, np.array([2, 0, 2])).tolist() == [2, 3, 1]


def test_ranks_reject_bad_shapes_and_targets():
    with pytest.raises(ValueError):
        ranks_from_scores(np.zeros((2, 3)), np.array([0]))
    with pytest.raises(ValueError):
        ranks_from_scores(np.zeros((1, 3)), np.array([3]))


def test_torch_ranks_match_numpy_including_ties_nan_and_inf():
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 4, size=(50, 7)).astype(np.float32)  # many ties
    scores[rng.random(scores.shape) < 0.1] = np.nan
    scores[rng.random(scores.shape) < 0.05] = -np.inf
    scores[rng.random(scores.shape) < 0.05] = np.inf
    targets = rng.integers(0, 7, size=50)
    got = torch_ranks(torch.from_numpy(scores), torch.from_numpy(targets))
    assert got.dtype == torch.int64
    assert got.tolist() == ranks_from_scores(scores, targets).tolist()


def test_rank_metrics_hand_computed():
    ranks = np.array([1, 2, 5, 11, 30])
    m = rank_metrics(ranks, ks=(1, 5, 10, 20))
    assert m["n_examples"] == 5
    assert m["recall@1"] == pytest.approx(1 / 5)
    assert m["recall@5"] == pytest.approx(3 / 5)  # rank 5 counts at k=5
    assert m["recall@10"] == pytest.approx(3 / 5)
    assert m["recall@20"] == pytest.approx(4 / 5)
    assert m["mrr@1"] == pytest.approx(1 / 5)
    assert m["mrr@5"] == pytest.approx((1 + 1 / 2 + 1 / 5) / 5)
    assert m["mrr@20"] == pytest.approx((1 + 1 / 2 + 1 / 5 + 1 / 11) / 5)
    assert m["ndcg@1"] == pytest.approx(1 / 5)
    ndcg5 = 1 + 1 / math.log2(3) + 1 / math.log2(6)
    assert m["ndcg@5"] == pytest.approx(ndcg5 / 5)
    assert m["ndcg@20"] == pytest.approx((ndcg5 + 1 / math.log2(12)) / 5)
    assert "hr@5" not in m


def test_rank_metrics_hr_alias_and_empty():
    m = rank_metrics([3, 7], ks=(5, 10), include_hr=True)
    assert m["hr@5"] == m["recall@5"] == pytest.approx(0.5)
    assert m["hr@10"] == pytest.approx(1.0)
    assert m["ndcg@10"] == pytest.approx((1 / 2 + 1 / 3) / 2)  # log2(4)=2, log2(8)=3
    empty = rank_metrics([], ks=(5,))
    assert empty == {"recall@5": 0.0, "mrr@5": 0.0, "ndcg@5": 0.0, "n_examples": 0}


def test_rank_metrics_rejects_bad_ranks():
    with pytest.raises(ValueError):
        rank_metrics([0, 1])
    with pytest.raises(ValueError):
        rank_metrics([1.5])
    with pytest.raises(ValueError):
        rank_metrics([1], ks=(0,))


def test_accumulator_equals_one_shot():
    rng = np.random.default_rng(1)
    ranks = rng.integers(1, 40, size=1000)
    acc = MetricAccumulator(ks=(1, 5, 20), include_hr=True)
    for chunk in np.array_split(ranks, 7):
        acc.add(chunk)
    acc.add(np.array([], dtype=np.int64))
    want = rank_metrics(ranks, ks=(1, 5, 20), include_hr=True)
    got = acc.result()
    assert got.keys() == want.keys()
    for name in want:
        assert got[name] == pytest.approx(want[name])
    assert MetricAccumulator(ks=(5,)).result()["n_examples"] == 0
