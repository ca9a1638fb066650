"""`gru4stream produce`: every click delivered once, in order per session, in the contract."""

from __future__ import annotations

import asyncio
import time
from collections import Counter, defaultdict
from pathlib import Path

import pytest
from kafka_util import consume_all, partition_count, topic_config, unique_topic

from deploy.kafka.broker import free_port
from gru4stream import cli
from gru4stream.produce import align_times, publish_events
from readers.registry import iter_events
from schemas.events import ClickEvent, decode_click
from schemas.topics import CLICKS


def _events(n: int) -> list[ClickEvent]:
    return list(iter_events("movielens-100k", limit=n))


def test_shift_moves_the_last_event_to_now_and_keeps_gaps() -> None:
    events = [ClickEvent("a", "1", 1000), ClickEvent("b", "2", 1000), ClickEvent("a", "3", 4500)]
    shifted = align_times(events, "shift", now_ms=2_000_000_000_000)
    assert shifted[-1].timestamp == 2_000_000_000_000
    assert [e.timestamp - shifted[0].timestamp for e in shifted] == [0, 0, 3500]
    assert [(e.session_id, e.item_id) for e in shifted] == [("a", "1"), ("b", "2"), ("a", "3")]
    assert align_times(events, "keep") == events
    assert align_times([], "shift") == []
    with pytest.raises(ValueError, match="time mode"):
        align_times(events, "now")


def test_movielens_predates_the_contract_so_shift_is_needed() -> None:
    first = _events(1)[0]
    assert first.timestamp < 946_684_800_000  # 1997: `keep` would publish only dead letters


@pytest.mark.kafka
def test_published_slice_arrives_exactly_once_in_session_order(
    kafka_bootstrap: str, kafka_settings
) -> None:
    events = align_times(_events(1000), "shift")
    topic = unique_topic("clicks")
    result = asyncio.run(publish_events(events, kafka_settings, topic, progress=False))
    assert result == (1000, 0)

    assert partition_count(kafka_bootstrap, topic) == CLICKS.partitions
    assert topic_config(kafka_bootstrap, topic)["retention.ms"] == "-1"
    records = consume_all(kafka_bootstrap, topic)
    decoded = [decode_click(r.value) for r in records]
    assert Counter(decoded) == Counter(events)  # nothing lost, nothing twice

    by_session: dict[str, list[ClickEvent]] = defaultdict(list)
    partitions: dict[str, set[int]] = defaultdict(set)
    for record, event in zip(records, decoded, strict=True):  # records are in offset order
        assert record.key == event.session_id.encode()
        assert record.timestamp == event.timestamp
        by_session[event.session_id].append(event)
        partitions[event.session_id].add(record.partition)
    expected: dict[str, list[ClickEvent]] = defaultdict(list)
    for event in events:
        expected[event.session_id].append(event)
    assert by_session == expected
    assert all(len(p) == 1 for p in partitions.values())
    for clicks in by_session.values():
        times = [e.timestamp for e in clicks]
        assert times == sorted(times)


@pytest.mark.kafka
def test_cli_produces_a_dataset_slice_end_to_end(kafka_bootstrap: str, capsys) -> None:
    topic = unique_topic("clicks")
    before = int(time.time() * 1000)
    args = ["produce", "--dataset", "movielens-100k", "--limit", "1000", "--topic", topic]
    assert cli.main([*args, "--bootstrap", kafka_bootstrap, "--no-progress"]) == 0
    after = int(time.time() * 1000)
    out = capsys.readouterr().out
    assert f"sent 1000 clicks to {topic} on {kafka_bootstrap}, failed 0" in out

    decoded = [decode_click(r.value) for r in consume_all(kafka_bootstrap, topic)]
    assert len(decoded) == 1000
    assert before <= max(e.timestamp for e in decoded) <= after  # shifted: the last is "now"
    original = _events(1000)
    span = original[-1].timestamp - original[0].timestamp
    assert max(e.timestamp for e in decoded) - min(e.timestamp for e in decoded) == span
    assert Counter((e.session_id, e.item_id) for e in decoded) == Counter(
        (e.session_id, e.item_id) for e in original
    )


@pytest.mark.kafka
def test_keep_mode_refuses_pre_2000_events_and_says_so(kafka_bootstrap: str, capsys) -> None:
    topic = unique_topic("clicks")
    args = ["produce", "--dataset", "movielens-100k", "--limit", "20", "--topic", topic]
    rc = cli.main([*args, "--bootstrap", kafka_bootstrap, "--time-mode", "keep", "--no-progress"])
    assert rc == 1
    captured = capsys.readouterr()
    assert "sent 0 clicks" in captured.out and "failed 20" in captured.out
    assert "before 946684800000 (2000-01-01)" in captured.err
    assert consume_all(kafka_bootstrap, topic) == []


@pytest.mark.kafka
def test_file_events_are_published_in_timestamp_order(kafka_bootstrap: str, tmp_path: Path) -> None:
    path = tmp_path / "clicks.csv"
    path.write_text(
        "sess,item,when\n"
        "s1,a,2024-05-01T10:00:02Z\n"
        "s2,b,2024-05-01T10:00:00Z\n"
        "s1,c,2024-05-01T10:00:01Z\n"
        "s2,d,2024-05-01T10:00:03Z\n"
    )
    topic = unique_topic("clicks")
    args = ["produce", "--file", str(path), "--topic", topic, "--bootstrap", kafka_bootstrap]
    args += ["--session-col", "sess", "--item-col", "item", "--time-col", "when"]
    args += ["--time-unit", "iso", "--time-mode", "keep", "--no-progress"]
    assert cli.main(args) == 0
    decoded = [decode_click(r.value) for r in consume_all(kafka_bootstrap, topic)]
    per_session = defaultdict(list)
    for e in decoded:
        per_session[e.session_id].append(e.item_id)
    assert dict(per_session) == {"s1": ["c", "a"], "s2": ["b", "d"]}
    assert {e.timestamp for e in decoded} == {
        1714557600000,
        1714557601000,
        1714557602000,
        1714557603000,
    }


def test_bad_file_is_refused_with_file_and_line(tmp_path: Path, capsys) -> None:
    path = tmp_path / "clicks.csv"
    path.write_text("session_id,item_id,timestamp\ns1,a,1714557600000\ns1,b,soon\n")
    rc = cli.main(["produce", "--file", str(path), "--bootstrap", "127.0.0.1:1", "--no-progress"])
    assert rc == 1
    err = capsys.readouterr().err
    assert f"{path}, line 3" in err and "Traceback" not in err


def test_unreachable_broker_is_a_one_line_error(capsys) -> None:
    bootstrap = f"127.0.0.1:{free_port()}"  # nothing listens there
    args = ["produce", "--dataset", "movielens-100k", "--limit", "5", "--bootstrap", bootstrap]
    assert cli.main([*args, "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert err == f"gru4stream produce: {bootstrap}: connection refused; check bootstrap.servers\n"
