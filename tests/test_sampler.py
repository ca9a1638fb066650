"""The negative sampler draws ~ support ** alpha, from a bulk cache, repeatably."""

import numpy as np
import pytest
import torch

from batch_training.sampler import NegativeSampler, sampling_weights

SUPPORT = np.array([1, 5, 20, 0, 100, 3, 40], dtype=np.int64)


def draw(sampler: NegativeSampler, n_batches: int) -> np.ndarray:
    return torch.cat([sampler.sample() for _ in range(n_batches)]).numpy()


def chi_square(counts: np.ndarray, probabilities: np.ndarray) -> float:
    seen = probabilities > 0
    expected = probabilities[seen] * counts.sum()
    return float(np.sum((counts[seen] - expected) ** 2 / expected))


@pytest.mark.parametrize("alpha", [0.0, 0.3, 1.0])
def test_empirical_distribution_follows_support_power_alpha(alpha):
    sampler = NegativeSampler(SUPPORT, alpha, n_sample=500, cache_size=20_000, seed=1)
    ids = draw(sampler, 400)  # 200k draws, crossing several cache refills
    counts = np.bincount(ids, minlength=len(SUPPORT))
    want = np.where(SUPPORT > 0, SUPPORT.astype(float) ** alpha, 0.0)
    want /= want.sum()
    np.testing.assert_allclose(sampler.probabilities, want, rtol=1e-12)
    # 5 degrees of freedom (6 items with support): the 0.1% critical value is 20.5.
    assert chi_square(counts, want) < 20.5
    assert counts[3] == 0  # never clicked in training: never a negative


def test_alpha_zero_is_uniform_over_clicked_items():
    weights = sampling_weights(SUPPORT, 0.0)
    assert weights.tolist() == [1, 1, 1, 0, 1, 1, 1]


def test_bad_support_is_refused():
    with pytest.raises(ValueError, match="non-negative"):
        sampling_weights(np.array([1, -2, 3]), 0.5)
    with pytest.raises(ValueError, match="all zero"):
        sampling_weights(np.zeros(4), 0.5)


def test_cache_is_drawn_in_bulk_and_refilled():
    sampler = NegativeSampler(SUPPORT, 0.5, n_sample=8, cache_size=32, seed=0)
    first = [sampler.sample() for _ in range(4)]  # the cache holds exactly 4 batches
    cache = sampler._cache
    assert all(s.shape == (8,) and s.dtype == torch.int64 for s in first)
    assert all(torch.equal(s, cache[i]) for i, s in enumerate(first))
    sampler.sample()  # the fifth batch needs a fresh draw
    assert sampler._cache is not cache


def test_same_seed_same_samples_other_seed_other_samples():
    a = draw(NegativeSampler(SUPPORT, 0.5, 64, 256, seed=7), 10)
    b = draw(NegativeSampler(SUPPORT, 0.5, 64, 256, seed=7), 10)
    c = draw(NegativeSampler(SUPPORT, 0.5, 64, 256, seed=8), 10)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)


def test_sliced_cache_hands_out_the_ids_of_one_bulk_draw():
    # The CPU cache is drawn a slice of rows at a time; the ids are those of one draw of
    # rows * n_sample numbers searched in the cdf, whatever the slice size.
    n_sample, rows = 7, 37
    sampler = NegativeSampler(SUPPORT, 0.3, n_sample, cache_size=n_sample * rows, seed=4)
    sampler._SLICE_ROWS = 5  # slices that do not divide the 37 rows of the cache
    got = torch.stack([sampler.sample() for _ in range(2 * rows)])
    gen = torch.Generator().manual_seed(4)
    u = torch.rand(2 * rows * n_sample, generator=gen, dtype=torch.float64)
    cdf = torch.as_tensor(sampler._cdf_np)
    want = torch.searchsorted(cdf, u, right=True).clamp_(max=len(cdf) - 1)
    assert torch.equal(got.flatten(), want)
