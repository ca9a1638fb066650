"""Every row's k best columns of a score matrix, seen items left out: one pass, no lock held.

A worker's exact search is one BLAS product of the micro-batch's queries with all items,
then this selection. Per row it keeps the k best scores so far in a small sorted array and
compares every column with its smallest: about one comparison per item, since few items
beat the k-th best. Compiled with numba and run with the interpreter lock released, so the
worker's event loop goes on reading and sending while a batch is searched (numpy's
`argpartition`, which costs about as much, holds the lock throughout; FAISS's flat index
releases it, but keeps a heap per query over all items, 5-10x the work at k = 20).

Compiled on first use (about a second) and cached on disk.
"""

from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True, nogil=True, error_model="numpy")
def _select(
    scores: np.ndarray, k: int, exclude: np.ndarray, top: np.ndarray, top_scores: np.ndarray
) -> None:
    batch, n = scores.shape
    for b in range(batch):
        row = scores[b]
        for e in range(exclude.shape[1]):
            item = exclude[b, e]
            if 0 <= item < n:
                row[item] = -np.inf
        best, where = top_scores[b], top[b]
        best[:] = -np.inf
        where[:] = -1
        for j in range(n):
            v = row[j]
            # Strictly better than the k-th: equal scores keep the lower (earlier) index,
            # and -inf (excluded) or NaN never enter.
            if v > best[k - 1]:
                p = k - 1
                while p > 0 and v > best[p - 1]:
                    best[p] = best[p - 1]
                    where[p] = where[p - 1]
                    p -= 1
                best[p] = v
                where[p] = j


def top_k(
    scores: np.ndarray, k: int, exclude: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Each row's k best columns of `scores` (B, n) float32, best first: (indices, scores),
    (B, k) each; -1 / -inf where fewer than k remain. Ties go to the lower index.

    `exclude` (B, E) int64, padded with -1: columns a row never returns; they are set to -inf
    in `scores` (which is modified).
    """
    batch = scores.shape[0]
    top = np.empty((batch, k), dtype=np.int64)
    top_scores = np.empty((batch, k), dtype=np.float32)
    if k <= 0 or batch == 0:
        return top, top_scores
    if exclude is None or exclude.shape[0] == 0:
        exclude = np.full((batch, 0), -1, dtype=np.int64)
    _select(
        np.ascontiguousarray(scores, dtype=np.float32),
        k,
        np.ascontiguousarray(exclude, dtype=np.int64),
        top,
        top_scores,
    )
    return top, top_scores
