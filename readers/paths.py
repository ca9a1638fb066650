"""Where the datasets are: the known names, their files, and the datasets folder."""

from __future__ import annotations

import os
from pathlib import Path

DATASET_NAMES = (
    "movielens-100k",
    "movielens-1m",
    "amazon-grocery",
    "yelp",
    "diginetica",
    "diginetica-sample",
)
ENV_VAR = "GRU4STREAM_DATASETS"

# Relative paths under the datasets root, per dataset.
FILES = {
    "movielens-100k": ("movielens-100k/u.data.gz",),
    "movielens-1m": ("movielens-1m/user_sequences.txt.gz",),
    "amazon-grocery": (
        "amazon-grocery-rechorus/train.csv.gz",
        "amazon-grocery-rechorus/dev.csv.gz",
        "amazon-grocery-rechorus/test.csv.gz",
    ),
    "yelp": ("yelp-s3rec/Yelp.txt.gz",),
    "diginetica": (
        "diginetica/srgnn-split/train_sessions.txt.gz",
        "diginetica/srgnn-split/test_prefix_label.tsv.gz",
    ),
    "diginetica-sample": ("diginetica/sample_train-item-views.csv.gz",),
}


def datasets_root() -> Path:
    """`$GRU4STREAM_DATASETS`, else `shared/datasets` beside the repository root."""
    env = os.environ.get(ENV_VAR)
    if env:
        return Path(env)
    repo_root = Path(__file__).resolve().parent.parent
    return repo_root.parent / "shared" / "datasets"


def dataset_path(name: str, index: int = 0, *, root: Path | None = None) -> Path:
    """The index-th file of dataset `name`; FileNotFoundError names where it was looked for."""
    if name not in FILES:
        raise ValueError(f"unknown dataset {name!r}; known: {', '.join(DATASET_NAMES)}")
    path = Path(root or datasets_root()) / FILES[name][index]
    if not path.is_file():
        raise FileNotFoundError(
            f"dataset {name!r}: {path} not found (set ${ENV_VAR} to the datasets folder)"
        )
    return path
