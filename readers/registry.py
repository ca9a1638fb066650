"""Any dataset by name: its click log, its user sequences, its clicks as events."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np

from readers.amazon import read_grocery
from readers.columns import ClickLog, Sequences
from readers.diginetica import read_diginetica_sample, read_diginetica_split
from readers.movielens import read_movielens_100k
from readers.paths import DATASET_NAMES, dataset_path
from readers.user_lines import read_user_lines
from schemas.events import ClickEvent


def read_user_sequences(name: str, *, root: Path | None = None) -> Sequences:
    """Per-user sequences in time order for the leave-one-out datasets.

    movielens-1m and yelp come as sequences; movielens-100k is grouped from its log (users in
    order of their first rating); amazon-grocery is train rows + dev row + test row per user
    (users in ascending id order).
    """
    if name in ("movielens-1m", "yelp"):
        return read_user_lines(dataset_path(name, root=root), min_items=1)
    if name == "movielens-100k":
        return read_movielens_100k(root).to_sequences()
    if name == "amazon-grocery":
        return read_grocery(root).sequences()
    raise ValueError(f"{name!r} is not a user-sequence dataset")


def read_log(name: str, *, root: Path | None = None) -> ClickLog:
    """Every click of dataset `name`, in canonical timestamp order."""
    if name == "movielens-100k":
        return read_movielens_100k(root)
    if name in ("movielens-1m", "yelp", "amazon-grocery"):
        return read_user_sequences(name, root=root).to_log()
    if name == "diginetica":
        split = read_diginetica_split(root)
        train, test = split.train.to_log(), split.test.to_log()  # test starts after train
        return ClickLog(
            np.concatenate([train.session_ids, test.session_ids]),
            np.concatenate([train.item_ids, test.item_ids]),
            np.concatenate([train.timestamps, test.timestamps]),
        )
    if name == "diginetica-sample":
        return read_diginetica_sample(root)
    raise ValueError(f"unknown dataset {name!r}; known: {', '.join(DATASET_NAMES)}")


def iter_events(
    name: str, *, root: Path | None = None, limit: int | None = None
) -> Iterator[ClickEvent]:
    """Dataset `name` as clicks in timestamp order (the first `limit` only, if given)."""
    return read_log(name, root=root).events(limit)
