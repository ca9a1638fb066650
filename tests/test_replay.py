"""Replay through the serving core: equal to offline evaluation, unknown items, coverage, CLI."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import orjson
import pytest

from schemas.artifact import read_artifact
from schemas.events import ClickEvent, Recommendation, ScoredItem, encode_click
from schemas.metrics import rank_metrics, ranks_from_scores
from schemas.topics import CLICKS, spec_named
from scoring import ServingModel
from stream_app.replay import main
from stream_app.replay_live import SentClick, live_metrics
from stream_app.replay_offline import group_sessions, replay_model
from stream_app.synthetic import write_random_artifact
from tests.kafka_util import create_topic, produce, unique_topic

N_ITEMS = 60
KS = (1, 5, 10, 20)


@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    path = tmp_path_factory.mktemp("replay") / "v0001"
    return read_artifact(
        write_random_artifact(path, version="v0001", n_items=N_ITEMS, layers=(24, 16), seed=5)
    )


@pytest.fixture(scope="module")
def model(artifact):
    return ServingModel.from_artifact(artifact)


def random_sessions(n: int, seed: int = 0, vocab: int = N_ITEMS) -> list[list[str]]:
    rng = np.random.default_rng(seed)
    return [[f"i{j}" for j in rng.integers(0, vocab, rng.integers(1, 9))] for _ in range(n)]


def direct_ranks(
    model: ServingModel, sessions, *, exclude_seen: bool, history: int = 1000
) -> np.ndarray:
    """Exact ranks from the full score vector, one session and one click at a time."""
    ranks = []
    for seq in sessions:
        idx = model.index_of(seq)
        state = model.initial_state(1)
        for t in range(len(seq) - 1):
            state = model.step(state, idx[t : t + 1])
            if idx[t + 1] < 0:
                ranks.append(N_ITEMS + 1)
                continue
            scores = model.scores(state).astype(np.float64)
            if exclude_seen:
                recent = idx[max(t + 1 - history, 0) : t + 1]
                seen = recent[recent >= 0]
                scores[0, seen] = -np.inf
            ranks.append(int(ranks_from_scores(scores, idx[t + 1 : t + 2])[0]))
    return np.array(ranks)


def test_replay_equals_offline_evaluation(artifact, model):
    from batch_training.evaluate import ArtifactScorer, evaluate_full

    sessions = random_sessions(300, seed=1)
    replayed = replay_model(model, sessions, k=20, exclude_seen=False, progress=False)

    # The same sessions as the offline evaluation sees them: flat arrays, every next item.
    items = np.concatenate([model.index_of(s) for s in sessions])
    offsets = np.concatenate([[0], np.cumsum([len(s) for s in sessions])])
    data = SimpleNamespace(
        sessions=SimpleNamespace(items=items, offsets=offsets),
        eval_from=np.ones(len(sessions), dtype=np.int64),
        negatives=None,
    )
    offline = evaluate_full(ArtifactScorer(artifact), data, ks=KS, progress=False)
    assert replayed.n_examples == offline["n_examples"] == sum(len(s) - 1 for s in sessions)
    for name, value in offline.items():
        assert replayed.metrics[name] == pytest.approx(value, abs=1e-12), name
    assert 0.0 < replayed.metrics["recall@20"] < 1.0  # a random model: neither all nor nothing


def test_replay_of_a_trained_model_equals_evaluate_full_with_the_torch_model(tmp_path):
    """Train a small GRU4Rec, export it, serve it: the served replay and the offline
    evaluation of the torch model agree on the same sessions (exclusion off)."""
    import torch

    from batch_training.config import TrainConfig
    from batch_training.evaluate import GRU4RecScorer, evaluate_full
    from batch_training.export import export_artifact
    from batch_training.sessions import ItemVocab, SessionData
    from batch_training.train import train

    torch.set_num_threads(1)
    rng = np.random.default_rng(11)
    n = 40
    vocab = ItemVocab(tuple(f"m{i}" for i in range(n)))

    def walks(count: int) -> list[list[int]]:  # i -> i+1 or i+2: learnable, not trivial
        out = []
        for _ in range(count):
            seq = [int(rng.integers(n))]
            for _ in range(int(rng.integers(2, 8))):
                seq.append((seq[-1] + int(rng.integers(1, 3))) % n)
            out.append(seq)
        return out

    def session_data(seqs: list[list[int]]) -> SessionData:
        items = np.concatenate(seqs).astype(np.int64)
        return SessionData(
            items=items,
            offsets=np.concatenate([[0], np.cumsum([len(s) for s in seqs])]).astype(np.int64),
            timestamps=np.arange(len(items), dtype=np.int64),
            session_ids=np.array([f"s{i}" for i in range(len(seqs))], dtype=object),
        )

    train_data = session_data(walks(300))
    config = TrainConfig(layers=(16,), n_epochs=2, batch_size=16, n_sample=16, loss="bpr-max")
    support = np.bincount(train_data.items, minlength=n)
    result = train(
        train_data, config, n_items=n, item_support=support, device="cpu", progress=False
    )
    path = export_artifact(
        result, vocab, tmp_path / "v0001", version="v0001", item_support=support,
        training_data={}, metrics={},
    )  # fmt: skip

    test_seqs = walks(120)
    test = SimpleNamespace(
        sessions=session_data(test_seqs),
        eval_from=np.ones(len(test_seqs), dtype=np.int64),
        negatives=None,
    )
    offline = evaluate_full(GRU4RecScorer(result.model), test, ks=KS, progress=False)
    served = ServingModel.from_artifact(read_artifact(path))
    replayed = replay_model(
        served, [[vocab.ids[i] for i in s] for s in test_seqs], k=20, exclude_seen=False,
        progress=False,
    )  # fmt: skip
    assert offline["recall@5"] > 0.3  # it learnt the walk
    for name, value in offline.items():
        assert replayed.metrics[name] == pytest.approx(value, abs=1e-12), name


def test_seen_items_are_excluded_like_the_direct_computation(model):
    sessions = random_sessions(200, seed=2, vocab=12)  # small vocabulary: many repeats
    for exclude_seen in (True, False):
        replayed = replay_model(model, sessions, k=20, exclude_seen=exclude_seen, progress=False)
        expected = rank_metrics(direct_ranks(model, sessions, exclude_seen=exclude_seen), KS)
        for name, value in expected.items():
            assert replayed.metrics[name] == pytest.approx(value, abs=1e-12), (exclude_seen, name)
    # Repeats are frequent here, so excluding them must cost recall.
    with_ex = replay_model(model, sessions, k=20, exclude_seen=True, progress=False)
    without = replay_model(model, sessions, k=20, exclude_seen=False, progress=False)
    assert with_ex.metrics["recall@20"] < without.metrics["recall@20"]


def test_only_the_workers_history_window_is_excluded(model):
    sessions = random_sessions(200, seed=6, vocab=8)
    short = replay_model(model, sessions, k=5, history=2, progress=False)
    expected = rank_metrics(direct_ranks(model, sessions, exclude_seen=True, history=2), (1, 5))
    assert short.metrics == pytest.approx(expected)
    longer = replay_model(model, sessions, k=5, history=50, progress=False)
    assert short.metrics != pytest.approx(longer.metrics)


def test_unknown_items_leave_the_state_and_miss(model):
    sessions = [["i1", "nope", "i2", "i3"], ["gone", "i4"], ["i5", "i6", "missing"]]
    result = replay_model(model, sessions, k=20, exclude_seen=False, progress=False)
    assert result.n_examples == 6
    assert result.n_unknown_targets == 2  # i1 -> nope, i6 -> missing
    assert result.n_unknown_inputs == 3
    expected = rank_metrics(direct_ranks(model, sessions, exclude_seen=False), KS)
    assert result.metrics == pytest.approx(expected)


def test_coverage_counts_distinct_recommended_items(model):
    sessions = random_sessions(50, seed=3)
    full = replay_model(model, sessions, k=N_ITEMS, exclude_seen=False, progress=False)
    assert full.coverage == 1.0
    assert full.metrics[f"recall@{N_ITEMS}"] == pytest.approx(
        1.0 - full.n_unknown_targets / full.n_examples
    )
    top1 = replay_model(model, sessions, k=1, exclude_seen=False, progress=False)
    distinct = set()
    for seq in sessions:
        state = model.initial_state(1)
        for item in model.index_of(seq)[:-1]:
            state = model.step(state, np.array([item]))
            distinct.add(int(np.argmax(model.scores(state)[0])))
    assert top1.coverage == pytest.approx(len(distinct) / N_ITEMS)


def test_group_sessions_keeps_topic_order_and_drops_late_clicks():
    t = 1_700_000_000_000
    events = [
        ClickEvent("b", "1", t + 5),
        ClickEvent("a", "2", t + 1),
        ClickEvent("b", "3", t + 5),  # same time: accepted, in topic order
        ClickEvent("b", "4", t + 2),  # older than b's newest click: the worker refuses it
        ClickEvent("b", "5", t + 9),
    ]
    late: list[ClickEvent] = []
    assert group_sessions(events, late) == [["1", "3", "5"], ["2"]]
    assert late == [events[3]]


def _answer(version: str, click: SentClick, items: list[str], produced_at: int):
    return Recommendation(
        session_id=click.session_id,
        items=tuple(ScoredItem(i, 1.0) for i in items),
        model_version=version,
        produced_at=produced_at,
        click_partition=click.partition,
        click_offset=click.offset,
        click_timestamp=click.timestamp,
    )


def test_live_metrics_join_answers_with_the_next_click():
    sent = [
        SentClick("s1", "a", 1000, 0, 0),
        SentClick("s2", "x", 1001, 1, 0),
        SentClick("s1", "b", 1002, 0, 1),
        SentClick("s1", "c", 1003, 0, 2),
        SentClick("s2", "y", 1004, 1, 1),
    ]
    answers = [
        _answer("v0001", sent[0], ["z", "b"], 1010),  # next of s1 after a is b: rank 2
        _answer("v0001", sent[1], ["q"], 1021),  # next of s2 after x is y: a miss
        _answer("v0002", sent[2], ["c"], 1012),  # next is c: rank 1
        _answer("v0002", sent[3], ["a"], 1013),  # s1's last click: nothing to predict
        _answer("v0002", sent[4], ["a"], 1014),  # s2's last click
        _answer("v0002", SentClick("s9", "?", 0, 3, 99), ["a"], 5),  # not a click we sent
    ]
    stats = live_metrics(sent, answers, k=2)
    assert list(stats) == ["v0001", "v0002"]
    v1, v2 = stats["v0001"], stats["v0002"]
    assert (v1.answers, v2.answers) == (2, 3)
    assert v1.metrics == pytest.approx(rank_metrics([2, 3], (1, 2)))
    assert v2.metrics == pytest.approx(rank_metrics([1], (1, 2)))
    assert sorted(v1.latencies_ms) == [10, 20] and v1.latency(50) == 15
    # The list is cut at k: with k=1 the rank-2 hit is a miss.
    assert live_metrics(sent, answers, k=1)["v0001"].metrics["recall@1"] == 0.0


def test_cli_refuses_bad_input(tmp_path, capsys, artifact):
    with pytest.raises(SystemExit) as exit_:
        main(["--model", str(artifact.path), "--live", "--rate", "0"])
    assert exit_.value.code == 2
    assert "--rate must be positive" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--model", str(artifact.path), "--from", "yesterday"])
    assert "not ISO 8601" in capsys.readouterr().err
    assert main(["--model", str(tmp_path / "nothing"), "--bootstrap", "127.0.0.1:9"]) == 1
    assert "not an artifact directory" in capsys.readouterr().err


@pytest.mark.kafka
def test_replay_from_topic_matches_in_memory_replay(tmp_path, kafka_bootstrap, model, artifact):
    topic = create_topic(kafka_bootstrap, spec_named(unique_topic("clicks"), CLICKS))
    t0 = 1_700_000_000_000
    sessions = random_sessions(40, seed=4)
    events = [
        ClickEvent(f"s{s}", item, t0 + 1000 * s + i)
        for s, seq in enumerate(sessions)
        for i, item in enumerate(seq)
    ]
    late = [ClickEvent("late", "i1", t0 + 10**9), ClickEvent("late", "i2", t0 + 10**9 + 1)]
    payloads = [(e.session_id.encode(), encode_click(e)) for e in events + late]
    payloads.append((b"bad", b'{"session_id": "bad"}'))  # no item, no timestamp
    produce(kafka_bootstrap, topic, payloads)

    out_json, out_png = tmp_path / "r.json", tmp_path / "r.png"
    code = main(
        [
            "--topic", topic, "--bootstrap", kafka_bootstrap,
            "--from", str(t0), "--to", str(t0 + 10**8),
            "--model", f"{artifact.path},{artifact.path}",
            "--k", "10", "--no-exclude-seen", "--json", str(out_json), "--png", str(out_png),
            "--no-progress",
        ]
    )  # fmt: skip
    assert code == 0
    report = orjson.loads(out_json.read_bytes())
    assert report["n_events"] == len(events)
    assert report["n_invalid"] == 1
    assert report["n_sessions"] == len(sessions)
    expected = replay_model(model, sessions, k=10, exclude_seen=False, progress=False)
    assert len(report["models"]) == 2
    for got in report["models"]:
        assert got["metrics"] == pytest.approx(expected.metrics)
        assert got["coverage"] == pytest.approx(expected.coverage)
    assert out_png.stat().st_size > 1000


@pytest.mark.slow
def test_live_replay_through_a_worker_matches_the_offline_replay(tmp_path, kafka_bootstrap):
    """The same clicks through a real worker give the offline replay's numbers: one scoring
    path, the same exclusion and unknown-item rules."""
    topic = create_topic(kafka_bootstrap, spec_named(unique_topic("clicks"), CLICKS))
    t0 = 1_700_000_000_000
    sessions = random_sessions(25, seed=7)
    sessions[0] = ["i1", "unknown-item", "i2", "i1"]  # an unknown click and a repeat
    events = [
        ClickEvent(f"s{s}", item, t0 + 1000 * i + s)
        for s, seq in enumerate(sessions)
        for i, item in enumerate(seq)
    ]
    produce(kafka_bootstrap, topic, [(e.session_id, encode_click(e)) for e in events])
    model_dir = write_random_artifact(
        tmp_path / "m", version="v0007", n_items=N_ITEMS, layers=(24, 16), seed=5
    )
    out = tmp_path / "r.json"
    argv = [
        "--topic", topic, "--bootstrap", kafka_bootstrap, "--model", str(model_dir),
        "--k", "10", "--live", "--rate", "100", "--json", str(out), "--no-progress",
    ]  # fmt: skip
    assert main(argv) == 0
    report = orjson.loads(out.read_bytes())
    (offline,) = report["models"]
    (live,) = report["live"]
    assert live["sent"] == live["answered"] == len(events)
    assert list(live["versions"]) == ["v0007"]
    online = live["versions"]["v0007"]
    assert online["metrics"]["n_examples"] == offline["n_examples"]
    for name in ("recall@10", "mrr@10", "ndcg@10", "recall@1", "recall@5"):
        assert online["metrics"][name] == pytest.approx(offline["metrics"][name], abs=1e-9), name
    assert 0 < online["latency_ms"]["p50"] <= online["latency_ms"]["p95"]
