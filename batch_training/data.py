"""Training data: preprocessing, the item vocabulary, splits, and sessions as flat arrays.

Where the data comes from decides the split:

- session logs (`diginetica-sample`, files, the archive topic via `split_from_events`): drop
  immediate repeats, then drop sessions shorter than `min_session_length` and items seen fewer
  than `min_item_support` times, again and again until nothing changes (repeats that such
  removals create are dropped in the same loop, so none is left). Sessions that start in
  the last `test_days` are the test set (optionally the last `valid_days` of the rest are the
  validation set); their items unknown to the training vocabulary are removed and sessions left
  shorter than 2 dropped. Every next item is a target (`eval_from` = 1).
- user sequences (`movielens-100k`, `movielens-1m`, `yelp`): leave-one-out. The last item is the
  test target, the second to last the validation target, the history before that is training.
  Nothing is filtered unless a preprocessing option is given explicitly.
- `amazon-grocery`: ReChorus' own leave-one-out split and its 99 negatives, as given.
- `diginetica`: the SR-GNN train/test split as given; every next item of a test session is a
  target, which gives exactly the standard 60,858 prefix -> label examples.

For the sampled protocol, every evaluated sequence gets `n_negatives` distinct items the
session (or user, over the whole sequence) never clicked, drawn uniformly with
`np.random.default_rng(seed)` for test and `default_rng(seed + 1)` for validation; Grocery
keeps its given negatives.

Slices for tests: `max_sessions` keeps the most recent sessions of a log before splitting (for
Diginetica, the most recent training sessions and the first test sessions), or the first users
of a user-sequence dataset; `fraction` keeps that share instead.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field, fields, replace
from functools import cached_property
from itertools import repeat
from pathlib import Path
from typing import Any

import numpy as np

from kafka_io.settings import KafkaSettings
from schemas import datasets
from schemas.datasets import ClickLog, Sequences
from schemas.events import (
    DAY_MS,
    DEFAULT_LIMITS,
    ClickEvent,
    ValidationError,
    ValidationLimits,
    decode_click,
)

log = logging.getLogger(__name__)


# --- arrays ----------------------------------------------------------------------------------


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
        rows = _ranges(self.offsets[idx], lengths)
        return SessionData(self.items[rows], offsets, self.timestamps[rows], self.session_ids[idx])

    @classmethod
    def empty(cls) -> SessionData:
        z = np.zeros(0, dtype=np.int64)
        return cls(z, np.zeros(1, dtype=np.int64), z, np.empty(0, dtype=object))


def _ranges(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
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
        return s.items[_ranges(starts, lengths)]


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


# --- options ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class SplitOptions:
    """How a dataset becomes a split. None means the dataset's own default (see module doc)."""

    drop_repeats: bool | None = None  # logs: True; user sequences: False
    min_session_length: int | None = None  # logs: 2
    min_item_support: int | None = None  # logs: 5 (GRU4Rec's preprocessing)
    test_days: float = 1.0  # logs: sessions starting in the last test_days are test
    valid_days: float = 0.0  # logs, diginetica: last valid_days of train are validation
    leave_one_out_valid: bool = True  # user sequences: second-to-last item as validation
    max_sessions: int | None = None  # small slices for tests (see module doc)
    fraction: float | None = None  # share of sessions/users kept, in (0, 1]
    n_negatives: int = 99  # sampled protocol; 0 = none
    seed: int = 0

    def __post_init__(self) -> None:
        if self.fraction is not None and not 0 < self.fraction <= 1:
            raise ValueError(f"fraction must be in (0, 1], got {self.fraction}")
        if self.max_sessions is not None and self.max_sessions < 1:
            raise ValueError(f"max_sessions must be >= 1, got {self.max_sessions}")
        if self.test_days <= 0 or self.valid_days < 0:
            raise ValueError("test_days must be > 0 and valid_days >= 0")
        if self.n_negatives < 0:
            raise ValueError("n_negatives must be >= 0")

    @classmethod
    def from_kwargs(cls, **options: Any) -> SplitOptions:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(options) - known)
        if unknown:
            raise TypeError(f"unknown split option(s) {unknown}; known: {sorted(known)}")
        return cls(**options)

    def preprocessing_given(self) -> bool:
        return any(
            v is not None
            for v in (self.drop_repeats, self.min_session_length, self.min_item_support)
        )

    def for_logs(self) -> SplitOptions:
        return replace(
            self,
            drop_repeats=True if self.drop_repeats is None else self.drop_repeats,
            min_session_length=2 if self.min_session_length is None else self.min_session_length,
            min_item_support=5 if self.min_item_support is None else self.min_item_support,
        )

    def for_sequences(self) -> SplitOptions:
        return replace(
            self,
            drop_repeats=bool(self.drop_repeats),
            min_session_length=self.min_session_length or 1,
            min_item_support=self.min_item_support or 1,
        )

    def slice_size(self, n: int) -> int:
        """How many of n sessions/users a slice keeps."""
        keep = n if self.fraction is None else max(1, int(round(n * self.fraction)))
        return keep if self.max_sessions is None else min(keep, self.max_sessions)


# --- preprocessing ---------------------------------------------------------------------------


def drop_immediate_repeats(seqs: Sequences) -> Sequences:
    """Remove a click on the same item as the click just before it in the same session."""
    items = seqs.item_ids
    same = np.zeros(len(items), dtype=bool)
    if len(items) > 1:
        same[1:] = items[1:] == items[:-1]
    same[seqs.offsets[:-1][seqs.lengths > 0]] = False  # a session's first click always stays
    return _keep_clicks(seqs, ~same)


def _keep_clicks(seqs: Sequences, keep: np.ndarray) -> Sequences:
    """Keep the clicks where `keep` is True; drop sessions left empty."""
    seq_of = np.repeat(np.arange(len(seqs), dtype=np.int64), seqs.lengths)
    counts = np.bincount(seq_of[keep], minlength=len(seqs))
    alive = counts > 0
    offsets = np.zeros(int(alive.sum()) + 1, dtype=np.int64)
    np.cumsum(counts[alive], out=offsets[1:])
    return Sequences(seqs.session_ids[alive], offsets, seqs.item_ids[keep], seqs.timestamps[keep])


def filter_support(
    seqs: Sequences,
    *,
    min_session_length: int,
    min_item_support: int,
    drop_repeats: bool = False,
) -> Sequences:
    """Drop short sessions and rare items repeatedly until both hold (a fixed point).

    With `drop_repeats`, a click that removals have made an immediate repeat (A X A with X
    rare becomes A A) is dropped too, so the result has no immediate repeats either.
    """
    item_codes = datasets.factorize(seqs.item_ids)
    seq_of = np.repeat(np.arange(len(seqs), dtype=np.int64), seqs.lengths)
    keep = np.ones(len(item_codes), dtype=bool)
    n_items = int(item_codes.max()) + 1 if len(item_codes) else 0
    while True:
        new_keep = keep.copy()
        if drop_repeats:
            kept = np.flatnonzero(keep)
            repeat = (item_codes[kept[1:]] == item_codes[kept[:-1]]) & (
                seq_of[kept[1:]] == seq_of[kept[:-1]]
            )
            new_keep[kept[1:][repeat]] = False
        session_len = np.bincount(seq_of[new_keep], minlength=len(seqs))
        support = np.bincount(item_codes[new_keep], minlength=n_items)
        new_keep &= (session_len[seq_of] >= min_session_length) & (
            support[item_codes] >= min_item_support
        )
        if new_keep.sum() == keep.sum():
            break
        keep = new_keep
    return _keep_clicks(seqs, keep)


def preprocess(seqs: Sequences, options: SplitOptions) -> Sequences:
    """Drop immediate repeats, then filter sessions and items to a fixed point (see above)."""
    if options.drop_repeats:
        seqs = drop_immediate_repeats(seqs)
    return filter_support(
        seqs,
        min_session_length=options.min_session_length or 1,
        min_item_support=options.min_item_support or 1,
        drop_repeats=bool(options.drop_repeats),
    )


# --- building blocks of the splits -----------------------------------------------------------


def to_session_data(seqs: Sequences, vocab: ItemVocab, *, min_length: int = 1) -> SessionData:
    """Map items through the vocabulary, dropping unknown items, then sessions < min_length."""
    mapped = vocab.map(seqs.item_ids)
    known = mapped >= 0
    if not known.all():
        seqs = _keep_clicks(seqs, known)
        mapped = mapped[known]
    data = SessionData(mapped, seqs.offsets.astype(np.int64), seqs.timestamps, seqs.session_ids)
    if min_length > 1:
        data = data.select(data.lengths >= min_length)
    return data


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


def _eval_data(
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


def _time_range(timestamps: np.ndarray) -> dict:
    if len(timestamps) == 0:
        return {"first_timestamp": None, "last_timestamp": None, "n_events": 0}
    return {
        "first_timestamp": int(timestamps.min()),
        "last_timestamp": int(timestamps.max()),
        "n_events": len(timestamps),
    }


def _seqs_select(seqs: Sequences, index: np.ndarray) -> Sequences:
    index = np.asarray(index, dtype=np.int64)
    lengths = seqs.lengths[index]
    offsets = np.zeros(len(index) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    rows = _ranges(seqs.offsets[index], lengths)
    return Sequences(seqs.session_ids[index], offsets, seqs.item_ids[rows], seqs.timestamps[rows])


def _starts(seqs: Sequences) -> np.ndarray:
    return seqs.timestamps[seqs.offsets[:-1]]


def _most_recent(seqs: Sequences, keep: int) -> Sequences:
    """The `keep` sessions that start last, in start order."""
    if keep >= len(seqs):
        return seqs
    order = np.lexsort((np.arange(len(seqs)), _starts(seqs)))
    return _seqs_select(seqs, np.sort(order[-keep:]))


def _ordered_by_start(seqs: Sequences) -> Sequences:
    order = np.lexsort((np.arange(len(seqs)), _starts(seqs)))
    if (order == np.arange(len(seqs))).all():
        return seqs
    return _seqs_select(seqs, order)


def _split_by_start(seqs: Sequences, days: float) -> tuple[np.ndarray, np.ndarray]:
    """Indices of sessions starting before / within the last `days` of these clicks."""
    cutoff = int(seqs.timestamps.max()) - int(round(days * DAY_MS))
    late = _starts(seqs) >= cutoff
    return np.flatnonzero(~late), np.flatnonzero(late)


# --- the splits ------------------------------------------------------------------------------


def split_sessions(name: str, log_: ClickLog, options: SplitOptions) -> DatasetSplit:
    """Time-based split of a session log (see the module docstring)."""
    options = options.for_logs()
    if len(log_) == 0:
        raise ValueError(f"{name}: no events to split")
    seqs = _ordered_by_start(log_.sorted().to_sequences())
    seqs = _most_recent(seqs, options.slice_size(len(seqs)))
    time_range = _time_range(seqs.timestamps)
    seqs = preprocess(seqs, options)
    if len(seqs) == 0:
        raise ValueError(f"{name}: preprocessing left no sessions ({options})")

    train_idx, test_idx = _split_by_start(seqs, options.test_days)
    if len(train_idx) == 0:
        raise ValueError(f"{name}: every session starts in the last {options.test_days} day(s)")
    train_seqs, test_seqs = _seqs_select(seqs, train_idx), _seqs_select(seqs, test_idx)
    valid_seqs = None
    if options.valid_days > 0:
        fit_idx, valid_idx = _split_by_start(train_seqs, options.valid_days)
        if len(fit_idx) == 0:
            raise ValueError(f"{name}: no training sessions left before the validation window")
        valid_seqs = _seqs_select(train_seqs, valid_idx)
        train_seqs = _seqs_select(train_seqs, fit_idx)
    return _assemble_session_split(name, train_seqs, valid_seqs, test_seqs, options, time_range)


def _assemble_session_split(
    name: str,
    train_seqs: Sequences,
    valid_seqs: Sequences | None,
    test_seqs: Sequences,
    options: SplitOptions,
    time_range: dict,
) -> DatasetSplit:
    vocab = ItemVocab.from_items(train_seqs.item_ids)
    train = to_session_data(train_seqs, vocab)

    def evaluation(seqs: Sequences, seed: int) -> EvalData:
        data = to_session_data(seqs, vocab, min_length=2)
        return _eval_data(data, np.ones(data.n_sessions, np.int64), vocab, options, seed)

    valid = None if valid_seqs is None else evaluation(valid_seqs, options.seed + 1)
    test = evaluation(test_seqs, options.seed)
    return DatasetSplit(name, vocab, train, valid, test, time_range)


def split_leave_one_out(name: str, seqs: Sequences, options: SplitOptions) -> DatasetSplit:
    """Per-user leave-one-out: last item test, second to last validation, the rest training."""
    filtering = options.preprocessing_given()
    options = options.for_sequences()
    seqs = seqs.head(options.slice_size(len(seqs)))
    time_range = _time_range(seqs.timestamps)
    if filtering:
        seqs = preprocess(seqs, options)
    n_hold = 2 if options.leave_one_out_valid else 1
    # Items of the training histories first, so the vocabulary order follows training.
    from_end = np.repeat(seqs.offsets[1:], seqs.lengths) - np.arange(seqs.n_clicks)
    vocab = ItemVocab.from_items(seqs.item_ids[from_end > n_hold], seqs.item_ids)
    full = to_session_data(seqs, vocab)
    lengths = full.lengths
    # Training histories end before the held-out items; a history needs 2 items to train on.
    train = _order_by_first_click(_heads(full, np.flatnonzero(lengths - n_hold >= 2), n_hold))
    test_sessions = full.select(lengths >= 2)
    test = _eval_data(test_sessions, test_sessions.lengths - 1, vocab, options, options.seed)
    valid = None
    if options.leave_one_out_valid:
        validated = np.flatnonzero(lengths >= 3)
        valid_sessions = _heads(full, validated, 1)
        valid = _eval_data(
            valid_sessions,
            valid_sessions.lengths - 1,
            vocab,
            options,
            options.seed + 1,
            exclude=full.select(validated),  # never a negative the user clicked later
        )
    return DatasetSplit(name, vocab, train, valid, test, time_range)


def _heads(data: SessionData, index: np.ndarray, drop_last: int) -> SessionData:
    """The sessions at `index`, each without its last `drop_last` items."""
    lengths = data.lengths[index] - drop_last
    offsets = np.zeros(len(index) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    rows = _ranges(data.offsets[index], lengths)
    return SessionData(data.items[rows], offsets, data.timestamps[rows], data.session_ids[index])


def _order_by_first_click(data: SessionData) -> SessionData:
    starts = data.timestamps[data.offsets[:-1]]
    order = np.lexsort((np.arange(data.n_sessions), starts))
    return data if (order == np.arange(len(order))).all() else data.select(order)


def split_grocery(options: SplitOptions, *, root: Path | None = None) -> DatasetSplit:
    """ReChorus' Grocery split and negatives as given; every item of the files in the vocab."""
    if options.preprocessing_given() or options.valid_days or not options.leave_one_out_valid:
        raise ValueError("amazon-grocery uses ReChorus' own split; split options do not apply")
    data = datasets.read_grocery(root)
    users = sorted(set(data.train.session_ids.tolist()), key=int)
    kept = set(users[: options.slice_size(len(users))])

    def rows(user_ids: np.ndarray) -> np.ndarray:
        return np.fromiter((u in kept for u in user_ids.tolist()), bool, len(user_ids))

    train_log = data.train.take(rows(data.train.session_ids))
    dev = _take_rows(data.dev, rows(data.dev.user_ids))
    test_rows = _take_rows(data.test, rows(data.test.user_ids))
    # each user: train rows, dev row, test row; users by first click (ties: ascending id)
    seqs = _ordered_by_start(datasets.GroceryData(train_log, dev, test_rows).sequences())
    vocab = ItemVocab.from_items(
        train_log.item_ids, dev.item_ids, test_rows.item_ids, dev.negatives, test_rows.negatives
    )
    full = to_session_data(seqs, vocab)
    if (full.lengths < 3).any():
        raise datasets.DatasetFormatError(
            "amazon-grocery", None, "a user lacks a train, dev or test row"
        )
    position = {u: k for k, u in enumerate(seqs.session_ids.tolist())}

    def negatives_for(given: datasets.RankedRows) -> np.ndarray:
        # Rows come in time order; align them with the users' order in `full`.
        if sorted(given.user_ids.tolist()) != sorted(seqs.session_ids.tolist()):
            raise datasets.DatasetFormatError(
                "amazon-grocery", None, "dev/test rows are not exactly one per user"
            )
        order = np.argsort([position[u] for u in given.user_ids.tolist()], kind="stable")
        neg = given.negatives[order]
        return vocab.map(neg.ravel()).reshape(neg.shape)

    test = EvalData(full, full.lengths - 1, negatives_for(test_rows))
    valid_sessions = _heads(full, np.arange(full.n_sessions), 1)
    valid = EvalData(valid_sessions, valid_sessions.lengths - 1, negatives_for(dev))
    train = _order_by_first_click(to_session_data(train_log.to_sequences(), vocab))
    time_range = _time_range(seqs.timestamps)
    return DatasetSplit("amazon-grocery", vocab, train, valid, test, time_range)


def _take_rows(rows: datasets.RankedRows, mask: np.ndarray) -> datasets.RankedRows:
    return datasets.RankedRows(
        rows.user_ids[mask], rows.item_ids[mask], rows.timestamps[mask], rows.negatives[mask]
    )


def split_diginetica(options: SplitOptions, *, root: Path | None = None) -> DatasetSplit:
    """The SR-GNN split as given: train sessions, and test sessions with eval_from = 1."""
    if options.preprocessing_given():
        raise ValueError("diginetica uses the given SR-GNN split; preprocessing does not apply")
    given = datasets.read_diginetica_split(root)
    train_seqs = given.train
    keep = options.slice_size(len(train_seqs))
    train_seqs = _most_recent(train_seqs, keep)
    test_seqs = given.test
    if options.max_sessions is not None:
        test_seqs = test_seqs.head(options.max_sessions)
    time_range = _time_range(np.concatenate([train_seqs.timestamps, test_seqs.timestamps]))
    valid_seqs = None
    if options.valid_days > 0:
        fit_idx, valid_idx = _split_by_start(train_seqs, options.valid_days)
        valid_seqs = _seqs_select(train_seqs, valid_idx)
        train_seqs = _seqs_select(train_seqs, fit_idx)
    return _assemble_session_split(
        "diginetica", train_seqs, valid_seqs, test_seqs, options, time_range
    )


def load_split(
    name: str, options: SplitOptions | None = None, *, root: Path | None = None, **overrides: Any
) -> DatasetSplit:
    """The split of dataset `name` (see the module docstring).

    Keyword overrides are SplitOptions fields (an unknown name raises TypeError), e.g.
    `load_split("movielens-1m", max_sessions=50, n_negatives=0)`. `root` overrides
    `schemas.datasets.datasets_root()`.
    """
    opts = _merge(options or SplitOptions(), overrides)
    if name == "amazon-grocery":
        return split_grocery(opts, root=root)
    if name == "diginetica":
        return split_diginetica(opts, root=root)
    if name in ("movielens-100k", "movielens-1m", "yelp"):
        return split_leave_one_out(name, datasets.read_user_sequences(name, root=root), opts)
    if name == "diginetica-sample":
        return split_sessions(name, datasets.read_diginetica_sample(root), opts)
    raise ValueError(f"unknown dataset {name!r}; known: {', '.join(datasets.DATASET_NAMES)}")


def _merge(base: SplitOptions, overrides: dict[str, Any]) -> SplitOptions:
    SplitOptions.from_kwargs(**overrides)  # rejects unknown names with the list of known ones
    return replace(base, **overrides)


def split_from_events(
    events: Iterable[ClickEvent], options: SplitOptions | None = None, **overrides: Any
) -> DatasetSplit:
    """Time-based split of arbitrary clicks (a file, the archive topic)."""
    name = overrides.pop("name", "events")
    opts = _merge(options or SplitOptions(), overrides)
    return split_sessions(name, ClickLog.from_events(events), opts)


# --- the archive topic -----------------------------------------------------------------------


class TopicEvents(list):
    """Clicks read from a topic (a plain list), with what was skipped and where it was read."""

    def __init__(
        self,
        events: Iterable[ClickEvent] = (),
        *,
        n_invalid: int = 0,
        invalid_reasons: Counter | None = None,
        offsets: dict[int, tuple[int, int]] | None = None,
    ) -> None:
        super().__init__(events)
        self.n_invalid = n_invalid
        self.invalid_reasons = invalid_reasons or Counter()
        self.offsets = offsets or {}  # partition -> (first offset read, stop offset)


def read_topic_events(
    settings: KafkaSettings,
    topic: str,
    *,
    start_ms: int | None = None,
    end_ms: int | None = None,
    start_offsets: dict[int, int] | None = None,
    end_offsets: dict[int, int] | None = None,
    limits: ValidationLimits = DEFAULT_LIMITS,
    progress: bool = True,
    timeout_s: float = 60.0,
) -> TopicEvents:
    """Clicks of `topic` in a time range [start_ms, end_ms) or offset range, by timestamp.

    Times are the records' Kafka timestamps (the producer sets them to the click time); each
    partition is read from `offsets_for_times(start_ms)` up to the smaller of
    `offsets_for_times(end_ms)` and its end offset when the read began, so clicks arriving
    meanwhile are not included (`kafka_io.archive.read_range`). Messages that fail
    `decode_click` are counted, not raised; `kafka_io.topics.TopicError` when the topic does
    not exist. Do not call from a running event loop; use `aread_topic_events` there.
    """
    return asyncio.run(
        aread_topic_events(
            settings,
            topic,
            start_ms=start_ms,
            end_ms=end_ms,
            start_offsets=start_offsets,
            end_offsets=end_offsets,
            limits=limits,
            progress=progress,
            timeout_s=timeout_s,
        )
    )


async def aread_topic_events(
    settings: KafkaSettings,
    topic: str,
    *,
    start_ms: int | None = None,
    end_ms: int | None = None,
    start_offsets: dict[int, int] | None = None,
    end_offsets: dict[int, int] | None = None,
    limits: ValidationLimits = DEFAULT_LIMITS,
    progress: bool = True,
    timeout_s: float = 60.0,
) -> TopicEvents:
    """`read_topic_events` inside a running event loop."""
    from kafka_io.archive import read_range  # aiokafka only when the archive is read

    archive = await read_range(
        settings,
        topic,
        start_ms=start_ms,
        end_ms=end_ms,
        start_offsets=start_offsets,
        end_offsets=end_offsets,
        progress=progress,
        timeout_s=timeout_s,
    )
    events: list[tuple[int, int, int, ClickEvent]] = []
    reasons: Counter = Counter()
    for r in archive.records:
        try:
            click = decode_click(r.value, limits=limits)
        except ValidationError as exc:
            reasons[exc.field] += 1
            continue
        events.append((click.timestamp, r.partition, r.offset, click))
    n_invalid = sum(reasons.values())
    if n_invalid:
        log.warning("%s: skipped %d invalid message(s): %s", topic, n_invalid, dict(reasons))
    events.sort(key=lambda t: t[:3])
    return TopicEvents(
        (e for *_, e in events),
        n_invalid=n_invalid,
        invalid_reasons=reasons,
        offsets=archive.offsets,
    )
