"""The worker's pure core: batch answers, session rules, the table encoding (no broker)."""

from __future__ import annotations

import struct

import numpy as np
import orjson
import pytest

from schemas.artifact import read_artifact
from schemas.events import ClickEvent, Recommendation, ValidationError
from scoring import ServingModel
from stream_app.config import parse_duration
from stream_app.core import Click, CoreConfig, answer_batch, decode_message
from stream_app.sessions import SessionDecodeError, SessionState, peek
from stream_app.synthetic import write_random_artifact

NOW = 1_800_000_000_000


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    v1 = ServingModel.from_artifact(
        read_artifact(write_random_artifact(root / "v1", version="v1", n_items=120, seed=1))
    )
    v2 = ServingModel.from_artifact(
        read_artifact(
            write_random_artifact(root / "v2", version="v2", n_items=120, layers=(16, 8), seed=2)
        )
    )
    return v1, v2


def click(sid: str, item: str, offset: int, ts: int = NOW, partition: int = 0) -> Click:
    event = ClickEvent(session_id=sid, item_id=item, timestamp=ts)
    return Click(event, "clicks", partition, offset, b"{}", sid.encode(), ts)


def expected(model: ServingModel, items: list[str], k: int = 20) -> list[str]:
    """What the model recommends after a whole prefix, items seen excluded."""
    idx = model.index_of(items)
    top, _ = model.recommend(model.run([idx]), k, exclude=[idx])
    return model.item_ids(top[0])


def items_of(rec) -> list[str]:
    return [s.item_id for s in rec.items]


def run_batches(model, batches, config=None, now=NOW):
    """Feed batches through the core like the agent does, keeping the 'table' in a dict."""
    table: dict[str, bytes] = {}
    answers = []
    for batch in batches:
        stored = {
            c.event.session_id: (
                SessionState.decode(table[c.event.session_id])
                if c.event.session_id in table
                else None
            )
            for c in batch
        }
        result = answer_batch(model, batch, stored, config or CoreConfig(), now_ms=now)
        for sid, session in result.sessions.items():
            table[sid] = session.encode()
        answers.append(result)
    return answers, table


def test_each_click_answered_with_the_model_top_k_for_its_prefix(models):
    v1, _ = models
    batch = [
        click("a", "i1", 0),
        click("b", "i5", 1),
        click("a", "i2", 2),
        click("a", "i3", 3),
        click("b", "nope", 4),
    ]
    (result,), _ = run_batches(v1, [batch])
    assert [(c.offset, r.click_offset) for c, r in result.recommendations()] == [
        (i, i) for i in range(5)
    ]
    got = {c.offset: items_of(r) for c, r in result.recommendations()}
    assert got[0] == expected(v1, ["i1"])
    assert got[2] == expected(v1, ["i1", "i2"])
    assert got[3] == expected(v1, ["i1", "i2", "i3"])
    assert got[4] == expected(v1, ["i5", "nope"])  # unknown item: state kept, still answered
    assert all(len(r.items) == 20 and r.model_version == "v1" for _, r in result.recommendations())
    assert "i1" not in got[3] and "i2" not in got[3]


def test_splitting_into_batches_changes_nothing(models):
    v1, _ = models
    clicks = [click(f"s{i % 3}", f"i{(7 * i) % 50}", i) for i in range(12)]
    one, _ = run_batches(v1, [clicks])
    many, _ = run_batches(v1, [clicks[:5], clicks[5:6], clicks[6:]])
    flat = [items_of(r) for res in many for _, r in res.recommendations()]
    assert flat == [items_of(r) for _, r in one[0].recommendations()]


def test_out_of_order_click_is_rejected_and_state_kept(models):
    v1, _ = models
    (result,), table = run_batches(
        v1, [[click("a", "i1", 0, NOW), click("a", "i2", 1, NOW - 5), click("a", "i3", 2, NOW)]]
    )
    assert [c.offset for c, _ in result.rejected] == [1]
    assert "older than the session's last event" in result.rejected[0][1]
    assert result.rejected[0][1].startswith("timestamp:")
    assert [r.click_offset for _, r in result.recommendations()] == [0, 2]
    assert items_of(result.recommendations()[1][1]) == expected(v1, ["i1", "i3"])
    assert SessionState.decode(table["a"]).items == ["i1", "i3"]


def test_redelivered_clicks_do_not_advance_the_state_twice(models):
    v1, _ = models
    clicks = [click("a", "i1", 0), click("a", "i2", 1), click("a", "i3", 2), click("a", "i4", 3)]
    first, table = run_batches(v1, [clicks[:3]])
    # A crash before the commit: clicks 1..2 come again, then the new click 3.
    stored = {"a": SessionState.decode(table["a"])}
    again = answer_batch(v1, clicks[1:], stored, CoreConfig(), now_ms=NOW)
    assert again.redelivered == 2
    by_offset = {r.click_offset: items_of(r) for _, r in again.recommendations()}
    originals = {r.click_offset: items_of(r) for _, r in first[0].recommendations()}
    assert by_offset[1] == originals[1]  # recomputed from the stored history
    assert by_offset[2] == originals[2]  # the stored last answer
    assert by_offset[3] == expected(v1, ["i1", "i2", "i3", "i4"])  # not i2, i3 twice
    assert again.sessions["a"].count == 4


def test_model_swap_recomputes_the_state_from_history(models):
    v1, v2 = models
    _, table = run_batches(v1, [[click("a", "i1", 0), click("a", "i2", 1)]])
    stored = {"a": SessionState.decode(table["a"])}
    assert stored["a"].model_version == "v1"
    result = answer_batch(v2, [click("a", "i3", 2)], stored, CoreConfig(), now_ms=NOW)
    assert result.recomputed == 1
    ((_, rec),) = result.recommendations()
    assert rec.model_version == "v2"
    assert items_of(rec) == expected(v2, ["i1", "i2", "i3"])
    assert result.sessions["a"].hidden.shape == (2, 16)


def test_sessions_kept_between_batches_exclude_the_same_items_across_a_swap(tmp_path, models):
    """The session cache hands the core the objects it advanced last (their seen items
    already as indices): answers equal those of sessions decoded from the table, also after
    a swap to a model that numbers the items differently."""
    v1, _ = models
    names = [f"i{i}" for i in range(120)]
    reversed_ids = ServingModel.from_artifact(
        read_artifact(
            write_random_artifact(tmp_path / "r", version="r", n_items=120, items=names[::-1])
        )
    )
    batches = [
        [click(f"s{i % 3}", f"i{(13 * i) % 40}", i) for i in range(start, start + 6)]
        for start in (0, 6, 12)
    ]
    config = CoreConfig(k=100)  # most of the catalogue: every seen item would show up
    decoded, _ = run_batches(v1, batches[:2], config)
    _, table = run_batches(v1, batches[:2], config)
    kept: dict[str, SessionState] = {}
    for model, batch in ((v1, batches[0]), (v1, batches[1]), (reversed_ids, batches[2])):
        result = answer_batch(model, batch, kept, config, now_ms=NOW)
        kept.update(result.sessions)
        if model is v1:
            want = decoded[batches.index(batch)].recommendations()
            assert [items_of(r) for _, r in result.recommendations()] == [
                items_of(r) for _, r in want
            ]
    stored = {sid: SessionState.decode(raw) for sid, raw in table.items()}
    swapped = answer_batch(reversed_ids, batches[2], stored, config, now_ms=NOW)
    assert [items_of(r) for _, r in result.recommendations()] == [
        items_of(r) for _, r in swapped.recommendations()
    ]
    for c, rec in result.recommendations():
        session = kept[c.event.session_id]
        seen = session.items[: session.offsets.index(c.offset) + 1]
        assert not set(items_of(rec)) & set(seen)


def test_history_is_bounded_and_expired_sessions_start_over(models):
    v1, _ = models
    config = CoreConfig(history_len=3, session_ttl_ms=60_000)
    clicks = [click("a", f"i{i}", i) for i in range(5)]
    _, table = run_batches(v1, [clicks], config)
    session = SessionState.decode(table["a"])
    assert session.items == ["i2", "i3", "i4"] and session.offsets == [2, 3, 4]
    assert session.count == 5
    # The TTL counts in event time: hours of wall clock (a backlog) do not end a session...
    hours_later = NOW + 5 * 3_600_000
    next_click = click("a", "i8", 5, NOW + 60_000)
    stored = {"a": SessionState.decode(table["a"])}  # answer_batch updates it in place
    caught_up = answer_batch(v1, [next_click], stored, config, now_ms=hours_later)
    assert caught_up.restarted == 0 and caught_up.sessions["a"].count == 6
    # ... a click more than the TTL after the session's last one does.
    late_click = click("a", "i9", 5, NOW + 61_000)
    late = answer_batch(v1, [late_click], {"a": session}, config, now_ms=NOW + 61_000)
    assert late.restarted == 1
    assert late.sessions["a"].items == ["i9"] and late.sessions["a"].count == 1
    assert items_of(late.recommendations()[0][1]) == expected(v1, ["i9"])


def test_popularity_answers_a_session_of_unknown_items(models):
    v1, _ = models
    (result,), _ = run_batches(v1, [[click("a", "unknown-1", 0)]])
    rec = result.recommendations()[0][1]
    popular = v1.item_ids(np.argsort(-v1.item_support, kind="stable")[:20])
    assert items_of(rec) == popular


def test_exhaustive_baseline_gives_the_same_answers(models):
    v1, _ = models
    clicks = [click(f"s{i % 4}", f"i{(11 * i) % 90}", i) for i in range(16)]
    fast, _ = run_batches(v1, [clicks])
    naive, _ = run_batches(v1, [clicks], CoreConfig(exhaustive=True))
    assert [items_of(r) for _, r in fast[0].recommendations()] == [
        items_of(r) for _, r in naive[0].recommendations()
    ]


def test_decode_message_requires_the_session_id_as_key():
    good = b'{"session_id": "s1", "item_id": 5, "timestamp": 1700000000000}'
    assert decode_message(good, b"s1", CoreConfig()).item_id == "5"
    with pytest.raises(ValidationError, match="key: message key b's2' is not the session id"):
        decode_message(good, b"s2", CoreConfig())
    with pytest.raises(ValidationError, match="key: message key none"):
        decode_message(good, None, CoreConfig())
    assert decode_message(good, None, CoreConfig(require_session_key=False)).session_id == "s1"


def test_session_record_round_trip_and_garbage():
    state = SessionState(
        partition=3,
        items=["a", "b"],
        offsets=[7, 9],
        last_event_ms=5,
        touched_ms=6,
        count=2,
        model_version="v9",
        hidden=np.arange(6, dtype=np.float32).reshape(2, 3),
        last_answer=b'{"x":1}',
    )
    back = SessionState.decode(state.encode())
    assert back.items == ["a", "b"] and back.offsets == [7, 9] and back.last_offset == 9
    np.testing.assert_array_equal(back.hidden, state.hidden)
    assert (back.partition, back.model_version, back.last_answer) == (3, "v9", b'{"x":1}')
    assert back.last_recommendation == {"x": 1}
    fresh = SessionState(partition=1, items=["a"], offsets=[0])  # no state, no answer yet
    assert SessionState.decode(fresh.encode()) == fresh
    assert back.last_event_ms == 5 and back.touched_ms == 6
    assert peek(state.encode()) == (5, 3)  # last_event_ms, partition, without decoding
    assert peek(b"short") is None
    with pytest.raises(SessionDecodeError):
        SessionState.decode(b"\x05\x00\x00\x00garbage")


def test_a_session_written_with_its_answer_in_the_header_still_reads():
    """Values of the earlier layout, as a table or changelog from before may hold them."""
    hidden = np.arange(4, dtype=np.float32).reshape(1, 4)
    header = orjson.dumps(
        {"i": ["a"], "o": [3], "t": 5, "n": 1, "u": 6, "v": "v1", "s": [1, 4], "r": {"x": 1}}
    )
    raw = struct.pack("<Iqi", len(header), 5, 2) + header + hidden.tobytes()
    back = SessionState.decode(raw)
    assert (back.partition, back.items, back.offsets, back.model_version) == (2, ["a"], [3], "v1")
    np.testing.assert_array_equal(back.hidden, hidden)
    assert back.last_answer == b'{"x":1}' and back.last_recommendation == {"x": 1}


@pytest.mark.parametrize(
    "text,seconds", [("30m", 1800), ("90s", 90), ("250ms", 0.25), ("2h", 7200), ("12", 12)]
)
def test_durations(text, seconds):
    assert parse_duration(text) == pytest.approx(seconds)


def test_bad_duration_is_refused():
    with pytest.raises(ValueError, match="not a duration"):
        parse_duration("soon")
    with pytest.raises(ValueError, match="must be positive"):
        parse_duration("0ms")
    assert parse_duration("0ms", zero_ok=True) == 0.0  # "no wait", where an option allows it


def test_wire_form_is_the_recommendation_record(models):
    v1, _ = models
    (result,), _ = run_batches(v1, [[click("a", "i1", 0), click("a", "nope", 1)]])
    for _, wire in result.answers:
        record = orjson.loads(wire)
        assert Recommendation.from_dict(record).to_dict() == record


def test_load_model_checks_the_announcement(tmp_path):
    from schemas.artifact import ArtifactError, manifest_checksum
    from schemas.events import ModelUpdate
    from stream_app.model_updates import artifact_path, load_model

    path = write_random_artifact(tmp_path / "v7", version="v7", n_items=30)

    def update(**kw):
        fields = dict(
            version="v7",
            artifact_uri=str(path),
            checksum=manifest_checksum(path),
            metrics={},
            created_at=0,
        )
        return ModelUpdate(**{**fields, **kw})

    assert load_model(path, update()).version == "v7"
    assert artifact_path(f"file://{path}") == path
    with pytest.raises(ArtifactError, match="announced checksum"):
        load_model(path, update(checksum="a" * 64))
    with pytest.raises(ArtifactError, match="announced as 'v8'"):
        load_model(path, update(version="v8"))
    with pytest.raises(ArtifactError, match="only local directories"):
        artifact_path("s3://bucket/v7")
    with pytest.raises(ArtifactError, match="no manifest.json"):
        load_model(tmp_path / "missing", update())


def test_sessions_table_is_rocksdb_through_rocksdict_with_small_buffers(tmp_path):
    from faust.stores.rocksdb import Store

    from stream_app.app import create_app
    from stream_app.config import WorkerConfig

    config = WorkerConfig(app_id="store-check", data_dir=str(tmp_path / "data"))
    _, runtime = create_app(config)
    store = runtime.sessions.data
    assert isinstance(store, Store) and store.use_rocksdict
    options = store.rocksdb_options
    assert options.block_cache_size == 16 * 1024 * 1024
    assert options.write_buffer_size == 4 * 1024 * 1024
    assert options.max_write_buffer_number == 2
    # Opening a partition writes a real RocksDB directory.
    store._db_for_partition(0).put(b"k", b"v")
    assert any(p.name == "CURRENT" for p in (tmp_path / "data").rglob("CURRENT"))


def test_the_app_restores_tables_with_the_seek_before_flow_recovery(tmp_path):
    from stream_app.app import create_app
    from stream_app.config import WorkerConfig
    from stream_app.recovery import SeekBeforeFlowRecovery

    app, _ = create_app(WorkerConfig(app_id="recovery-check", data_dir=str(tmp_path)))
    assert isinstance(app.tables.recovery, SeekBeforeFlowRecovery)


def test_initial_model_from_a_directory_or_a_registry(tmp_path):
    from schemas.artifact import ArtifactError
    from schemas.registry import Registry
    from stream_app.cli import build_parser, config_from_args, initial_model_path

    def start_path(*argv):
        return initial_model_path(config_from_args(build_parser().parse_args(list(argv))))

    plain = write_random_artifact(tmp_path / "plain", version="p1", n_items=10)
    assert start_path("--model", str(plain)) == str(plain)
    assert start_path() is None  # no model: wait for model-updates

    registry = Registry(tmp_path / "registry")
    assert start_path("--registry", str(registry.root)) is None  # nothing promoted yet
    first = registry.add(plain)
    second = registry.add(write_random_artifact(tmp_path / "other", version="x", n_items=10))
    registry.promote(first)
    assert start_path("--registry", str(registry.root)).endswith(first)
    assert start_path("--registry", str(registry.root), "--model", "latest").endswith(second)
    with pytest.raises(ArtifactError):
        start_path("--model", str(tmp_path / "nowhere"))


def test_worker_options_are_checked():
    from stream_app.cli import build_parser, config_from_args

    args = build_parser().parse_args(["--session-ttl", "45m", "--batch-wait", "5ms", "--naive"])
    config = config_from_args(args)
    assert config.core.session_ttl_ms == 45 * 60_000 and config.batch_within_s == 0.005
    assert config.naive and config.core.exhaustive
    # A micro-batch's records are sent at once unless a linger is asked for.
    assert config.producer_linger_s == 0.0
    lingering = config_from_args(build_parser().parse_args(["--producer-linger", "5ms"]))
    assert lingering.producer_linger_s == 0.005
    # A bounded cache of decoded sessions in front of the table, or none.
    assert config.session_cache == 20_000
    assert config_from_args(build_parser().parse_args(["--session-cache", "0"])).session_cache == 0
    with pytest.raises(ValueError, match="--session-cache must be >= 0"):
        config_from_args(build_parser().parse_args(["--session-cache", "-1"]))
    # One BLAS product and a top-k pass by default; FAISS on request.
    assert config.serving_options()["exact_search"] == "blas"
    flat = config_from_args(build_parser().parse_args(["--exact-search", "faiss"]))
    assert flat.serving_options()["exact_search"] == "faiss"
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--exact-search", "gpu"])
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--no-such-option"])
    with pytest.raises(ValueError, match="not a duration"):
        config_from_args(build_parser().parse_args(["--session-ttl", "forever"]))
    # Failover: 6 s (the broker's minimum) with 1 s heartbeats unless told otherwise.
    assert (config.broker_session_timeout_s, config.heartbeat_interval_s) == (6.0, 1.0)
    assert config.group_instance_id is None
    static = ["--group-instance-id", "w-0", "--broker-session-timeout", "10s"]
    assert config_from_args(build_parser().parse_args(static)).group_instance_id == "w-0"
    with pytest.raises(ValueError, match="--heartbeat-interval must be shorter"):
        config_from_args(build_parser().parse_args(["--heartbeat-interval", "6s"]))
