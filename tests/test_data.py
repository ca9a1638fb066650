"""Preprocessing, vocabulary, the splits of every kind, sampled negatives, the archive reader."""

from __future__ import annotations

import asyncio
import gzip
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from batch_training.archive import read_topic_events
from batch_training.negatives import sample_negatives
from batch_training.options import SplitOptions
from batch_training.preprocess import drop_immediate_repeats, filter_support
from batch_training.sessions import DatasetSplit, EvalData, ItemVocab, SessionData
from batch_training.splits import (
    load_split,
    split_from_events,
    split_leave_one_out,
    split_sessions,
)
from readers.amazon import read_grocery
from readers.columns import Sequences
from readers.files import read_event_file
from readers.paths import dataset_path
from readers.registry import read_log
from readers.user_lines import SYNTHETIC_BASE_MS
from schemas.events import ClickEvent

DAY = timedelta(days=1)
T0 = datetime(2024, 1, 1, tzinfo=UTC)


def ms(t: datetime) -> int:
    return int(t.timestamp() * 1000)


def clicks(*rows: tuple[str, str, datetime]) -> list[ClickEvent]:
    return [ClickEvent(s, i, ms(t)) for s, i, t in rows]


def sequences(seqs: dict[str, list[str]]) -> Sequences:
    items = [i for s in seqs.values() for i in s]
    lengths = [len(s) for s in seqs.values()]
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    ids = np.empty(len(seqs), dtype=object)
    ids[:] = list(seqs)
    item_arr = np.empty(len(items), dtype=object)
    item_arr[:] = items
    seq = Sequences(ids, offsets, item_arr, np.zeros(len(items), np.int64))
    return Sequences(ids, offsets, item_arr, SYNTHETIC_BASE_MS + seq.positions() * 1000)


def as_lists(seqs: Sequences) -> dict[str, list[str]]:
    return {seqs.session_ids[s]: seqs.items_of(s).tolist() for s in range(len(seqs))}


def external_sessions(sd: SessionData, vocab: ItemVocab) -> dict[str, list[str]]:
    return {sd.session_ids[s]: vocab.external(sd.session(s)).tolist() for s in range(sd.n_sessions)}


# --- arrays and vocabulary -------------------------------------------------------------------


def test_item_vocab_lookup_bulk_map_and_support():
    vocab = ItemVocab(("a", "b", "c"))
    assert vocab.index("b") == 1 and vocab.index("zz") is None
    assert vocab.map(np.array(["c", "x", "a"], dtype=object)).tolist() == [2, -1, 0]
    assert vocab.external(np.array([2, 0])).tolist() == ["c", "a"]
    sd = SessionData(
        items=np.array([0, 2, 2, 0, 2], dtype=np.int64),
        offsets=np.array([0, 2, 5], dtype=np.int64),
        timestamps=np.arange(5, dtype=np.int64),
        session_ids=np.array(["s1", "s2"], dtype=object),
    )
    support = vocab.support(sd)
    assert support.dtype == np.int64 and support.tolist() == [2, 0, 3]
    with pytest.raises(ValueError, match="duplicate item id 'a'"):
        ItemVocab(("a", "b", "a"))


def test_session_data_checks_its_shapes():
    with pytest.raises(ValueError, match="offsets end at 3"):
        SessionData(np.zeros(2, np.int64), np.array([0, 3]), np.zeros(2, np.int64), np.array(["s"]))
    with pytest.raises(ValueError, match="eval_from"):
        EvalData(SessionData.empty(), np.ones(2, np.int64), None)


# --- preprocessing ---------------------------------------------------------------------------


def test_immediate_repeats_are_dropped_within_sessions_only():
    seqs = sequences({"s1": ["A", "A", "B", "A", "A"], "s2": ["A", "C", "C"]})
    out = drop_immediate_repeats(seqs)
    # s2 starts with the item s1 ended with: a different session, so it stays.
    assert as_lists(out) == {"s1": ["A", "B", "A"], "s2": ["A", "C"]}
    assert out.timestamps.tolist() == [seqs.timestamps[k] for k in (0, 2, 3, 5, 6)]


def test_iterative_filtering_reaches_a_fixed_point():
    seqs = sequences({"s1": ["A", "B"], "s2": ["A", "C"], "s3": ["C", "D"], "s4": ["B", "A"]})
    # D is rare -> s3 = [C] is too short -> C becomes rare -> s2 = [A] is too short.
    out = filter_support(seqs, min_session_length=2, min_item_support=2)
    assert as_lists(out) == {"s1": ["A", "B"], "s4": ["B", "A"]}
    again = filter_support(out, min_session_length=2, min_item_support=2)
    assert as_lists(again) == as_lists(out)
    # One round alone would not have been enough.
    assert as_lists(filter_support(seqs, min_session_length=2, min_item_support=1)) == (
        as_lists(seqs)
    )


def test_repeats_created_by_filtering_are_dropped_too():
    seqs = sequences({"s1": ["A", "X", "A", "B"], "s2": ["A", "B", "B", "A"], "s3": ["B", "A"]})
    out = filter_support(seqs, min_session_length=2, min_item_support=2, drop_repeats=True)
    # X is rare: s1 becomes A A B, then A B.
    assert as_lists(out) == {"s1": ["A", "B"], "s2": ["A", "B", "A"], "s3": ["B", "A"]}
    kept = filter_support(seqs, min_session_length=2, min_item_support=2)
    assert as_lists(kept)["s1"] == ["A", "A", "B"]


def test_default_preprocessing_of_logs():
    events = clicks(
        ("s1", "A", T0), ("s1", "A", T0 + timedelta(minutes=1)), ("s1", "B", T0 + timedelta(2)),
        ("s2", "A", T0 + DAY), ("s2", "B", T0 + DAY + timedelta(minutes=1)),
    )  # fmt: skip
    # The defaults (items seen >= 5 times) leave nothing of such a tiny log.
    with pytest.raises(ValueError, match="preprocessing left no sessions"):
        split_from_events(events)


# --- time split ------------------------------------------------------------------------------


def time_split_events() -> list[ClickEvent]:
    cutoff = T0 + 2 * DAY  # the last click is at T0 + 3 days: cutoff = last - 1 day
    minute = timedelta(minutes=1)
    return clicks(
        ("s1", "A", T0), ("s1", "B", T0 + minute),
        ("s2", "B", T0 + DAY), ("s2", "C", T0 + DAY + minute),
        # starts 1 ms before the cutoff and goes on after it: training
        ("s3", "A", cutoff - timedelta(milliseconds=1)), ("s3", "B", cutoff + timedelta(hours=3)),
        # starts exactly at the cutoff: test
        ("s4", "A", cutoff), ("s4", "C", T0 + 3 * DAY),
        # an item training never saw is removed; s5 is then too short and dropped
        ("s5", "A", cutoff + minute), ("s5", "Z", cutoff + 2 * minute),
        ("s6", "B", cutoff + 3 * minute), ("s6", "Z", cutoff + 4 * minute),
        ("s6", "C", cutoff + 5 * minute),
    )  # fmt: skip


def test_time_split_boundaries_and_unknown_test_items():
    split = split_from_events(
        time_split_events(), min_item_support=1, test_days=1, n_negatives=0, name="tiny"
    )
    assert split.name == "tiny"
    assert external_sessions(split.train, split.vocab) == {
        "s1": ["A", "B"], "s2": ["B", "C"], "s3": ["A", "B"]
    }  # fmt: skip
    assert split.vocab.ids == ("A", "B", "C")
    assert external_sessions(split.test.sessions, split.vocab) == {
        "s4": ["A", "C"], "s6": ["B", "C"]
    }  # fmt: skip
    assert split.test.eval_from.tolist() == [1, 1]
    assert split.test.n_targets == 2 and split.test.negatives is None
    assert split.valid is None
    assert split.item_support.tolist() == [2, 3, 1]
    assert split.time_range == {
        "first_timestamp": ms(T0),
        "last_timestamp": ms(T0 + 3 * DAY),
        "n_events": 13,
    }


def test_time_split_with_validation_days():
    split = split_from_events(
        time_split_events(), min_item_support=1, test_days=1, valid_days=1, n_negatives=0
    )
    # Training ends at s3's last click (T0+2d+3h): s3 starts within its last day -> validation.
    assert list(external_sessions(split.train, split.vocab)) == ["s1", "s2"]
    assert external_sessions(split.valid.sessions, split.vocab) == {"s3": ["A", "B"]}
    assert list(external_sessions(split.test.sessions, split.vocab)) == ["s4", "s6"]


def test_split_from_a_file(tmp_path):
    path = tmp_path / "clicks.csv"
    lines = ["sid,item,ts"] + [
        f"{e.session_id},{e.item_id},{e.timestamp // 1000}" for e in time_split_events()
    ]
    path.write_text("\n".join(lines) + "\n")
    events = read_event_file(path, session_col="sid", item_col="item", time_col="ts", time_unit="s")
    split = split_from_events(events, min_item_support=1, n_negatives=0)
    assert split.train.n_sessions == 3 and split.test.sessions.n_sessions == 2


def test_diginetica_sample_split():
    split = load_split("diginetica-sample", min_item_support=2, test_days=7, seed=3)
    assert split.time_range["n_events"] == 12_391
    cutoff = split.time_range["last_timestamp"] - 7 * 86_400_000
    train_starts = split.train.timestamps[split.train.offsets[:-1]]
    test_starts = split.test.sessions.timestamps[split.test.sessions.offsets[:-1]]
    assert (train_starts < cutoff).all() and (test_starts >= cutoff).all()
    assert split.train.lengths.min() >= 2 and split.test.sessions.lengths.min() >= 2
    assert (split.item_support >= 1).all()  # every vocabulary item occurs in training
    # No immediate repeats are left in training.
    sd = split.train
    same = sd.items[1:] == sd.items[:-1]
    assert not same[np.setdiff1d(np.arange(len(same)), sd.offsets[1:-1] - 1)].any()
    assert split.test.negatives.shape == (split.test.sessions.n_sessions, 99)


def test_time_split_reproduces_the_given_diginetica_split():
    # The synthetic Diginetica times put the test sessions in the last 7 days.
    log = read_log("diginetica")
    options = SplitOptions(
        drop_repeats=False, min_session_length=1, min_item_support=1, test_days=7, n_negatives=0
    )
    split = split_sessions("diginetica", log, options)
    assert split.train.n_sessions == 186_670 and split.train.n_clicks == 906_140
    assert split.test.sessions.n_sessions == 15_963
    assert split.test.n_targets == 60_858


# --- leave-one-out ---------------------------------------------------------------------------


def test_leave_one_out_targets():
    seqs = sequences({"u1": list("abcde"), "u2": list("xyz"), "u3": list("pq"), "u4": list("r")})
    split = split_leave_one_out("tiny", seqs, SplitOptions(n_negatives=2, seed=1))
    vocab = split.vocab
    assert external_sessions(split.train, vocab) == {"u1": list("abc")}  # u2's history is 1 item
    test = split.test
    assert external_sessions(test.sessions, vocab) == {
        "u1": list("abcde"), "u2": list("xyz"), "u3": list("pq")
    }  # fmt: skip
    assert test.eval_from.tolist() == [4, 2, 1]
    assert vocab.external(test.targets()).tolist() == ["e", "z", "q"]
    valid = split.valid
    assert external_sessions(valid.sessions, vocab) == {"u1": list("abcd"), "u2": list("xy")}
    assert vocab.external(valid.targets()).tolist() == ["d", "y"]
    # Every item is in the vocabulary, training items first.
    assert vocab.ids[:3] == ("a", "b", "c") and set(vocab.ids) == set("abcdexyzpqr")
    for ev in (test, valid):
        for s in range(ev.sessions.n_sessions):
            user = ev.sessions.session_ids[s]
            assert not set(vocab.external(ev.negatives[s]).tolist()) & set(
                seqs.items_of(seqs.session_ids.tolist().index(user)).tolist()
            )


def test_leave_one_out_without_validation_trains_on_it_and_keeps_the_test_set():
    """A final fit on training + validation items is tested on exactly the same candidates."""
    users = {f"u{u}": [f"i{(u * 7 + k * 3) % 40}" for k in range(3 + u % 6)] for u in range(30)}
    seqs = sequences(users)
    held = split_leave_one_out("tiny", seqs, SplitOptions(n_negatives=5, seed=3))
    refit = split_leave_one_out(
        "tiny", seqs, SplitOptions(n_negatives=5, seed=3, leave_one_out_valid=False)
    )
    assert refit.valid is None
    # Training now ends at the validation target: one more item per user.
    assert external_sessions(refit.train, refit.vocab) == {
        u: items[:-1] for u, items in users.items()
    }
    assert external_sessions(held.train, held.vocab) == {
        u: items[:-2] for u, items in users.items() if len(items) >= 4
    }
    for split in (held, refit):
        assert split.test.eval_from.tolist() == (split.test.sessions.lengths - 1).tolist()

    def candidates(split: DatasetSplit) -> list[list[str]]:
        test = split.test
        columns = np.column_stack([test.targets(), test.negatives])
        return [split.vocab.external(row).tolist() for row in columns]

    assert candidates(refit) == candidates(held)


def test_movielens_100k_leave_one_out_against_the_raw_file():
    path = dataset_path("movielens-100k")
    with gzip.open(path, "rt") as f:
        rows = [line.split("\t") for line in f.read().splitlines()]
    by_user: dict[str, list[tuple[int, str]]] = {}
    for user, item, _, ts in rows:
        by_user.setdefault(user, []).append((int(ts), item))
    split = load_split("movielens-100k")
    assert split.vocab.n_items == 1682 and split.test.sessions.n_sessions == 943
    assert split.train.n_clicks == 100_000 - 2 * 943
    targets = split.vocab.external(split.test.targets()).tolist()
    valid_targets = split.vocab.external(split.valid.targets()).tolist()
    for s, user in enumerate(split.test.sessions.session_ids.tolist()):
        history = [item for _, item in sorted(by_user[user], key=lambda r: r[0])]  # stable
        assert targets[s] == history[-1]
        assert valid_targets[s] == history[-2]
    assert split.test.eval_from.tolist() == (split.test.sessions.lengths - 1).tolist()


def test_sampled_negatives_avoid_interacted_items_and_are_reproducible():
    split = load_split("movielens-100k", seed=7)
    test, valid = split.test, split.valid
    n_items = split.vocab.n_items
    for ev in (test, valid):
        assert ev.negatives.shape == (ev.sessions.n_sessions, 99)
        assert ev.negatives.min() >= 0 and ev.negatives.max() < n_items
    full = test.sessions
    for s in range(full.n_sessions):
        seen = set(full.session(s).tolist())  # the whole sequence, targets included
        assert not seen & set(test.negatives[s].tolist())
        assert len(set(test.negatives[s].tolist())) == 99
        assert not seen & set(valid.negatives[s].tolist())  # not even the later test item
    again = load_split("movielens-100k", seed=7)
    assert np.array_equal(again.test.negatives, test.negatives)
    other = load_split("movielens-100k", seed=8)
    assert not np.array_equal(other.test.negatives, test.negatives)


def test_negatives_are_drawn_uniformly():
    # 3 free items out of 5, 2 drawn per row: each free item appears in 2/3 of the rows.
    sd = SessionData(
        np.array([0, 4], np.int64), np.array([0, 2]), np.zeros(2, np.int64), np.array(["s"])
    )
    rows = [sample_negatives(sd, 5, 2, np.random.default_rng(k))[0] for k in range(3000)]
    counts = np.bincount(np.concatenate(rows), minlength=5)
    assert counts[0] == counts[4] == 0
    assert np.allclose(counts[1:4] / 3000, 2 / 3, atol=0.04)
    assert sample_negatives(sd, 5, 4, np.random.default_rng(0)) is None  # too few free


def test_slices_for_tests():
    split = load_split("movielens-1m", max_sessions=40)
    assert split.test.sessions.n_sessions == 40
    assert split.test.sessions.session_ids.tolist() == [str(u) for u in range(1, 41)]
    half = load_split("yelp", fraction=0.01)
    assert half.test.sessions.n_sessions == round(30_431 * 0.01)


def test_unknown_options_and_datasets_are_refused():
    with pytest.raises(TypeError, match="unknown split option"):
        load_split("movielens-100k", max_session=3)
    with pytest.raises(ValueError, match="unknown dataset"):
        load_split("netflix")
    with pytest.raises(ValueError, match="fraction"):
        SplitOptions(fraction=1.5)
    with pytest.raises(ValueError, match="ReChorus"):
        load_split("amazon-grocery", min_item_support=5)


# --- given splits ----------------------------------------------------------------------------


def test_grocery_uses_the_given_split_and_negatives():
    split = load_split("amazon-grocery")
    given = read_grocery()
    vocab = split.vocab
    assert vocab.n_items == 8713
    assert split.train.n_sessions == 14_681 and split.train.n_clicks == 121_892
    test, valid = split.test, split.valid
    assert test.sessions.n_sessions == valid.sessions.n_sessions == 14_681
    assert test.negatives.shape == valid.negatives.shape == (14_681, 99)
    assert (test.negatives >= 0).all() and (valid.negatives >= 0).all()  # all mappable
    for ev, rows in ((test, given.test), (valid, given.dev)):
        row_of = {u: k for k, u in enumerate(rows.user_ids.tolist())}
        order = np.array([row_of[u] for u in ev.sessions.session_ids.tolist()])
        assert vocab.external(ev.targets()).tolist() == rows.item_ids[order].tolist()
        assert np.array_equal(vocab.external(ev.negatives.ravel()), rows.negatives[order].ravel())
        assert ev.eval_from.tolist() == (ev.sessions.lengths - 1).tolist()
    # The spot check of the README: user 6185's test item 762 and its first negatives.
    s = test.sessions.session_ids.tolist().index("6185")
    assert vocab.external(test.sessions.session(s)[-1:]).tolist() == ["762"]
    assert vocab.external(test.negatives[s, :3]).tolist() == ["2733", "3265", "4860"]
    # Validation sequences are the test sequences without their last item.
    assert np.array_equal(valid.sessions.lengths, test.sessions.lengths - 1)


def test_grocery_slice_keeps_negatives_mappable():
    split = load_split("amazon-grocery", max_sessions=20)
    assert split.test.sessions.n_sessions == 20
    assert (split.test.negatives >= 0).all()
    assert set(split.test.sessions.session_ids.tolist()) == {str(u) for u in range(1, 21)}


@pytest.fixture(scope="module")
def diginetica_split() -> DatasetSplit:
    return load_split("diginetica")


def test_diginetica_given_split_gives_the_standard_examples(diginetica_split):
    split = diginetica_split
    assert split.vocab.n_items == 43_097
    assert split.train.n_sessions == 186_670 and split.train.n_clicks == 906_140
    test = split.test
    assert test.sessions.n_sessions == 15_963
    assert (test.eval_from == 1).all()
    assert test.n_targets == 60_858
    # Every prefix -> label line of the file is one (history -> target) example, in order.
    path = dataset_path("diginetica", 1)
    with gzip.open(path, "rt") as f:
        lines = [line.split("\t") for line in f.read().splitlines()]
    examples = []
    sd = test.sessions
    for s in range(sd.n_sessions):
        items = split.vocab.external(sd.session(s)).tolist()
        examples += [(" ".join(items[:k]), items[k]) for k in range(len(items) - 1, 0, -1)]
    assert examples == [(p, label) for p, label in lines]


def test_diginetica_slice(diginetica_split):
    small = load_split("diginetica", max_sessions=300)
    assert small.train.n_sessions == 300
    # The most recent training sessions, next to the test period.
    assert small.train.session_ids[-1] == diginetica_split.train.session_ids[-1]
    assert 0 < small.test.sessions.n_sessions <= 300
    assert (small.test.sessions.items < small.vocab.n_items).all()


# --- the archive topic -----------------------------------------------------------------------


@pytest.mark.kafka
def test_read_topic_events_by_time_and_offsets(kafka_settings):
    from gru4stream.produce import publish_events
    from kafka_io.topics import TopicError
    from schemas.topics import CLICKS, spec_named
    from tests.kafka_util import create_topic, produce, unique_topic

    topic = create_topic(kafka_settings, spec_named(unique_topic("clicks"), CLICKS))
    now = int(datetime.now(UTC).timestamp() * 1000)
    hour = 3_600_000
    events = [
        ClickEvent(f"s{k % 7}", f"i{k % 11}", now - 10 * hour + k * 60_000) for k in range(300)
    ]
    result = asyncio.run(publish_events(events, kafka_settings, topic, progress=False))
    assert result.sent == 300
    # Two broken messages (their record time is now).
    produce(kafka_settings, topic, [(b"s0", b"not json"), (b"s1", b'{"session_id": "s1"}')])

    everything = read_topic_events(kafka_settings, topic, progress=False)
    assert everything == sorted(events, key=lambda e: e.timestamp)
    assert everything.n_invalid == 2
    assert sum(stop - start for start, stop in everything.offsets.values()) == 302

    start, end = now - 8 * hour, now - 6 * hour
    window = read_topic_events(kafka_settings, topic, start_ms=start, end_ms=end, progress=False)
    expected = [e for e in events if start <= e.timestamp < end]
    assert len(expected) == 120
    assert window == expected
    assert window.n_invalid == 0

    # An offset range: the first 10 records of partition 0 (only what they hold).
    part0 = read_topic_events(
        kafka_settings, topic, start_offsets={0: 0}, end_offsets={0: 10, 1: 0, 2: 0, 3: 0},
        progress=False,
    )  # fmt: skip
    assert len(part0) + part0.n_invalid == min(10, everything.offsets[0][1])
    split = split_from_events(everything, min_item_support=1, test_days=0.05, n_negatives=0)
    assert split.time_range == {
        "first_timestamp": events[0].timestamp,
        "last_timestamp": events[-1].timestamp,
        "n_events": 300,
    }

    with pytest.raises(TopicError, match="does not exist"):
        read_topic_events(kafka_settings, unique_topic("missing"), progress=False)
