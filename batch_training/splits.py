"""The splits of every dataset kind: time-based, leave-one-out, and the given ones.

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

Sampled negatives: see `batch_training.negatives`; slices for tests: `batch_training.options`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from batch_training.negatives import eval_data
from batch_training.options import SplitOptions
from batch_training.preprocess import preprocess
from batch_training.sessions import (
    DatasetSplit,
    EvalData,
    ItemVocab,
    SessionData,
    ranges,
    to_session_data,
)
from readers.amazon import GroceryData, RankedRows, read_grocery
from readers.columns import ClickLog, Sequences
from readers.diginetica import read_diginetica_sample, read_diginetica_split
from readers.parsing import DatasetFormatError
from readers.paths import DATASET_NAMES
from readers.registry import read_user_sequences
from schemas.events import DAY_MS, ClickEvent


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
    rows = ranges(seqs.offsets[index], lengths)
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
        return eval_data(data, np.ones(data.n_sessions, np.int64), vocab, options, seed)

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
    # The items before each user's last two come first in the vocabulary (training follows
    # that order). It does not depend on n_hold, so the test negatives, drawn as vocabulary
    # indices, are the same with or without the validation hold-out: a final fit on the
    # validation items too is tested on the same candidates.
    from_end = np.repeat(seqs.offsets[1:], seqs.lengths) - np.arange(seqs.n_clicks)
    vocab = ItemVocab.from_items(seqs.item_ids[from_end > 2], seqs.item_ids)
    full = to_session_data(seqs, vocab)
    lengths = full.lengths
    # Training histories end before the held-out items; a history needs 2 items to train on.
    train = _order_by_first_click(_heads(full, np.flatnonzero(lengths - n_hold >= 2), n_hold))
    test_sessions = full.select(lengths >= 2)
    test = eval_data(test_sessions, test_sessions.lengths - 1, vocab, options, options.seed)
    valid = None
    if options.leave_one_out_valid:
        validated = np.flatnonzero(lengths >= 3)
        valid_sessions = _heads(full, validated, 1)
        valid = eval_data(
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
    rows = ranges(data.offsets[index], lengths)
    return SessionData(data.items[rows], offsets, data.timestamps[rows], data.session_ids[index])


def _order_by_first_click(data: SessionData) -> SessionData:
    starts = data.timestamps[data.offsets[:-1]]
    order = np.lexsort((np.arange(data.n_sessions), starts))
    return data if (order == np.arange(len(order))).all() else data.select(order)


def split_grocery(options: SplitOptions, *, root: Path | None = None) -> DatasetSplit:
    """ReChorus' Grocery split and negatives as given; every item of the files in the vocab."""
    if options.preprocessing_given() or options.valid_days or not options.leave_one_out_valid:
        raise ValueError("amazon-grocery uses ReChorus' own split; split options do not apply")
    data = read_grocery(root)
    users = sorted(set(data.train.session_ids.tolist()), key=int)
    kept = set(users[: options.slice_size(len(users))])

    def rows(user_ids: np.ndarray) -> np.ndarray:
        return np.fromiter((u in kept for u in user_ids.tolist()), bool, len(user_ids))

    train_log = data.train.take(rows(data.train.session_ids))
    dev = _take_rows(data.dev, rows(data.dev.user_ids))
    test_rows = _take_rows(data.test, rows(data.test.user_ids))
    # each user: train rows, dev row, test row; users by first click (ties: ascending id)
    seqs = _ordered_by_start(GroceryData(train_log, dev, test_rows).sequences())
    vocab = ItemVocab.from_items(
        train_log.item_ids, dev.item_ids, test_rows.item_ids, dev.negatives, test_rows.negatives
    )
    full = to_session_data(seqs, vocab)
    if (full.lengths < 3).any():
        raise DatasetFormatError("amazon-grocery", None, "a user lacks a train, dev or test row")
    position = {u: k for k, u in enumerate(seqs.session_ids.tolist())}

    def negatives_for(given: RankedRows) -> np.ndarray:
        # Rows come in time order; align them with the users' order in `full`.
        if sorted(given.user_ids.tolist()) != sorted(seqs.session_ids.tolist()):
            raise DatasetFormatError(
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


def _take_rows(rows: RankedRows, mask: np.ndarray) -> RankedRows:
    return RankedRows(
        rows.user_ids[mask], rows.item_ids[mask], rows.timestamps[mask], rows.negatives[mask]
    )


def split_diginetica(options: SplitOptions, *, root: Path | None = None) -> DatasetSplit:
    """The SR-GNN split as given: train sessions, and test sessions with eval_from = 1."""
    if options.preprocessing_given():
        raise ValueError("diginetica uses the given SR-GNN split; preprocessing does not apply")
    given = read_diginetica_split(root)
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
    `readers.paths.datasets_root()`.
    """
    opts = _merge(options or SplitOptions(), overrides)
    if name == "amazon-grocery":
        return split_grocery(opts, root=root)
    if name == "diginetica":
        return split_diginetica(opts, root=root)
    if name in ("movielens-100k", "movielens-1m", "yelp"):
        return split_leave_one_out(name, read_user_sequences(name, root=root), opts)
    if name == "diginetica-sample":
        return split_sessions(name, read_diginetica_sample(root), opts)
    raise ValueError(f"unknown dataset {name!r}; known: {', '.join(DATASET_NAMES)}")


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
