"""Readers of the real datasets, in their original formats, into one canonical click stream.

Every dataset becomes clicks (`ClickEvent`: session or user id as `session_id`, external item id
as a string, epoch milliseconds) in timestamp order. The lower-level readers return columns
(`ClickLog`, `Sequences`) and keep what a split needs (Grocery's given negatives, Diginetica's
given train/test split); `batch_training.data` builds the splits from them.

Datasets (folders under `datasets_root()`, every file gzip-compressed):

- `movielens-100k`: `u.data`, tab-separated `user item rating timestamp` (Unix seconds). The
  user is the session. Order: a stable sort by timestamp, so ties keep the file order.
- `movielens-1m`: `user_sequences.txt`, one line per user `user item item ...`, oldest first.
- `amazon-grocery`: ReChorus' `train.csv`/`dev.csv`/`test.csv` (tab-separated, header, time in
  Unix seconds at day resolution; dev/test rows carry 99 negatives). A user's sequence is their
  train rows in file order, then the dev row, then the test row.
- `yelp`: `Yelp.txt`, one line per user `user item item ...`, oldest first.
- `diginetica`: the SR-GNN split: `train_sessions.txt` (one session per line) and
  `test_prefix_label.tsv` (`prefix<TAB>label`; a test session of length n gives n-1 lines from the
  longest prefix down; the session is the longest prefix plus its label).
- `diginetica-sample`: the raw log excerpt `sample_train-item-views.csv`, `;`-separated with
  header `session_id;user_id;item_id;timeframe;eventdate`; the click time is midnight UTC of
  `eventdate` plus `timeframe` milliseconds; `user_id` NA means anonymous.

Ties in time are broken by session (the dataset's session order: user id for user sequences,
file order for Diginetica sessions, numeric session id for the Diginetica sample) and then by
the position inside the session, so the order is deterministic and every session keeps its own
click order. MovieLens-100K alone uses the plain stable sort by timestamp (file order on ties),
which gives every user the same order as sorting that user's ratings stably.

Synthetic timestamps, where the data has none (they only preserve order):

- `movielens-1m`, `yelp`: position k (0-based) of every user's sequence is at
  `SYNTHETIC_BASE_MS` (2020-01-01T00:00:00Z) + k seconds. All users start together, so the
  stream interleaves them like concurrent sessions; only the order inside a user is meaningful.
- `diginetica` (SR-GNN split): click k of a session is at the session start + k seconds.
  Training session i (0-based, file order) starts at `DIGINETICA_BASE_MS` (2016-01-01T00:00Z)
  + i * 67 s, so the 186,670 sessions end on 2016-05-24. Test session j starts at
  `test_start` + j * 37 s, where `test_start` is midnight UTC one full day after the day of the
  last training click (2016-05-26T00:00Z for the full file); the test sessions then fill the
  last 6.84 days. Every test session starts after every training session, and a time-based
  split with a 7-day test window reproduces the given split exactly.
- `amazon-grocery` and the two raw logs have real timestamps (seconds -> ms).

Generic files (`read_event_file`): CSV/TSV (optionally gzip) with a header, or Parquet when
pyarrow is installed (the `parquet` extra), with the three columns named by the caller.
"""

from __future__ import annotations

import csv
import gzip
import io
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path

import numpy as np

from schemas.events import ClickEvent, ValidationError, parse_timestamp

DATASET_NAMES = (
    "movielens-100k",
    "movielens-1m",
    "amazon-grocery",
    "yelp",
    "diginetica",
    "diginetica-sample",
)
ENV_VAR = "GRU4STREAM_DATASETS"

SECOND_MS = 1000
DAY_MS = 86_400_000
SYNTHETIC_BASE_MS = int(datetime(2020, 1, 1, tzinfo=UTC).timestamp() * 1000)
DIGINETICA_BASE_MS = int(datetime(2016, 1, 1, tzinfo=UTC).timestamp() * 1000)
DIGINETICA_TRAIN_SLOT_MS = 67 * SECOND_MS
DIGINETICA_TEST_SLOT_MS = 37 * SECOND_MS

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


class DatasetFormatError(ValueError):
    """A data file that cannot be read: the message names the file, the line and the fault."""

    def __init__(self, path: str | os.PathLike, line: int | None, reason: str) -> None:
        where = f"{path}" if line is None else f"{path}, line {line}"
        super().__init__(f"{where}: {reason}")
        self.path = str(path)
        self.line = line
        self.reason = reason


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


# --- columnar forms --------------------------------------------------------------------------


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
            session_ids=_object_array(sessions),
            item_ids=_object_array(items),
            timestamps=np.asarray(times, dtype=np.int64).reshape(-1),
            user_ids=_object_array(users) if has_users else None,
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


def _object_array(values: list) -> np.ndarray:
    out = np.empty(len(values), dtype=object)
    out[:] = values
    return out


# --- per-dataset readers ---------------------------------------------------------------------


def _read_lines(path: Path) -> list[str]:
    """All lines of a gzip (or plain) text file, without line endings."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8", newline="") as f:
        text = f.read()
    return text.splitlines()


def _int_column(
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


def _id_strings(ids: np.ndarray) -> np.ndarray:
    """Integer ids -> object array of their decimal strings, one shared object per distinct id
    (so dictionary lookups hash each distinct id once)."""
    uniq, inverse = np.unique(ids, return_inverse=True)
    return _object_array([str(u) for u in uniq.tolist()])[inverse.reshape(ids.shape)]


def _split_rows(path: Path, lines: list[str], sep: str, n_fields: int, first_line: int) -> list:
    rows = [line.split(sep) for line in lines]
    for k, row in enumerate(rows):
        if len(row) != n_fields:
            raise DatasetFormatError(
                path,
                first_line + k,
                f"expected {n_fields} {sep!r}-separated fields, got {len(row)}",
            )
    return rows


def read_movielens_100k(root: Path | None = None) -> ClickLog:
    """`u.data` (user, item, rating, seconds) as a click log, stably sorted by time."""
    path = dataset_path("movielens-100k", root=root)
    lines = _read_lines(path)
    if not lines:
        raise DatasetFormatError(path, None, "empty file")
    rows = _split_rows(path, lines, "\t", 4, 1)
    users, items, _, seconds = zip(*rows, strict=True)
    times = _int_column(path, list(seconds), 1, "timestamp") * SECOND_MS
    order = np.argsort(times, kind="stable")
    return ClickLog(
        session_ids=_object_array(list(users))[order],
        item_ids=_object_array(list(items))[order],
        timestamps=times[order],
    )


def _read_user_lines(path: Path, *, min_items: int) -> Sequences:
    """`user item item ...` lines (ML-1M, Yelp) with synthetic per-position timestamps."""
    lines = _read_lines(path)
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
    item_ids = _id_strings(_int_column(path, items, 1, "item id", rows=lengths))
    seqs = Sequences(_object_array(users), offsets, item_ids, np.empty(0, np.int64))
    times = SYNTHETIC_BASE_MS + seqs.positions() * SECOND_MS
    return Sequences(seqs.session_ids, offsets, seqs.item_ids, times)


def read_user_sequences(name: str, *, root: Path | None = None) -> Sequences:
    """Per-user sequences in time order for the leave-one-out datasets.

    movielens-1m and yelp come as sequences; movielens-100k is grouped from its log (users in
    order of their first rating); amazon-grocery is train rows + dev row + test row per user
    (users in ascending id order).
    """
    if name in ("movielens-1m", "yelp"):
        return _read_user_lines(dataset_path(name, root=root), min_items=1)
    if name == "movielens-100k":
        return read_movielens_100k(root).to_sequences()
    if name == "amazon-grocery":
        return read_grocery(root).sequences()
    raise ValueError(f"{name!r} is not a user-sequence dataset")


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
        user_num = _int_column(Path("user_id"), users.tolist(), 0, "user id")
        # Rows are already train < dev < test, so the stable sort keeps each user's order.
        order = np.argsort(user_num, kind="stable")
        return ClickLog(users[order], items[order], times[order]).to_sequences()


def _read_rechorus(path: Path, *, with_negatives: bool) -> tuple[ClickLog, np.ndarray | None]:
    lines = _read_lines(path)
    if not lines:
        raise DatasetFormatError(path, None, "empty file")
    header = ["user_id", "item_id", "time"] + (["neg_items"] if with_negatives else [])
    if lines[0].split("\t") != header:
        raise DatasetFormatError(
            path, 1, f"header {lines[0][:80]!r}, expected {chr(9).join(header)!r} (tab-separated)"
        )
    rows = _split_rows(path, lines[1:], "\t", len(header), 2)
    if not rows:
        raise DatasetFormatError(path, None, "no data rows after the header")
    columns = list(zip(*rows, strict=True))
    times = _int_column(path, list(columns[2]), 2, "time") * SECOND_MS
    users = _id_strings(_int_column(path, list(columns[0]), 2, "user_id"))
    items = _id_strings(_int_column(path, list(columns[1]), 2, "item_id"))
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
    ids = _int_column(path, tokens, 2, "negative item id", rows=counts)
    neg = _id_strings(ids).reshape(len(inner), int(counts[0]))
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
    lines = _read_lines(path)
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
    lines = _read_lines(train_path)
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
        _object_array([f"train-{i + 1}" for i in range(len(lines))]),
        np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64),
        _id_strings(_int_column(train_path, train_items, 1, "item id", rows=lengths)),
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
        _object_array([f"test-{j + 1}" for j in range(len(sessions))]),
        np.concatenate([[0], np.cumsum(test_lengths)]).astype(np.int64),
        _object_array([i for s in sessions for i in s]),
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
    lines = _read_lines(path)
    if not lines:
        raise DatasetFormatError(path, None, "empty file")
    header = ["session_id", "user_id", "item_id", "timeframe", "eventdate"]
    if lines[0].split(";") != header:
        raise DatasetFormatError(path, 1, f"header {lines[0][:80]!r}, expected {';'.join(header)}")
    rows = _split_rows(path, lines[1:], ";", 5, 2)
    if not rows:
        raise DatasetFormatError(path, None, "no data rows after the header")
    sessions, users, items, frames, dates = (list(c) for c in zip(*rows, strict=True))
    day_ms: dict[str, int] = {}
    midnight = np.empty(len(rows), dtype=np.int64)
    for k, text in enumerate(dates):
        if text not in day_ms:
            day_ms[text] = _midnight_ms(path, text, k + 2)
        midnight[k] = day_ms[text]
    times = midnight + _int_column(path, frames, 2, "timeframe")
    session_num = _int_column(path, sessions, 2, "session_id")
    order = np.lexsort((np.arange(len(rows)), session_num, times))
    user_col = _object_array([None if u == "NA" else u for u in users])
    return ClickLog(
        _object_array(sessions)[order], _object_array(items)[order], times[order], user_col[order]
    )


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


# --- generic files ---------------------------------------------------------------------------

TIME_UNITS = ("ms", "s", "iso")


def _time_parser(path: Path, time_unit: str):
    if time_unit not in TIME_UNITS:
        raise ValueError(f"time_unit must be one of {TIME_UNITS}, got {time_unit!r}")

    def parse(value, line: int | None) -> int:
        if time_unit == "iso":
            if not isinstance(value, str):
                value = str(value)
            try:
                return parse_timestamp(value)
            except ValidationError as exc:
                raise DatasetFormatError(path, line, f"timestamp: {exc.reason}") from None
        if isinstance(value, int | np.integer) and not isinstance(value, bool):
            number: int | float = int(value)
        else:
            text = str(value).strip()
            try:
                number = int(text)
            except ValueError:
                try:
                    number = float(text)
                except ValueError:
                    raise DatasetFormatError(
                        path, line, f"timestamp {text[:40]!r} is not a number ({time_unit})"
                    ) from None
        if isinstance(number, float) and not np.isfinite(number):
            raise DatasetFormatError(path, line, f"timestamp {value!r} is not finite")
        if time_unit == "s":
            return int(round(number * SECOND_MS))
        if isinstance(number, float) and not number.is_integer():
            raise DatasetFormatError(path, line, f"timestamp {value!r} is not whole milliseconds")
        return int(number)

    return parse


def _sniff_sep(path: Path, header: str) -> str:
    name = path.name.removesuffix(".gz")
    if name.endswith(".tsv"):
        return "\t"
    for sep in ("\t", ";", ",", "|"):
        if sep in header:
            return sep
    raise DatasetFormatError(path, 1, "cannot tell the separator; pass sep=")


def read_event_file(
    path: str | os.PathLike,
    *,
    session_col: str = "session_id",
    item_col: str = "item_id",
    time_col: str = "timestamp",
    sep: str | None = None,
    time_unit: str = "ms",
) -> Iterator[ClickEvent]:
    """Clicks from a CSV/TSV (header line; `.gz` allowed) or Parquet file, in file order.

    The header is checked before this returns; a bad row raises DatasetFormatError naming the
    file and line when the iteration reaches it. Item and session ids are kept as text.
    """
    path = Path(path)
    parse_time = _time_parser(path, time_unit)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    if path.name.removesuffix(".gz").endswith(".parquet"):
        return _read_parquet(path, session_col, item_col, time_col, parse_time)

    opener = gzip.open if path.suffix == ".gz" else open
    f = opener(path, "rt", encoding="utf-8", newline="")
    try:
        header_line = f.readline()
        if not header_line.strip():
            raise DatasetFormatError(path, None, "empty file (no header line)")
        sep = sep or _sniff_sep(path, header_line)
        header = next(csv.reader(io.StringIO(header_line), delimiter=sep))
        header = [h.strip() for h in header]
        wanted = {"session": session_col, "item": item_col, "time": time_col}
        missing = [c for c in wanted.values() if c not in header]
        if missing:
            raise DatasetFormatError(
                path, 1, f"missing column(s) {missing}; the header has {header} (sep {sep!r})"
            )
    except BaseException:
        f.close()
        raise
    cols = {k: header.index(v) for k, v in wanted.items()}
    return _iter_csv_rows(path, f, sep, len(header), cols, parse_time)


def _iter_csv_rows(path, f, sep, n_fields, cols, parse_time) -> Iterator[ClickEvent]:
    with f:
        reader = csv.reader(f, delimiter=sep)
        for row in reader:
            line = reader.line_num + 1  # + the header line read before the reader
            if not row or (len(row) == 1 and not row[0].strip()):
                continue  # blank line
            if len(row) != n_fields:
                raise DatasetFormatError(
                    path,
                    line,
                    f"expected {n_fields} fields, got {len(row)}: {sep.join(row)[:60]!r}",
                )
            session, item = row[cols["session"]].strip(), row[cols["item"]].strip()
            if not session or not item:
                raise DatasetFormatError(path, line, "empty session or item id")
            yield ClickEvent(session, item, parse_time(row[cols["time"]].strip(), line))


def _read_parquet(path, session_col, item_col, time_col, parse_time) -> Iterator[ClickEvent]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise DatasetFormatError(
            path, None, "reading Parquet needs pyarrow: pip install -e '.[parquet]'"
        ) from None
    try:
        table = pq.read_table(path)
    except Exception as exc:  # pyarrow raises several types for corrupt files
        raise DatasetFormatError(path, None, f"not a readable Parquet file: {exc}") from None
    missing = [c for c in (session_col, item_col, time_col) if c not in table.column_names]
    if missing:
        raise DatasetFormatError(
            path, None, f"missing column(s) {missing}; the file has {table.column_names}"
        )
    times = table.column(time_col)
    if hasattr(times.type, "unit"):  # an Arrow timestamp column: convert to epoch ms
        times = times.cast("timestamp[ms]").cast("int64")
        parse_time = _time_parser(path, "ms")
    sessions = table.column(session_col).to_pylist()
    items = table.column(item_col).to_pylist()

    def rows() -> Iterator[ClickEvent]:
        for k, (s, i, t) in enumerate(zip(sessions, items, times.to_pylist(), strict=True)):
            if s is None or i is None or t is None:
                raise DatasetFormatError(path, None, f"row {k + 1}: null session, item or time")
            yield ClickEvent(str(s), str(i), parse_time(t, None))

    return rows()
