"""Extra negatives for the mini-batches, drawn ~ support ** alpha, in bulk.

Drawing per step costs a kernel launch and a search per mini-batch; the authors draw
millions of ids at once onto the device and hand out one slice per step. alpha = 1 follows
popularity (like the in-batch negatives), alpha = 0 is uniform over the training items.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor


def sampling_weights(support: np.ndarray, alpha: float) -> np.ndarray:
    """support ** alpha, 0 for items never clicked in training (even when alpha = 0)."""
    support = np.asarray(support, dtype=np.float64)
    if support.ndim != 1 or np.any(support < 0) or not np.all(np.isfinite(support)):
        raise ValueError("item support must be a 1-d array of non-negative counts")
    seen = support > 0
    weights = np.power(support, alpha, out=np.zeros_like(support), where=seen)
    if weights.sum() <= 0:
        raise ValueError("item support is all zero: nothing to sample negatives from")
    return weights


class NegativeSampler:
    """Hands out `n_sample` item ids per step from a cache of `cache_size` pre-drawn ids."""

    def __init__(
        self,
        support: np.ndarray,
        alpha: float,
        n_sample: int,
        cache_size: int = 10_000_000,
        *,
        device: torch.device | str = "cpu",
        seed: int = 0,
    ) -> None:
        if n_sample < 1:
            raise ValueError("n_sample must be >= 1 for a sampler")
        self.n_sample = int(n_sample)
        self.device = torch.device(device)
        weights = sampling_weights(support, alpha)
        self.probabilities = weights / weights.sum()
        cdf = np.cumsum(self.probabilities)
        cdf[-1] = 1.0  # rounding must not leave a gap above the last item
        self._cdf = torch.as_tensor(cdf, dtype=torch.float64, device=self.device)
        self._cdf_np = cdf
        # A guide table (Chen & Asau 1974) for the CPU: guide[k] = searchsorted(cdf, k / K), so
        # u in bucket floor(u K) starts its search there and rarely moves. Same ids as a
        # binary search over 10M draws, ~3x faster (a refill is ~1 s of a short CPU run).
        self._n_buckets = 4 * len(cdf)
        grid = np.arange(self._n_buckets, dtype=np.float64) / self._n_buckets
        self._guide = np.searchsorted(cdf, grid, side="right")
        self._rows = max(1, int(cache_size) // self.n_sample)
        self._generator = torch.Generator(device=self.device)
        self._generator.manual_seed(int(seed))
        self._cache: Tensor | None = None
        self._next = 0

    # On the CPU the cache is drawn in slices of this many rows as the steps reach them: the
    # generator yields the same numbers in slices as in one call, so these are the ids of one
    # bulk refill, but a short run no longer converts ids it never uses (10M ids take ~1 s on
    # one core). CUDA draws the whole cache at once (its generator counts per call).
    _SLICE_ROWS = 256

    def _refill(self) -> None:
        n_rows = min(self._SLICE_ROWS, self._rows) if self.device.type == "cpu" else self._rows
        u = torch.rand(
            n_rows * self.n_sample,
            generator=self._generator,
            device=self.device,
            dtype=torch.float64,
        )
        # searchsorted(right=True): item i is drawn when cdf[i-1] <= u < cdf[i].
        if self.device.type == "cpu":
            # In chunks: the search's temporaries stay small next to the cache.
            ids = torch.cat(
                [torch.from_numpy(self._guided_search(c.numpy())) for c in u.split(2**20)]
            )
        else:
            ids = torch.searchsorted(self._cdf, u, right=True)
        self._cache = ids.clamp_(max=len(self._cdf) - 1).view(n_rows, self.n_sample)
        self._next = 0

    def _guided_search(self, u: np.ndarray) -> np.ndarray:
        """np.searchsorted(cdf, u, side="right"), exactly, via the guide table."""
        cdf = self._cdf_np
        bucket = np.minimum((u * self._n_buckets).astype(np.int64), self._n_buckets - 1)
        ids = self._guide[bucket]
        # Rounding of u * K may pick the bucket above u's: step down while cdf[id - 1] > u.
        todo = np.flatnonzero((ids > 0) & (cdf[np.maximum(ids - 1, 0)] > u))
        while len(todo):
            ids[todo] -= 1
            todo = todo[(ids[todo] > 0) & (cdf[np.maximum(ids[todo] - 1, 0)] > u[todo])]
        # Then up while cdf[id] <= u (the bucket holds more than one item boundary).
        last = len(cdf) - 1
        todo = np.flatnonzero((ids < last) & (cdf[np.minimum(ids, last)] <= u))
        while len(todo):
            ids[todo] += 1
            todo = todo[(ids[todo] < last) & (cdf[np.minimum(ids[todo], last)] <= u[todo])]
        return ids

    def sample(self) -> Tensor:
        """(n_sample,) int64 item ids on the sampler's device."""
        if self._cache is None or self._next >= len(self._cache):
            self._refill()
        assert self._cache is not None
        ids = self._cache[self._next]
        self._next += 1
        return ids
