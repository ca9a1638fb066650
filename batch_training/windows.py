"""History-window examples, as ReChorus trains sequential models (pure numpy, no torch).

Every position p >= 1 of a user's training sequence is one example: the target is the item
at p, the input the last `history_max` items before it (fewer near the start). Windows are
left-aligned in a fixed (n_examples, history_max) matrix padded with PAD after the last item;
`lengths` says how many are real. Negatives are redrawn every epoch: uniform items the user
never clicked in training (ReChorus excludes the training clicks only, so a user's validation
or test item may be drawn).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

PAD = -1  # a padding slot of a window; never an item index


@dataclass(frozen=True)
class Windows:
    """All training examples of a set of sequences."""

    items: np.ndarray  # int32 (n_examples, history_max); row i = items[i, :lengths[i]], then PAD
    lengths: np.ndarray  # int64 (n_examples,), 1..history_max
    targets: np.ndarray  # int64 (n_examples,)
    users: np.ndarray  # int64 (n_examples,) the sequence each example comes from

    def __len__(self) -> int:
        return len(self.targets)


def build_windows(items: np.ndarray, offsets: np.ndarray, history_max: int) -> Windows:
    """One example per position p >= 1 of every sequence (items[offsets[s]:offsets[s+1]])."""
    if history_max < 1:
        raise ValueError(f"history_max must be >= 1, got {history_max}")
    items = np.asarray(items, dtype=np.int64)
    offsets = np.asarray(offsets, dtype=np.int64)
    lengths = np.diff(offsets)
    user_of = np.repeat(np.arange(len(lengths), dtype=np.int64), lengths)  # (n_clicks,)
    target_at = np.flatnonzero(np.arange(len(items)) > offsets[user_of])  # not a first click
    users = user_of[target_at]
    start = np.maximum(offsets[users], target_at - history_max)  # first item of each window
    n = target_at - start
    slot = np.arange(history_max)
    real = slot[None, :] < n[:, None]  # (n_examples, history_max)
    window = np.where(real, items[np.where(real, start[:, None] + slot, 0)], PAD)
    return Windows(window.astype(np.int32), n, items[target_at], users)


class NegativeDrawer:
    """Uniform negatives outside each user's items (rejection sampling, vectorised)."""

    def __init__(self, items: np.ndarray, offsets: np.ndarray, n_items: int) -> None:
        items = np.asarray(items, dtype=np.int64)
        lengths = np.diff(np.asarray(offsets, dtype=np.int64))
        user_of = np.repeat(np.arange(len(lengths), dtype=np.int64), lengths)
        self.n_items = int(n_items)
        self.seen = np.unique(user_of * self.n_items + items)  # sorted (user, item) keys
        clicked = np.bincount(self.seen // self.n_items, minlength=len(lengths))
        if len(clicked) and clicked.max() >= self.n_items:
            user = int(clicked.argmax())
            raise ValueError(f"sequence {user} clicked all {n_items} items: no negative to draw")

    def _clicked(self, users: np.ndarray, cand: np.ndarray) -> np.ndarray:
        keys = users * self.n_items + cand
        at = np.minimum(np.searchsorted(self.seen, keys), len(self.seen) - 1)
        return self.seen[at] == keys

    def draw(self, users: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
        """int64 (len(users), n): for each row, n items (with repeats) its user never clicked."""
        users = np.repeat(np.asarray(users, dtype=np.int64), n)
        out = rng.integers(0, self.n_items, size=len(users))
        bad = np.flatnonzero(self._clicked(users, out))
        while len(bad):  # redraw only the clicked ones, as ReChorus does
            out[bad] = rng.integers(0, self.n_items, size=len(bad))
            bad = bad[self._clicked(users[bad], out[bad])]
        return out.reshape(-1, n)
