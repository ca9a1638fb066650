"""Sessions as flat arrays, the item vocabulary, evaluation sets and the split they form."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import cached_property
from itertools import repeat
from typing import Any

import numpy as np

from readers.columns import Sequences


@dataclass(frozen=True)
class SessionData:
    """Sessions as flat arrays; sessions ordered by their first click time."""

    items: np.ndarray  # int64 (n_clicks,) internal item index, 0..n_items-1
    offsets: np.ndarray  # int64 (n_sessions+1,); session s = items[offsets[s]:offsets[s+1]]
    timestamps: np.ndarray  # int64 (n_clicks,) epoch ms
    session_ids: np.ndarray  # object (n_sessions,) external session (or user) ids

    def __post_init__(self) -> None:
        if self.offsets.ndim != 1 or len(self.offsets) < 1 or self.offsets[0] != 0:
            raise ValueError("offsets must be 1-D and start at 0")
        if self.offsets[-1] != len(self.items) or len(self.timestamps) != len(self.items):
            raise ValueError(
                f"offsets end at {self.offsets[-1]}, but there are {len(self.items)} items and "
                f"{len(self.timestamps)} timestamps"
            )
        if len(self.session_ids) != len(self.offsets) - 1:
            raise ValueError(
                f"{len(self.session_ids)} session ids for {len(self.offsets) - 1} sessions"
            )

    @property
    def n_sessions(self) -> int:
        return len(self.offsets) - 1

    @property
    def n_clicks(self) -> int:
        return len(self.items)

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def session(self, s: int) -> np.ndarray:
        return self.items[self.offsets[s] : self.offsets[s + 1]]

    def select(self, sessions: np.ndarray) -> SessionData:
        """The sessions at the given indices (or boolean mask), in that order."""
        idx = np.flatnonzero(sessions) if sessions.dtype == bool else np.asarray(sessions)
        idx = idx.astype(np.int64)
        lengths = self.lengths[idx]
        offsets = np.zeros(len(idx) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        rows = ranges(self.offsets[idx], lengths)
        return SessionData(self.items[rows], offsets, self.timestamps[rows], self.session_ids[idx])

    @classmethod
    def empty(cls) -> SessionData:
        z = np.zeros(0, dtype=np.int64)
        return cls(z, np.zeros(1, dtype=np.int64), z, np.empty(0, dtype=object))


def ranges(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Concatenated aranges [start, start + length) as one int64 index array."""
    total = int(lengths.sum())
    ends = np.cumsum(lengths)
    return np.arange(total, dtype=np.int64) + np.repeat(starts - (ends - lengths), lengths)


@dataclass(frozen=True)
class ItemVocab:
    """External item ids <-> internal indices 0..n_items-1."""

    ids: tuple[str, ...]  # external id at each internal index
    _index: dict[str, int] = field(init=False, repr=False, compare=False)
    _ids: np.ndarray = field(init=False, repr=False, compare=False)  # object (n_items,)

    def __post_init__(self) -> None:
        index = {item: k for k, item in enumerate(self.ids)}
        if len(index) != len(self.ids):
            dup = next(i for i, c in Counter(self.ids).items() if c > 1)
            raise ValueError(f"duplicate item id {dup!r} in the vocabulary")
        object.__setattr__(self, "_index", index)
        ids = np.empty(len(self.ids), dtype=object)
        ids[:] = self.ids
        object.__setattr__(self, "_ids", ids)

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def n_items(self) -> int:
        return len(self.ids)

    def index(self, external: str) -> int | None:
        return self._index.get(external)

    def map(self, externals: Iterable[str]) -> np.ndarray:
        """int64 internal indices, -1 where an id is unknown."""
        values = externals.tolist() if isinstance(externals, np.ndarray) else list(externals)
        return np.fromiter(map(self._index.get, values, repeat(-1)), np.int64, len(values))

    def external(self, indices: np.ndarray) -> np.ndarray:
        """object array of external ids for internal indices."""
        return self._ids[np.asarray(indices, dtype=np.int64)]

    def support(self, data: SessionData) -> np.ndarray:
        """int64 (n_items,): clicks per item in `data` (training support, popularity)."""
        return np.bincount(data.items, minlength=self.n_items).astype(np.int64)

    @classmethod
    def from_items(cls, *item_arrays: np.ndarray) -> ItemVocab:
        """Ids in order of first appearance across the arrays (first array first)."""
        seen: dict[str, None] = {}
        for arr in item_arrays:
            seen.update(dict.fromkeys(np.asarray(arr, dtype=object).ravel().tolist()))
        return cls(tuple(seen))


@dataclass(frozen=True)
class EvalData:
    sessions: SessionData  # whole sequences fed to the model
    # int64 (n_sessions,) first position whose item is a target: 1 = every next item;
    # len-1 = last item only
    eval_from: np.ndarray
    negatives: np.ndarray | None  # int64 (n_sessions, 99) for the sampled protocol

    def __post_init__(self) -> None:
        n = self.sessions.n_sessions
        if self.eval_from.shape != (n,):
            raise ValueError(f"eval_from has shape {self.eval_from.shape}, expected ({n},)")
        if n and (self.eval_from < 1).any():
            raise ValueError("eval_from must be >= 1 (position 0 has no history)")
        if self.negatives is not None and (self.negatives.ndim != 2 or len(self.negatives) != n):
            raise ValueError(f"negatives has shape {self.negatives.shape}, expected ({n}, C)")

    @property
    def n_targets(self) -> int:
        """How many (history -> next item) examples are evaluated."""
        return int(np.maximum(self.sessions.lengths - self.eval_from, 0).sum())

    def targets(self) -> np.ndarray:
        """int64 (n_targets,): the target items, session by session."""
        s = self.sessions
        starts = s.offsets[:-1] + self.eval_from
        lengths = np.maximum(s.offsets[1:] - starts, 0)
        return s.items[ranges(starts, lengths)]


@dataclass(frozen=True)
class DatasetSplit:
    name: str
    vocab: ItemVocab
    train: SessionData
    valid: EvalData | None
    test: EvalData
    time_range: dict  # {"first_timestamp": ms, "last_timestamp": ms, "n_events": n}

    @cached_property
    def item_support(self) -> np.ndarray:
        """int64 (n_items,): training clicks per item (sampler, popularity fallback)."""
        return self.vocab.support(self.train)

    def stats(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "name": self.name,
            "n_items": self.vocab.n_items,
            "train_sessions": self.train.n_sessions,
            "train_clicks": self.train.n_clicks,
            "test_sessions": self.test.sessions.n_sessions,
            "test_targets": self.test.n_targets,
        }
        if self.valid is not None:
            out["valid_sessions"] = self.valid.sessions.n_sessions
            out["valid_targets"] = self.valid.n_targets
        return out | {f"time_{k}": v for k, v in self.time_range.items()}


def to_session_data(seqs: Sequences, vocab: ItemVocab, *, min_length: int = 1) -> SessionData:
    """Map items through the vocabulary, dropping unknown items, then sessions < min_length."""
    mapped = vocab.map(seqs.item_ids)
    known = mapped >= 0
    if not known.all():
        seqs = keep_clicks(seqs, known)
        mapped = mapped[known]
    data = SessionData(mapped, seqs.offsets.astype(np.int64), seqs.timestamps, seqs.session_ids)
    if min_length > 1:
        data = data.select(data.lengths >= min_length)
    return data


def keep_clicks(seqs: Sequences, keep: np.ndarray) -> Sequences:
    """Keep the clicks where `keep` is True; drop sessions left empty."""
    seq_of = np.repeat(np.arange(len(seqs), dtype=np.int64), seqs.lengths)
    counts = np.bincount(seq_of[keep], minlength=len(seqs))
    alive = counts > 0
    offsets = np.zeros(int(alive.sum()) + 1, dtype=np.int64)
    np.cumsum(counts[alive], out=offsets[1:])
    return Sequences(seqs.session_ids[alive], offsets, seqs.item_ids[keep], seqs.timestamps[keep])
