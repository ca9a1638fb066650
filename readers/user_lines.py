"""`user item item ...` sequence files (MovieLens-1M, Yelp) with synthetic timestamps."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from readers.columns import Sequences, object_array
from readers.parsing import SECOND_MS, DatasetFormatError, id_strings, int_column, read_lines

# Position k of every user's sequence is at this time + k seconds (order only, see readers).
SYNTHETIC_BASE_MS = int(datetime(2020, 1, 1, tzinfo=UTC).timestamp() * 1000)


def read_user_lines(path: Path, *, min_items: int) -> Sequences:
    """`user item item ...` lines (ML-1M, Yelp) with synthetic per-position timestamps."""
    lines = read_lines(path)
    if not lines:
        raise DatasetFormatError(path, None, "empty file")
    users: list[str] = []
    items: list[str] = []
    lengths = np.empty(len(lines), dtype=np.int64)
    for k, line in enumerate(lines):
        parts = line.split()
        if len(parts) < 1 + min_items:
            raise DatasetFormatError(
                path, k + 1, f"expected a user id and at least {min_items} item id(s)"
            )
        users.append(parts[0])
        items.extend(parts[1:])
        lengths[k] = len(parts) - 1
    offsets = np.zeros(len(lines) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    item_ids = id_strings(int_column(path, items, 1, "item id", rows=lengths))
    seqs = Sequences(object_array(users), offsets, item_ids, np.empty(0, np.int64))
    times = SYNTHETIC_BASE_MS + seqs.positions() * SECOND_MS
    return Sequences(seqs.session_ids, offsets, seqs.item_ids, times)
