"""Diginetica: the SR-GNN train/test split, and the raw `train-item-views.csv` click log.

Synthetic timestamps for the SR-GNN split are described in the `readers` package docstring.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path

import numpy as np

from readers.columns import ClickLog, Sequences, object_array
from readers.parsing import (
    DAY_MS,
    SECOND_MS,
    DatasetFormatError,
    id_strings,
    int_column,
    read_lines,
    split_rows,
)
from readers.paths import dataset_path

DIGINETICA_BASE_MS = int(datetime(2016, 1, 1, tzinfo=UTC).timestamp() * 1000)
DIGINETICA_TRAIN_SLOT_MS = 67 * SECOND_MS
DIGINETICA_TEST_SLOT_MS = 37 * SECOND_MS


@dataclass(frozen=True)
class DigineticaSplit:
    """The SR-GNN Diginetica split: training sessions and reconstructed test sessions."""

    train: Sequences
    test: Sequences

    @property
    def n_test_examples(self) -> int:
        """prefix -> label examples: every next item of every test session."""
        return int((self.test.lengths - 1).sum())


def _session_times(lengths: np.ndarray, start: int, slot_ms: int) -> np.ndarray:
    starts = start + np.arange(len(lengths), dtype=np.int64) * slot_ms
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    positions = np.arange(offsets[-1], dtype=np.int64) - np.repeat(offsets[:-1], lengths)
    return np.repeat(starts, lengths) + positions * SECOND_MS


def _read_test_prefixes(path: Path) -> tuple[list[list[str]], int]:
    """Rebuild test sessions from the prefix/label lines (longest prefix first)."""
    sessions: list[list[str]] = []
    prev: list[str] | None = None
    lines = read_lines(path)
    for k, line in enumerate(lines):
        fields = line.split("\t")
        if len(fields) != 2:
            raise DatasetFormatError(path, k + 1, f"expected 'prefix<TAB>label', got {line[:60]!r}")
        prefix, label = fields[0].split(), fields[1].strip()
        if not prefix or not label:
            raise DatasetFormatError(path, k + 1, "empty prefix or label")
        if prev is not None and len(prefix) == len(prev) - 1:
            if prefix != prev[:-1] or label != prev[-1]:
                raise DatasetFormatError(
                    path, k + 1, "prefix is one shorter than the previous line but not its head"
                )
        else:
            if prev is not None and len(prev) != 1:
                raise DatasetFormatError(
                    path, k, f"session ends at a prefix of length {len(prev)}, expected 1"
                )
            sessions.append(prefix + [label])
        prev = prefix
    if prev is not None and len(prev) != 1:
        raise DatasetFormatError(path, len(lines), "last session does not end at a 1-item prefix")
    return sessions, len(lines)


def read_diginetica_split(root: Path | None = None) -> DigineticaSplit:
    """Training and test sessions of the SR-GNN split with synthetic timestamps (see above)."""
    train_path = dataset_path("diginetica", 0, root=root)
    lines = read_lines(train_path)
    if not lines:
        raise DatasetFormatError(train_path, None, "empty file")
    train_items: list[str] = []
    lengths = np.empty(len(lines), dtype=np.int64)
    for k, line in enumerate(lines):
        parts = line.split()
        if not parts:
            raise DatasetFormatError(train_path, k + 1, "empty session")
        train_items.extend(parts)
        lengths[k] = len(parts)
    train_times = _session_times(lengths, DIGINETICA_BASE_MS, DIGINETICA_TRAIN_SLOT_MS)
    train = Sequences(
        object_array([f"train-{i + 1}" for i in range(len(lines))]),
        np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64),
        id_strings(int_column(train_path, train_items, 1, "item id", rows=lengths)),
        train_times,
    )

    test_path = dataset_path("diginetica", 1, root=root)
    sessions, n_lines = _read_test_prefixes(test_path)
    if not sessions:
        raise DatasetFormatError(test_path, None, "empty file")
    test_lengths = np.array([len(s) for s in sessions], dtype=np.int64)
    last_train_day = int(train_times.max()) // DAY_MS
    test_start = (last_train_day + 2) * DAY_MS  # a full day after the last training click
    test = Sequences(
        object_array([f"test-{j + 1}" for j in range(len(sessions))]),
        np.concatenate([[0], np.cumsum(test_lengths)]).astype(np.int64),
        object_array([i for s in sessions for i in s]),
        _session_times(test_lengths, test_start, DIGINETICA_TEST_SLOT_MS),
    )
    split = DigineticaSplit(train, test)
    if split.n_test_examples != n_lines:
        raise DatasetFormatError(test_path, None, "rebuilt sessions do not cover every line")
    return split


def _midnight_ms(path: Path, text: str, line: int) -> int:
    try:
        d = date.fromisoformat(text)
    except ValueError:
        raise DatasetFormatError(path, line, f"eventdate {text[:20]!r} is not YYYY-MM-DD") from None
    return int(datetime(d.year, d.month, d.day, tzinfo=UTC).timestamp() * 1000)


def read_diginetica_sample(root: Path | None = None) -> ClickLog:
    """The raw Diginetica click-log excerpt, in canonical order."""
    path = dataset_path("diginetica-sample", root=root)
    return read_diginetica_views(path)


def read_diginetica_views(path: Path) -> ClickLog:
    """A Diginetica `train-item-views.csv` file (the sample or the full raw log)."""
    path = Path(path)
    lines = read_lines(path)
    if not lines:
        raise DatasetFormatError(path, None, "empty file")
    header = ["session_id", "user_id", "item_id", "timeframe", "eventdate"]
    if lines[0].split(";") != header:
        raise DatasetFormatError(path, 1, f"header {lines[0][:80]!r}, expected {';'.join(header)}")
    rows = split_rows(path, lines[1:], ";", 5, 2)
    if not rows:
        raise DatasetFormatError(path, None, "no data rows after the header")
    sessions, users, items, frames, dates = (list(c) for c in zip(*rows, strict=True))
    day_ms: dict[str, int] = {}
    midnight = np.empty(len(rows), dtype=np.int64)
    for k, text in enumerate(dates):
        if text not in day_ms:
            day_ms[text] = _midnight_ms(path, text, k + 2)
        midnight[k] = day_ms[text]
    times = midnight + int_column(path, frames, 2, "timeframe")
    session_num = int_column(path, sessions, 2, "session_id")
    order = np.lexsort((np.arange(len(rows)), session_num, times))
    user_col = object_array([None if u == "NA" else u for u in users])
    return ClickLog(
        object_array(sessions)[order], object_array(items)[order], times[order], user_col[order]
    )
