"""Readers of the real datasets (counts from the datasets README) and of generic event files."""

from __future__ import annotations

import gzip
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from readers import paths
from readers.amazon import read_grocery
from readers.columns import ClickLog
from readers.diginetica import (
    DIGINETICA_BASE_MS,
    DIGINETICA_TRAIN_SLOT_MS,
    DigineticaSplit,
    read_diginetica_sample,
    read_diginetica_split,
)
from readers.files import read_event_file
from readers.movielens import read_movielens_100k
from readers.parsing import DAY_MS, DatasetFormatError
from readers.paths import DATASET_NAMES, ENV_VAR, dataset_path, datasets_root
from readers.registry import iter_events, read_log, read_user_sequences
from readers.user_lines import SYNTHETIC_BASE_MS
from schemas.events import ClickEvent


def ms(*args: int) -> int:
    return int(datetime(*args, tzinfo=UTC).timestamp() * 1000)


def n_distinct(values: np.ndarray) -> int:
    return len(set(values.tolist()))


def is_time_ordered(log: ClickLog) -> bool:
    return bool((np.diff(log.timestamps) >= 0).all())


@pytest.fixture(scope="module")
def diginetica() -> DigineticaSplit:
    return read_diginetica_split()


# --- the real datasets -----------------------------------------------------------------------


def test_datasets_root_default_and_env(monkeypatch, tmp_path):
    monkeypatch.delenv(ENV_VAR, raising=False)
    repo_root = Path(paths.__file__).resolve().parent.parent
    assert datasets_root() == repo_root.parent / "shared" / "datasets"
    monkeypatch.setenv(ENV_VAR, str(tmp_path))
    assert datasets_root() == tmp_path
    with pytest.raises(FileNotFoundError, match="u.data.gz"):
        read_movielens_100k()


def test_movielens_100k():
    log = read_movielens_100k()
    assert len(log) == 100_000
    assert n_distinct(log.session_ids) == 943
    assert n_distinct(log.item_ids) == 1682
    assert is_time_ordered(log)
    first, last = log.timestamps[0], log.timestamps[-1]
    assert datetime.fromtimestamp(first / 1000, UTC).date().isoformat() == "1997-09-20"
    assert datetime.fromtimestamp(last / 1000, UTC).date().isoformat() == "1998-04-22"
    # The file's first line `196 242 3 881250949` is in the log with its time in ms.
    hits = (log.session_ids == "196") & (log.item_ids == "242")
    assert log.timestamps[hits].tolist() == [881_250_949_000]
    events = list(iter_events("movielens-100k", limit=5))
    assert [e.timestamp for e in events] == log.timestamps[:5].tolist()
    assert all(isinstance(e.item_id, str) for e in events)


def test_movielens_100k_ties_keep_file_order():
    # The stable sort keeps file order among equal timestamps: check against the raw file.
    path = dataset_path("movielens-100k")
    with gzip.open(path, "rt") as f:
        rows = [line.split("\t") for line in f.read().splitlines()]
    expected = sorted(range(len(rows)), key=lambda k: int(rows[k][3]))  # sorted() is stable
    log = read_movielens_100k()
    got = list(zip(log.session_ids.tolist(), log.item_ids.tolist(), strict=True))
    assert got == [(rows[k][0], rows[k][1]) for k in expected]


def test_movielens_1m_sequences_and_synthetic_times():
    seqs = read_user_sequences("movielens-1m")
    assert len(seqs) == 6040
    assert seqs.n_clicks == 1_000_209
    assert n_distinct(seqs.item_ids) == 3706
    assert seqs.session_ids[0] == "1" and seqs.session_ids[-1] == "6040"
    assert seqs.items_of(0)[:4].tolist() == ["3186", "1721", "1022", "1270"]
    assert seqs.lengths.min() == 20 and seqs.lengths.max() == 2314
    # Synthetic rule: position k of every sequence is at the base + k seconds.
    expected = SYNTHETIC_BASE_MS + seqs.positions() * 1000
    assert np.array_equal(seqs.timestamps, expected)
    log = seqs.to_log()
    assert is_time_ordered(log)
    # All users start together; ties are ordered by user (file order), then position.
    assert log.session_ids[:6040].tolist() == seqs.session_ids.tolist()
    assert log.item_ids[:3].tolist() == [seqs.items_of(s)[0] for s in range(3)]


def test_yelp():
    seqs = read_user_sequences("yelp")
    assert len(seqs) == 30_431
    assert seqs.n_clicks == 316_354
    assert n_distinct(seqs.item_ids) == 20_033
    assert seqs.lengths.min() == 5 and seqs.lengths.max() == 350
    assert seqs.timestamps.min() == SYNTHETIC_BASE_MS


def test_grocery_given_split():
    data = read_grocery()
    assert (len(data.train), len(data.dev), len(data.test)) == (121_892, 14_681, 14_681)
    all_items = np.concatenate([data.train.item_ids, data.dev.item_ids, data.test.item_ids])
    assert n_distinct(all_items) == 8713
    users = set(data.train.session_ids.tolist())
    assert len(users) == 14_681
    # Every user has exactly one dev row and one test row, each with 99 negatives.
    for rows in (data.dev, data.test):
        assert sorted(rows.user_ids.tolist()) == sorted(users)
        assert rows.negatives.shape == (14_681, 99)
    first = data.test
    assert (first.user_ids[0], first.item_ids[0]) == ("6185", "762")
    assert first.timestamps[0] == 1_149_206_400_000
    assert first.negatives[0, :5].tolist() == ["2733", "3265", "4860", "7892", "4374"]
    seqs = data.sequences()
    assert len(seqs) == 14_681 and seqs.n_clicks == 151_254
    # Each user sequence ends with the dev then the test row (leave-one-out order).
    k = seqs.session_ids.tolist().index("6185")
    assert seqs.items_of(k)[-1] == "762"
    dev_item = data.dev.item_ids[data.dev.user_ids.tolist().index("6185")]
    assert seqs.items_of(k)[-2] == dev_item
    log = read_log("amazon-grocery")
    assert len(log) == 151_254 and is_time_ordered(log)
    assert log.timestamps[0] == ms(2000, 8, 9) and log.timestamps[-1] == ms(2014, 7, 23)


def test_diginetica_split_counts(diginetica):
    assert len(diginetica.train) == 186_670
    assert diginetica.train.n_clicks == 906_140
    assert diginetica.train.lengths.min() == 2
    assert len(diginetica.test) == 15_963
    assert diginetica.n_test_examples == 60_858
    items = np.concatenate([diginetica.train.item_ids, diginetica.test.item_ids])
    assert n_distinct(items) == 43_097
    assert {int(x) for x in items.tolist()} == set(range(1, 43_098))
    # The first test lines are `21553 20071 8762 21566 6381 -> 21566` down to `21553 -> 20071`.
    assert diginetica.test.items_of(0).tolist() == [
        "21553", "20071", "8762", "21566", "6381", "21566"
    ]  # fmt: skip
    assert diginetica.test.items_of(1).tolist() == ["27606", "25971"]


def test_diginetica_synthetic_times_put_test_after_train(diginetica):
    train, test = diginetica.train, diginetica.test
    train_starts = train.timestamps[train.offsets[:-1]]
    test_starts = test.timestamps[test.offsets[:-1]]
    assert train_starts[0] == DIGINETICA_BASE_MS
    assert np.all(np.diff(train_starts) == DIGINETICA_TRAIN_SLOT_MS)
    assert test_starts[0] == ms(2016, 5, 26)  # a full day after the last training click
    assert train.timestamps.max() < test_starts.min()
    # Within a session, one second per click.
    assert np.all(np.diff(test.timestamps[:6]) == 1000)
    # The test sessions fit in the last 7 days: a 7-day window selects exactly them.
    cutoff = test.timestamps.max() - 7 * DAY_MS
    assert (test_starts >= cutoff).all() and (train_starts < cutoff).all()


def test_diginetica_events_are_time_ordered():
    events = list(iter_events("diginetica", limit=3))
    assert [e.session_id for e in events] == ["train-1", "train-1", "train-2"]
    assert [e.timestamp for e in events] == [
        DIGINETICA_BASE_MS,
        DIGINETICA_BASE_MS + 1000,
        DIGINETICA_BASE_MS + DIGINETICA_TRAIN_SLOT_MS,
    ]


def test_diginetica_sample():
    log = read_diginetica_sample()
    assert len(log) == 12_391
    assert n_distinct(log.session_ids) == 2986
    assert n_distinct(log.item_ids) == 7139
    users = {u for u in log.user_ids.tolist() if u is not None}
    assert len(users) == 1270
    assert is_time_ordered(log)
    # `1;NA;81766;526309;2016-05-09`: midnight UTC of the date plus the timeframe in ms.
    row = np.flatnonzero((log.session_ids == "1") & (log.item_ids == "81766"))
    assert log.timestamps[row].tolist() == [ms(2016, 5, 9) + 526_309]
    assert log.user_ids[row].tolist() == [None]
    assert datetime.fromtimestamp(log.timestamps[0] / 1000, UTC).date().isoformat() == "2016-01-03"
    named = next(e for e in iter_events("diginetica-sample") if e.user_id is not None)
    assert isinstance(named, ClickEvent) and named.user_id in users


def test_every_dataset_name_reads():
    for name in DATASET_NAMES:
        events = list(iter_events(name, limit=10))
        assert len(events) == 10, name
        assert all(a.timestamp <= b.timestamp for a, b in zip(events, events[1:], strict=False)), (
            name
        )
    with pytest.raises(ValueError, match="unknown dataset"):
        list(iter_events("netflix"))


# --- broken dataset files under another root --------------------------------------------------


def write_gz(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(path, "wt", encoding="utf-8", newline="") as f:
        f.write(text)
    return path


def test_broken_movielens_file_names_file_and_line(tmp_path):
    path = write_gz(tmp_path / "movielens-100k/u.data.gz", "1\t2\t3\t880000000\n1\t5\t3\n")
    with pytest.raises(DatasetFormatError, match=r"u\.data\.gz, line 2: expected 4"):
        read_movielens_100k(tmp_path)
    write_gz(path, "1\t2\t3\t880000000\n1\t5\t3\tyesterday\n")
    with pytest.raises(DatasetFormatError, match=r"line 2: timestamp 'yesterday'"):
        read_movielens_100k(tmp_path)
    write_gz(path, "")
    with pytest.raises(DatasetFormatError, match="empty file"):
        read_movielens_100k(tmp_path)


def test_bad_item_id_in_a_sequence_file_names_its_line(tmp_path):
    write_gz(tmp_path / "yelp-s3rec/Yelp.txt.gz", "1 2 3\n2 4 5 6\n3 7 x 9\n")
    with pytest.raises(DatasetFormatError, match=r"Yelp\.txt\.gz, line 3: item id 'x'"):
        read_user_sequences("yelp", root=tmp_path)
    write_gz(tmp_path / "yelp-s3rec/Yelp.txt.gz", "1 2 3\n2\n")
    with pytest.raises(DatasetFormatError, match="line 2: expected a user id and at least 1"):
        read_user_sequences("yelp", root=tmp_path)


def test_broken_diginetica_prefixes_are_refused(tmp_path):
    root = tmp_path
    write_gz(root / "diginetica/srgnn-split/train_sessions.txt.gz", "1 2\n3 4 5\n")
    test_path = root / "diginetica/srgnn-split/test_prefix_label.tsv.gz"
    write_gz(test_path, "1 2 3\t4\n1 2\t3\n1\t2\n5\t6")
    split = read_diginetica_split(root)
    assert [split.test.items_of(s).tolist() for s in range(2)] == [["1", "2", "3", "4"], ["5", "6"]]
    write_gz(test_path, "1 2 3\t4\n1 9\t3\n1\t9\n")  # second line is not the head of the first
    with pytest.raises(DatasetFormatError, match="line 2: prefix is one shorter"):
        read_diginetica_split(root)
    write_gz(test_path, "1 2 3\t4\n1 2\t3\n7 8\t9\n7\t8\n")  # first session stops at length 2
    with pytest.raises(DatasetFormatError, match="line 2: session ends at a prefix of length 2"):
        read_diginetica_split(root)


def test_broken_grocery_negatives_are_refused(tmp_path):
    folder = tmp_path / "amazon-grocery-rechorus"
    write_gz(folder / "train.csv.gz", "user_id\titem_id\ttime\n1\t1\t100\n")
    good = "user_id\titem_id\ttime\tneg_items\n1\t2\t200\t[3, 4]\n"
    write_gz(folder / "dev.csv.gz", good)
    write_gz(folder / "test.csv.gz", good + "2\t5\t300\t[3]\n")
    with pytest.raises(DatasetFormatError, match=r"test\.csv\.gz, line 3: 1 negatives"):
        read_grocery(tmp_path)
    write_gz(folder / "test.csv.gz", good + "2\t5\t300\t[3, x]\n")
    with pytest.raises(DatasetFormatError, match=r"line 3: negative item id ' x'"):
        read_grocery(tmp_path)
    write_gz(folder / "test.csv.gz", "user\titem_id\ttime\tneg_items\n")
    with pytest.raises(DatasetFormatError, match=r"test\.csv\.gz, line 1: header"):
        read_grocery(tmp_path)


# --- generic event files ---------------------------------------------------------------------


def test_read_csv_with_column_mapping(tmp_path):
    path = tmp_path / "clicks.csv"
    path.write_text("sid,ts,product,extra\na,1700000000000,p1,x\na,1700000001000,p2,y\n")
    events = list(read_event_file(path, session_col="sid", item_col="product", time_col="ts"))
    assert events == [
        ClickEvent("a", "p1", 1_700_000_000_000),
        ClickEvent("a", "p2", 1_700_000_001_000),
    ]


def test_read_tsv_gz_seconds_and_iso(tmp_path):
    path = write_gz(
        tmp_path / "clicks.tsv.gz", "session_id\titem_id\ttimestamp\ns1\t7\t1700000000\n"
    )
    (event,) = read_event_file(path, time_unit="s")
    assert event == ClickEvent("s1", "7", 1_700_000_000_000)
    iso = tmp_path / "iso.csv"
    iso.write_text("session_id;item_id;timestamp\ns1;7;2023-11-14T22:13:20Z\n")
    (event,) = read_event_file(iso, time_unit="iso")  # the `;` separator is sniffed
    assert event.timestamp == 1_700_000_000_000


def test_quoted_csv_fields(tmp_path):
    path = tmp_path / "quoted.csv"
    path.write_text('session_id,item_id,timestamp\n"s,1","item ""x""",5\n')
    (event,) = read_event_file(path)
    assert (event.session_id, event.item_id, event.timestamp) == ("s,1", 'item "x"', 5)


@pytest.mark.parametrize(
    ("content", "pattern"),
    [
        ("", r"empty\.csv: empty file"),
        (
            "session,item,timestamp\ns,i,1\n",
            r"line 1: missing column\(s\) \['session_id', 'item_id'\]",
        ),
        ("session_id,item_id,timestamp\ns,i,1\ns,i,soon\n", r"line 3: timestamp 'soon' is not a"),
        ("session_id,item_id,timestamp\ns,i,1\ns,i\n", r"line 3: expected 3 fields, got 2"),
        ("session_id,item_id,timestamp\ns,,1\n", r"line 2: empty session or item id"),
        ("session_id,item_id,timestamp\ns,i,1.5\n", r"line 2: timestamp '1.5' is not whole"),
    ],
)
def test_bad_event_files_name_file_and_line(tmp_path, content, pattern):
    path = tmp_path / "empty.csv"
    path.write_text(content)
    with pytest.raises(DatasetFormatError, match=pattern) as info:
        list(read_event_file(path))
    assert str(path) in str(info.value)


def test_bad_iso_timestamp_and_unknown_unit(tmp_path):
    path = tmp_path / "iso.csv"
    path.write_text("session_id,item_id,timestamp\ns,i,2023-13-45\n")
    with pytest.raises(DatasetFormatError, match="line 2: timestamp: not ISO 8601"):
        list(read_event_file(path, time_unit="iso"))
    with pytest.raises(ValueError, match="time_unit"):
        read_event_file(path, time_unit="minutes")


def test_parquet_with_column_mapping_and_arrow_timestamps(tmp_path):
    path = tmp_path / "clicks.parquet"
    times = [1_700_000_000_000, 1_700_000_060_000]
    pq.write_table(pa.table({"sid": ["s", "t"], "item": [3, 4], "ts": times}), path)
    want = [ClickEvent("s", "3", times[0]), ClickEvent("t", "4", times[1])]
    got = list(read_event_file(path, session_col="sid", item_col="item", time_col="ts"))
    assert got == want
    # The same instants as an Arrow timestamp column (seconds) need no time_unit.
    stamped = pa.array([t // 1000 for t in times], type=pa.timestamp("s"))
    table = pa.table({"session_id": ["s", "t"], "item_id": ["3", "4"], "timestamp": stamped})
    pq.write_table(table, path)
    assert list(read_event_file(path)) == want


def test_bad_parquet_files_are_refused_with_the_reason(tmp_path):
    path = tmp_path / "clicks.parquet"
    path.write_bytes(b"PAR1 but not really")
    with pytest.raises(DatasetFormatError, match="not a readable Parquet file"):
        list(read_event_file(path))
    pq.write_table(pa.table({"session_id": ["s"], "item": ["i"], "timestamp": [1]}), path)
    with pytest.raises(DatasetFormatError, match=r"missing column\(s\) \['item_id'\]"):
        list(read_event_file(path))
    table = pa.table(
        {"session_id": ["s", None], "item_id": ["i", "j"], "timestamp": [1_700_000_000_000] * 2}
    )
    pq.write_table(table, path)
    with pytest.raises(DatasetFormatError, match="row 2: null session"):
        list(read_event_file(path))
