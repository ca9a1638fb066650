"""GRU4Rec's losses against the formulas written out in numpy on tiny score matrices."""

import math

import numpy as np
import pytest
import torch

from batch_training.config import TrainConfig
from batch_training.losses import (
    bpr_loss,
    bpr_max_loss,
    cross_entropy_loss,
    loss_function,
    negative_mask,
    softmax_over_negatives,
    top1_loss,
    top1_max_loss,
)

# B = 3 lanes, C = 5 columns: 3 in-batch targets (the diagonal is the positive) + 2 samples.
SCORES = np.array(
    [
        [2.0, 0.5, -1.0, 0.3, 1.2],
        [0.1, -0.4, 0.8, -2.0, 0.0],
        [1.5, 1.5, 0.7, 0.2, -0.3],
    ]
)


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def negatives_of(row: int, in_batch: bool = True) -> list[int]:
    b, c = SCORES.shape
    return [j for j in range(c) if j != row and (in_batch or j >= b)]


def t(x) -> torch.Tensor:
    return torch.tensor(x, dtype=torch.float64)


def test_cross_entropy_by_hand_on_two_columns():
    # One lane, positive 1.0 against one sampled negative 0.0: -log(e / (e + 1)).
    scores = t([[1.0, 0.0]])
    expected = -math.log(math.e / (math.e + 1.0))
    assert cross_entropy_loss(scores).item() == pytest.approx(expected, abs=1e-12)


def test_cross_entropy_with_logq_correction():
    log_q = np.log(np.array([3.0, 1.0, 7.0, 2.0, 5.0]))
    for logq in (0.0, 0.5, 1.0):
        corrected = SCORES - logq * log_q[None, :]
        expected = [-(corrected[i, i] - np.log(np.exp(corrected[i]).sum())) for i in range(3)]
        got = cross_entropy_loss(t(SCORES), t(log_q), logq).numpy()
        np.testing.assert_allclose(got, expected, rtol=1e-12)
    # The correction changes the loss (it is not silently ignored).
    assert not np.allclose(
        cross_entropy_loss(t(SCORES), t(log_q), 1.0).numpy(),
        cross_entropy_loss(t(SCORES)).numpy(),
    )


def test_softmax_over_negatives_skips_the_positive():
    weights = softmax_over_negatives(t(SCORES)).numpy()
    for i in range(3):
        neg = negatives_of(i)
        e = np.exp(SCORES[i, neg])
        assert weights[i, i] == 0.0
        np.testing.assert_allclose(weights[i, neg], e / e.sum(), rtol=1e-12)


@pytest.mark.parametrize("bpreg", [0.0, 0.9, 2.0])
def test_bpr_max_matches_formula(bpreg):
    expected = []
    for i in range(3):
        neg = negatives_of(i)
        r = SCORES[i, neg]
        s = np.exp(r) / np.exp(r).sum()
        ranking = np.sum(s * sigmoid(SCORES[i, i] - r))
        expected.append(-np.log(ranking + 1e-24) + bpreg * np.sum(s * r**2))
    got = bpr_max_loss(t(SCORES), bpreg).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-12)


def test_top1_max_matches_formula():
    expected = []
    for i in range(3):
        neg = negatives_of(i)
        r = SCORES[i, neg]
        s = np.exp(r) / np.exp(r).sum()
        expected.append(np.sum(s * (sigmoid(r - SCORES[i, i]) + sigmoid(r**2))))
    np.testing.assert_allclose(top1_max_loss(t(SCORES)).numpy(), expected, rtol=1e-12)


def test_bpr_and_top1_average_over_negatives():
    bpr, top1 = [], []
    for i in range(3):
        r = SCORES[i, negatives_of(i)]
        bpr.append(np.mean(-np.log(sigmoid(SCORES[i, i] - r))))
        top1.append(np.mean(sigmoid(r - SCORES[i, i]) + sigmoid(r**2)))
    np.testing.assert_allclose(bpr_loss(t(SCORES)).numpy(), bpr, rtol=1e-12)
    np.testing.assert_allclose(top1_loss(t(SCORES)).numpy(), top1, rtol=1e-12)


def test_sampled_only_negatives_ignore_other_lanes_targets():
    mask = negative_mask(t(SCORES), in_batch=False)
    assert mask.numpy().tolist() == [[False, False, False, True, True]] * 3
    bpr = [np.mean(-np.log(sigmoid(SCORES[i, i] - SCORES[i, 3:]))) for i in range(3)]
    np.testing.assert_allclose(bpr_loss(t(SCORES), mask).numpy(), bpr, rtol=1e-12)
    xe = [-(SCORES[i, i] - np.log(np.exp(SCORES[i, [i, 3, 4]]).sum())) for i in range(3)]
    np.testing.assert_allclose(cross_entropy_loss(t(SCORES), negatives=mask).numpy(), xe)


def test_configured_bpr_max_applies_elu_first():
    config = TrainConfig(loss="bpr-max", final_act="elu", elu_param=0.5, bpreg=1.0)
    activated = np.where(SCORES > 0, SCORES, 0.5 * (np.exp(SCORES) - 1.0))
    expected = []
    for i in range(3):
        r = activated[i, negatives_of(i)]
        s = np.exp(r) / np.exp(r).sum()
        expected.append(
            -np.log(np.sum(s * sigmoid(activated[i, i] - r)) + 1e-24) + np.sum(s * r**2)
        )
    got = loss_function(config)(t(SCORES), None).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-12)


def test_configured_cross_entropy_ignores_final_act_and_uses_logq():
    log_q = np.log(np.array([2.0, 2.0, 9.0, 1.0, 4.0]))
    config = TrainConfig(loss="cross-entropy", final_act="elu", elu_param=1.0, logq=1.0)
    corrected = SCORES - log_q[None, :]
    expected = [-(corrected[i, i] - np.log(np.exp(corrected[i]).sum())) for i in range(3)]
    got = loss_function(config)(t(SCORES), t(log_q)).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-12)


def test_losses_fall_when_the_positive_wins():
    """A higher positive score must lower every loss (sign and direction check)."""
    better = SCORES.copy()
    better[np.arange(3), np.arange(3)] += 3.0
    for fn in (cross_entropy_loss, top1_max_loss, bpr_loss, top1_loss):
        assert torch.all(fn(t(better)) < fn(t(SCORES)))
    assert torch.all(bpr_max_loss(t(better), 0.0) < bpr_max_loss(t(SCORES), 0.0))
