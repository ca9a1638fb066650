"""The two classic baselines of the GRU4Rec papers, as SessionScorers so they are evaluated
by exactly the same code as the model.

- MostPopular: every step scores items by their training click count.
- ItemKNN: scores items by their similarity to the session's last item, where two items are
  similar when they occur in the same training sessions:
      sim(i, j) = cooc(i, j) / (supp(i)^alpha * supp(j)^(1 - alpha) + lambda)
  cooc = number of training sessions holding both, supp = sessions holding the item; alpha
  0.5 is the cosine, lambda damps the chance similarity of rarely seen items. Only the top
  `n_neighbours` per item are kept (a dense 43k x 43k float matrix would need 7.4 GB).
  Items outside the neighbour list score below every neighbour and are ordered by
  popularity among themselves (a tie-break the plain method lacks; it never lifts an
  item above a neighbour).
"""

from __future__ import annotations

import logging
import warnings
from typing import Any

import numpy as np
import torch

log = logging.getLogger(__name__)


def item_counts(train: Any, n_items: int) -> np.ndarray:
    """Training clicks per item, float64 (n_items,)."""
    items = np.asarray(train.items, dtype=np.int64)
    return np.bincount(items, minlength=n_items).astype(np.float64)


class MostPopular:
    """Scores every item by its training support, whatever the session did."""

    def __init__(self, support: np.ndarray, device: str | torch.device = "cpu") -> None:
        self.device = torch.device(device)
        self.n_items = len(support)
        self.support = torch.as_tensor(np.asarray(support, np.float32), device=self.device)

    @classmethod
    def fit(cls, train: Any, n_items: int, **options: Any) -> MostPopular:
        return cls(item_counts(train, n_items), **options)

    def init_state(self, batch_size: int) -> torch.Tensor:
        return torch.zeros(batch_size, dtype=torch.long, device=self.device)

    def step(self, state: torch.Tensor, items: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return state, self.support.expand(len(items), -1)

    def advance(self, state: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        return state

    def reset(self, state: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return state


def _cooccurrence(train: Any, n_items: int) -> tuple[torch.Tensor, np.ndarray]:
    """Session co-occurrence counts as a CSR matrix (n_items, n_items) and item supports."""
    items = np.asarray(train.items, dtype=np.int64)
    offsets = np.asarray(train.offsets, dtype=np.int64)
    session_of = np.repeat(np.arange(len(offsets) - 1), np.diff(offsets))
    # one entry per (session, item): a repeated click does not count twice
    code = np.unique(session_of * n_items + items)
    sessions, uniq_items = code // n_items, code % n_items
    support = np.bincount(uniq_items, minlength=n_items).astype(np.float64)
    shape = (len(offsets) - 1, n_items)
    with warnings.catch_warnings():  # torch flags sparse CSR as beta
        warnings.simplefilter("ignore", UserWarning)
        x = torch.sparse_coo_tensor(
            torch.from_numpy(np.stack([sessions, uniq_items])),
            torch.ones(len(code), dtype=torch.float32),
            shape,
            is_coalesced=True,
        )
        cooc = torch.sparse.mm(x.t().coalesce().to_sparse_csr(), x.to_sparse_csr())
    return cooc, support


def item_neighbours(
    train: Any,
    n_items: int,
    n_neighbours: int = 100,
    lmbd: float = 20.0,
    alpha: float = 0.5,
    block: int = 1024,
) -> tuple[np.ndarray, np.ndarray]:
    """Top neighbours of every item: indices int64 and similarities float32, both
    (n_items, n_neighbours); similarity 0 marks an empty slot (index is then meaningless)."""
    cooc, support = _cooccurrence(train, n_items)
    crow = cooc.crow_indices().numpy()
    col = cooc.col_indices().numpy()
    val = cooc.values().numpy()
    k = min(n_neighbours, n_items)
    neighbours = np.zeros((n_items, k), dtype=np.int64)
    sims = np.zeros((n_items, k), dtype=np.float32)
    right = support ** (1.0 - alpha)
    for start in range(0, n_items, block):
        stop = min(start + block, n_items)
        lo, hi = crow[start], crow[stop]
        dense = np.zeros((stop - start, n_items), dtype=np.float32)  # one block of rows
        rows = np.repeat(np.arange(stop - start), np.diff(crow[start : stop + 1]))
        dense[rows, col[lo:hi]] = val[lo:hi]
        dense[np.arange(stop - start), np.arange(start, stop)] = 0.0  # not its own neighbour
        dense /= (support[start:stop, None] ** alpha) * right[None, :] + lmbd
        top = torch.topk(torch.from_numpy(dense), k, dim=1)
        neighbours[start:stop] = top.indices.numpy()
        sims[start:stop] = top.values.numpy()
    return neighbours, sims


class ItemKNN:
    """Scores items by session co-occurrence with the last item fed."""

    def __init__(
        self,
        neighbours: np.ndarray,
        sims: np.ndarray,
        support: np.ndarray,
        device: str | torch.device = "cpu",
    ) -> None:
        self.device = torch.device(device)
        self.n_items = len(support)
        self.neighbours = torch.as_tensor(neighbours, device=self.device)
        self.sims = torch.as_tensor(sims, device=self.device)
        # non-neighbours: below every positive similarity, ordered by popularity, in [-1, 0)
        pop = np.asarray(support, np.float64)
        self.floor = torch.as_tensor(
            (pop / (pop.max() + 1.0) - 1.0).astype(np.float32), device=self.device
        )

    @classmethod
    def fit(
        cls,
        train: Any,
        n_items: int,
        n_neighbours: int = 100,
        lmbd: float = 20.0,
        alpha: float = 0.5,
        device: str | torch.device = "cpu",
    ) -> ItemKNN:
        neighbours, sims = item_neighbours(train, n_items, n_neighbours, lmbd, alpha)
        return cls(neighbours, sims, item_counts(train, n_items), device=device)

    def init_state(self, batch_size: int) -> torch.Tensor:
        return torch.zeros(batch_size, dtype=torch.long, device=self.device)

    def step(self, state: torch.Tensor, items: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        items = items.to(self.device)
        scores = self.floor.expand(len(items), -1).clone()  # (B, n_items)
        sims = self.sims[items]  # (B, k)
        # empty slots (sim 0) would overwrite a real score with the floor otherwise
        keep = torch.where(sims > 0, sims, scores.gather(1, self.neighbours[items]))
        scores.scatter_(1, self.neighbours[items], keep)
        return state, scores

    def advance(self, state: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        return state

    def reset(self, state: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return state
