"""Clicks as columns: a click log in canonical order, and per-session item sequences.

Every dataset reader returns one of these; `batch_training` builds its splits from them.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np

from schemas.events import ClickEvent


@dataclass(frozen=True)
class ClickLog:
    """Clicks as columns, one row per click, in canonical (timestamp) order."""

    session_ids: np.ndarray  # object (n,) str
    item_ids: np.ndarray  # object (n,) str, external ids
    timestamps: np.ndarray  # int64 (n,) epoch ms
    user_ids: np.ndarray | None = None  # object (n,) str or None (anonymous)

    def __len__(self) -> int:
        return len(self.timestamps)

    def events(self, limit: int | None = None) -> Iterator[ClickEvent]:
        n = len(self) if limit is None else min(limit, len(self))
        sessions, items = self.session_ids[:n], self.item_ids[:n]
        times = self.timestamps[:n].tolist()
        if self.user_ids is None:
            for s, i, t in zip(sessions, items, times, strict=True):
                yield ClickEvent(s, i, t)
        else:
            for s, i, t, u in zip(sessions, items, times, self.user_ids[:n], strict=True):
                yield ClickEvent(s, i, t, user_id=u)

    def take(self, index: np.ndarray) -> ClickLog:
        users = None if self.user_ids is None else self.user_ids[index]
        return ClickLog(
            self.session_ids[index], self.item_ids[index], self.timestamps[index], users
        )

    def sorted(self) -> ClickLog:
        """Canonical order: by timestamp, then session (first appearance), then row."""
        codes = factorize(self.session_ids)
        order = np.lexsort((np.arange(len(self)), codes, self.timestamps))
        return self.take(order)

    def to_sequences(self) -> Sequences:
        """Group by session, keeping row order inside a session; sessions by first row."""
        codes = factorize(self.session_ids)  # codes follow first appearance
        order = np.argsort(codes, kind="stable")
        counts = np.bincount(codes, minlength=int(codes.max()) + 1 if len(codes) else 0)
        offsets = np.zeros(len(counts) + 1, dtype=np.int64)
        np.cumsum(counts, out=offsets[1:])
        first_rows = order[offsets[:-1]]
        return Sequences(
            session_ids=self.session_ids[first_rows],
            offsets=offsets,
            item_ids=self.item_ids[order],
            timestamps=self.timestamps[order],
        )

    @classmethod
    def from_events(cls, events: Iterable[ClickEvent]) -> ClickLog:
        sessions, items, times, users = [], [], [], []
        for e in events:
            sessions.append(e.session_id)
            items.append(e.item_id)
            times.append(e.timestamp)
            users.append(e.user_id)
        has_users = any(u is not None for u in users)
        return cls(
            session_ids=object_array(sessions),
            item_ids=object_array(items),
            timestamps=np.asarray(times, dtype=np.int64).reshape(-1),
            user_ids=object_array(users) if has_users else None,
        )


@dataclass(frozen=True)
class Sequences:
    """Per-session (or per-user) item sequences as flat arrays, each in click order."""

    session_ids: np.ndarray  # object (n_seq,) str
    offsets: np.ndarray  # int64 (n_seq + 1,); sequence s = item_ids[offsets[s]:offsets[s+1]]
    item_ids: np.ndarray  # object (n,) str
    timestamps: np.ndarray  # int64 (n,) epoch ms

    def __len__(self) -> int:
        return len(self.session_ids)

    @property
    def n_clicks(self) -> int:
        return len(self.item_ids)

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def items_of(self, s: int) -> np.ndarray:
        return self.item_ids[self.offsets[s] : self.offsets[s + 1]]

    def head(self, n: int) -> Sequences:
        """The first n sequences."""
        n = min(n, len(self))
        end = int(self.offsets[n])
        return Sequences(
            self.session_ids[:n], self.offsets[: n + 1], self.item_ids[:end], self.timestamps[:end]
        )

    def positions(self) -> np.ndarray:
        """int64 (n,): position of each click inside its sequence."""
        starts = np.repeat(self.offsets[:-1], self.lengths)
        return np.arange(self.n_clicks, dtype=np.int64) - starts

    def to_log(self) -> ClickLog:
        """All clicks in canonical order: timestamp, then sequence index, then position."""
        seq = np.repeat(np.arange(len(self), dtype=np.int64), self.lengths)
        order = np.lexsort((self.positions(), seq, self.timestamps))
        return ClickLog(self.session_ids[seq[order]], self.item_ids[order], self.timestamps[order])


def factorize(values: np.ndarray) -> np.ndarray:
    """int64 codes numbering distinct values in order of first appearance."""
    table: dict = {}
    return np.fromiter(
        (table.setdefault(v, len(table)) for v in values.tolist()), np.int64, len(values)
    )


def object_array(values: list) -> np.ndarray:
    out = np.empty(len(values), dtype=object)
    out[:] = values
    return out
