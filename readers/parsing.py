"""The error every reader raises, and the text parsing the dataset readers share."""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np

from readers.columns import object_array

SECOND_MS = 1000
DAY_MS = 86_400_000


class DatasetFormatError(ValueError):
    """A data file that cannot be read: the message names the file, the line and the fault."""

    def __init__(self, path: str | os.PathLike, line: int | None, reason: str) -> None:
        where = f"{path}" if line is None else f"{path}, line {line}"
        super().__init__(f"{where}: {reason}")
        self.path = str(path)
        self.line = line
        self.reason = reason


def read_lines(path: Path) -> list[str]:
    """All lines of a gzip (or plain) text file, without line endings."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8", newline="") as f:
        text = f.read()
    return text.splitlines()


def int_column(
    path: Path, column: list[str], first_line: int, what: str, rows: np.ndarray | None = None
) -> np.ndarray:
    """Parse integers in bulk; on failure find and name the offending line.

    `rows`, if given, holds how many values each line contributed (several per line).
    """
    try:
        return np.fromiter(map(int, column), np.int64, len(column))
    except (ValueError, OverflowError):
        for k, text in enumerate(column):
            try:
                np.int64(int(text))
            except (ValueError, OverflowError):
                line = k if rows is None else int(np.searchsorted(np.cumsum(rows), k, "right"))
                raise DatasetFormatError(
                    path, first_line + line, f"{what} {text[:40]!r} is not a 64-bit integer"
                ) from None
        raise


def id_strings(ids: np.ndarray) -> np.ndarray:
    """Integer ids -> object array of their decimal strings, one shared object per distinct id
    (so dictionary lookups hash each distinct id once)."""
    uniq, inverse = np.unique(ids, return_inverse=True)
    return object_array([str(u) for u in uniq.tolist()])[inverse.reshape(ids.shape)]


def split_rows(path: Path, lines: list[str], sep: str, n_fields: int, first_line: int) -> list:
    rows = [line.split(sep) for line in lines]
    for k, row in enumerate(rows):
        if len(row) != n_fields:
            raise DatasetFormatError(
                path,
                first_line + k,
                f"expected {n_fields} {sep!r}-separated fields, got {len(row)}",
            )
    return rows
