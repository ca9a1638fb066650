"""Amazon Grocery as ReChorus gives it: train rows, dev/test rows with 99 negatives each."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from readers.columns import ClickLog, Sequences
from readers.parsing import (
    SECOND_MS,
    DatasetFormatError,
    id_strings,
    int_column,
    read_lines,
    split_rows,
)
from readers.paths import dataset_path


@dataclass(frozen=True)
class RankedRows:
    """Leave-one-out rows with their given negatives (ReChorus dev/test)."""

    user_ids: np.ndarray  # object (n,) str
    item_ids: np.ndarray  # object (n,) str, the target
    timestamps: np.ndarray  # int64 (n,) epoch ms
    negatives: np.ndarray  # object (n, n_neg) str

    def __len__(self) -> int:
        return len(self.user_ids)


@dataclass(frozen=True)
class GroceryData:
    """ReChorus' Grocery split as given: train rows, and dev/test rows with 99 negatives."""

    train: ClickLog  # file order (time, then user), user as session
    dev: RankedRows
    test: RankedRows

    def sequences(self) -> Sequences:
        """Each user's train rows, then dev row, then test row; users in ascending id order."""
        users = np.concatenate([self.train.session_ids, self.dev.user_ids, self.test.user_ids])
        items = np.concatenate([self.train.item_ids, self.dev.item_ids, self.test.item_ids])
        times = np.concatenate([self.train.timestamps, self.dev.timestamps, self.test.timestamps])
        user_num = int_column(Path("user_id"), users.tolist(), 0, "user id")
        # Rows are already train < dev < test, so the stable sort keeps each user's order.
        order = np.argsort(user_num, kind="stable")
        return ClickLog(users[order], items[order], times[order]).to_sequences()


def _read_rechorus(path: Path, *, with_negatives: bool) -> tuple[ClickLog, np.ndarray | None]:
    lines = read_lines(path)
    if not lines:
        raise DatasetFormatError(path, None, "empty file")
    header = ["user_id", "item_id", "time"] + (["neg_items"] if with_negatives else [])
    if lines[0].split("\t") != header:
        raise DatasetFormatError(
            path, 1, f"header {lines[0][:80]!r}, expected {chr(9).join(header)!r} (tab-separated)"
        )
    rows = split_rows(path, lines[1:], "\t", len(header), 2)
    if not rows:
        raise DatasetFormatError(path, None, "no data rows after the header")
    columns = list(zip(*rows, strict=True))
    times = int_column(path, list(columns[2]), 2, "time") * SECOND_MS
    users = id_strings(int_column(path, list(columns[0]), 2, "user_id"))
    items = id_strings(int_column(path, list(columns[1]), 2, "item_id"))
    log = ClickLog(users, items, times)
    if not with_negatives:
        return log, None
    texts = columns[3]
    for k, text in enumerate(texts):
        if not (text.startswith("[") and text.endswith("]")):
            raise DatasetFormatError(path, k + 2, f"neg_items {text[:40]!r} is not a [..] list")
    inner = [text[1:-1] for text in texts]
    counts = np.array([text.count(",") + 1 for text in inner], dtype=np.int64)
    bad = np.flatnonzero(counts != counts[0])
    if len(bad):
        k = int(bad[0])
        raise DatasetFormatError(
            path, k + 2, f"{counts[k]} negatives, the first row has {counts[0]}"
        )
    tokens = ",".join(inner).split(",")
    ids = int_column(path, tokens, 2, "negative item id", rows=counts)
    neg = id_strings(ids).reshape(len(inner), int(counts[0]))
    return log, neg


def read_grocery(root: Path | None = None) -> GroceryData:
    """ReChorus' Grocery_and_Gourmet_Food files as given (ids as in the files)."""
    train, _ = _read_rechorus(dataset_path("amazon-grocery", 0, root=root), with_negatives=False)
    parts = []
    for index in (1, 2):
        log, neg = _read_rechorus(
            dataset_path("amazon-grocery", index, root=root), with_negatives=True
        )
        parts.append(RankedRows(log.session_ids, log.item_ids, log.timestamps, neg))
    return GroceryData(train, parts[0], parts[1])
