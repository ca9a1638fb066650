"""MovieLens-100K's `u.data` rating log as clicks (the user is the session)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from readers.columns import ClickLog, object_array
from readers.parsing import SECOND_MS, DatasetFormatError, int_column, read_lines, split_rows
from readers.paths import dataset_path


def read_movielens_100k(root: Path | None = None) -> ClickLog:
    """`u.data` (user, item, rating, seconds) as a click log, stably sorted by time."""
    path = dataset_path("movielens-100k", root=root)
    lines = read_lines(path)
    if not lines:
        raise DatasetFormatError(path, None, "empty file")
    rows = split_rows(path, lines, "\t", 4, 1)
    users, items, _, seconds = zip(*rows, strict=True)
    times = int_column(path, list(seconds), 1, "timestamp") * SECOND_MS
    order = np.argsort(times, kind="stable")
    return ClickLog(
        session_ids=object_array(list(users))[order],
        item_ids=object_array(list(items))[order],
        timestamps=times[order],
    )
