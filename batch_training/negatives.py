"""Sampled negatives for the sampled evaluation protocol, and evaluation sets that carry them.

Every evaluated sequence gets `n_negatives` distinct items the session (or user, over the
whole sequence) never clicked, drawn uniformly with `np.random.default_rng(seed)` for test and
`default_rng(seed + 1)` for validation; Grocery keeps its given negatives.
"""

from __future__ import annotations

import logging

import numpy as np

from batch_training.options import SplitOptions
from batch_training.sessions import EvalData, ItemVocab, SessionData

log = logging.getLogger(__name__)


def sample_negatives(
    exclude: SessionData, n_items: int, n: int, rng: np.random.Generator
) -> np.ndarray | None:
    """int64 (n_sessions, n): distinct items outside each session's items, uniformly drawn.

    Draws with rejection (an item the session clicked, or one already drawn for that row, is
    drawn again), all rows at once; rows left short are redrawn wider. None (with a warning)
    when some session leaves fewer than n items to draw from.
    """
    n_rows = exclude.n_sessions
    row_of = np.repeat(np.arange(n_rows, dtype=np.int64), exclude.lengths)
    seen = np.unique(row_of * n_items + exclude.items)  # sorted (row, item) keys
    free = n_items - np.bincount(seen // n_items, minlength=n_rows)
    if n_rows and free.min() < n:
        s = int(free.argmin())
        log.warning(
            "no sampled negatives: session %s leaves %d of %d items, %d needed",
            exclude.session_ids[s],
            free[s],
            n_items,
            n,
        )
        return None
    out = np.empty((n_rows, n), dtype=np.int64)
    todo = np.arange(n_rows, dtype=np.int64)
    width = n + n // 8 + 16  # enough for most rows; short rows are redrawn wider
    while len(todo):
        short = []
        n_chunks = max(1, -(-len(todo) * width // 4_000_000))  # bound memory per draw
        for rows in np.array_split(todo, n_chunks):
            cand = rng.integers(0, n_items, size=(len(rows), width))  # (rows, width)
            keys = (rows[:, None] * n_items + cand).ravel()
            ok = np.ones(keys.size, dtype=bool)
            if len(seen):
                at = np.minimum(np.searchsorted(seen, keys), len(seen) - 1)
                ok = seen[at] != keys
            first = np.zeros(keys.size, dtype=bool)
            first[np.unique(keys, return_index=True)[1]] = True  # first draw of each item
            ok = (ok & first).reshape(cand.shape)
            rank = np.cumsum(ok, axis=1)
            full = rank[:, -1] >= n
            take = ok[full] & (rank[full] <= n)
            out[rows[full]] = cand[full][take].reshape(-1, n)  # kept in draw order
            short.append(rows[~full])
        todo = np.concatenate(short)
        width *= 2
    return out


def eval_data(
    sessions: SessionData,
    eval_from: np.ndarray,
    vocab: ItemVocab,
    options: SplitOptions,
    seed: int,
    exclude: SessionData | None = None,
) -> EvalData:
    negatives = None
    if options.n_negatives:
        negatives = sample_negatives(
            sessions if exclude is None else exclude,
            vocab.n_items,
            options.n_negatives,
            np.random.default_rng(seed),
        )
    return EvalData(sessions, eval_from.astype(np.int64), negatives)
