"""The evaluation loop on constructed scorers whose ranks can be worked out by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from batch_training.evaluate import (
    ArtifactScorer,
    GRU4RecScorer,
    SessionScorer,
    evaluate_full,
    evaluate_sampled,
    limit_history,
    map_to_vocab,
)
from batch_training.metrics import ranks_among_candidates
from schemas.artifact import Manifest, expected_shapes, read_artifact, write_artifact
from scoring import ServingModel
from tests.eval_util import make_eval


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Tiny tensors: a second thread only adds contention on a shared machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class TableScorer:
    """Scores depend only on the item just fed: row `item` of a fixed table."""

    def __init__(self, table: np.ndarray) -> None:
        self.table = torch.as_tensor(table, dtype=torch.float32)
        self.n_items = self.table.shape[1]
        self.fed: list[int] = []

    def init_state(self, batch_size):
        return torch.zeros(batch_size)

    def step(self, state, items):
        self.fed += items.tolist()
        return state, self.table[items]

    def reset(self, state, mask):
        return state


class CountingScorer:
    """State = clicks fed since the lane's last reset; scores put 1 on item `count`."""

    def __init__(self, n_items: int) -> None:
        self.n_items = n_items

    def init_state(self, batch_size):
        return torch.zeros(batch_size, dtype=torch.long)

    def step(self, state, items):
        state = state + 1
        scores = torch.zeros(len(items), self.n_items)
        scores[torch.arange(len(items)), state.clamp(max=self.n_items - 1)] = 1.0
        return state, scores

    def reset(self, state, mask):
        return torch.where(mask, 0, state)


TABLE = np.array(
    [
        [0.9, 0.5, 0.5, 0.1],  # after 0: target 1 ties with item 2 -> rank 3
        [0.1, 0.2, 0.3, 0.4],  # after 1: target 2 -> rank 2
        [0.0, 0.0, 0.0, 1.0],  # after 2: target 3 -> rank 1
        [0.4, 0.3, 0.2, 0.1],  # after 3: target 0 -> rank 1, target 2 -> rank 3
    ]
)


def expected(ranks, ks):
    ranks = np.asarray(ranks, dtype=float)
    out = {}
    for k in ks:
        hit = ranks <= k
        out[f"recall@{k}"] = hit.mean()
        out[f"mrr@{k}"] = np.where(hit, 1 / ranks, 0).mean()
        out[f"ndcg@{k}"] = np.where(hit, 1 / np.log2(ranks + 1), 0).mean()
    return out


@pytest.mark.parametrize("batch_size", [1, 2, 8])
def test_full_ranking_hand_computed(batch_size):
    data = make_eval([[0, 1, 2], [2, 3], [1], [3, 0]])
    got = evaluate_full(TableScorer(TABLE), data, ks=(1, 2, 3), batch_size=batch_size)
    # targets: 0->1 (rank 3), 1->2 (rank 2), 2->3 (rank 1), 3->0 (rank 1); [1] has no target
    assert got["n_examples"] == 4
    for name, value in expected([3, 2, 1, 1], (1, 2, 3)).items():
        assert got[name] == pytest.approx(value), name
    assert got["recall@1"] == pytest.approx(0.5)
    assert got["mrr@2"] == pytest.approx((1 / 2 + 1 + 1) / 4)
    assert got["ndcg@3"] == pytest.approx((1 / 2 + 1 / math.log2(3) + 1 + 1) / 4)


def test_eval_from_limits_targets_but_history_is_fed():
    scorer = TableScorer(TABLE)
    # session 0 is evaluated only at position 2 (target 2 after 1), session 1 not at all
    data = make_eval([[0, 1, 2], [2, 3], [3, 2]], eval_from=[2, 2, 1])
    got = evaluate_full(scorer, data, ks=(1, 3), batch_size=2)
    assert got["n_examples"] == 2  # 1->2 (rank 2) and 3->2 (rank 3)
    assert got["recall@1"] == 0.0
    assert got["mrr@3"] == pytest.approx((1 / 2 + 1 / 3) / 2)
    assert 2 not in scorer.fed  # session 1 (starting with 2) is never fed


@pytest.mark.parametrize("batch_size", [1, 3, 64])
def test_lane_state_is_reset_when_a_new_session_enters(batch_size):
    rng = np.random.default_rng(0)
    # item at position p is p: a scorer that counts clicks since its reset gets every one
    # right; a stale or wrongly shared state gets them wrong (score 0, a tie with all items)
    seqs = [list(range(n)) for n in rng.integers(1, 9, size=40)]
    got = evaluate_full(CountingScorer(10), make_eval(seqs), ks=(1,), batch_size=batch_size)
    assert got["n_examples"] == sum(len(s) - 1 for s in seqs)
    assert got["recall@1"] == 1.0


def test_without_reset_the_counting_scorer_fails():
    class NoReset(CountingScorer):
        def reset(self, state, mask):
            return state

    seqs = [[0, 1, 2], [0, 1], [0, 1, 2, 3]]
    got = evaluate_full(NoReset(10), make_eval(seqs), ks=(1,), batch_size=1)
    assert got["recall@1"] < 1.0  # the check above can fail


class IndexScorer:
    """Score of item i is i: higher ids always win."""

    def __init__(self, n_items):
        self.n_items = n_items

    def init_state(self, batch_size):
        return torch.zeros(batch_size)

    def step(self, state, items):
        return state, torch.arange(self.n_items, dtype=torch.float32).expand(len(items), -1)

    def reset(self, state, mask):
        return state


def test_sampled_uses_exactly_the_given_negatives_and_last_target():
    n = 200
    negs_a = list(range(70, 100)) + list(range(101, 131)) + list(range(0, 39))  # 30 above 100
    negs_b = list(range(0, 99))  # all below 149
    negs_c = [-1] * 95 + [7, 7, 160, 120]  # two dropped, one equal to the target (120)
    data = make_eval(
        [[5, 6, 100], [1, 149], [3, 9, 120], [4]],
        eval_from=[1, 1, 1, 1],
        negatives=[negs_a, negs_b, negs_c, list(range(99))],
    )
    got = evaluate_sampled(IndexScorer(n), data, ks=(1, 5, 10, 50))
    # ranks: 31, 1, 2 (only 160 above; the copy of 120 is not a negative); [4] has no target
    assert got["n_examples"] == 3
    assert got["hr@1"] == pytest.approx(1 / 3)
    assert got["hr@5"] == got["recall@5"] == pytest.approx(2 / 3)
    assert got["hr@50"] == pytest.approx(1.0)
    assert got["ndcg@10"] == pytest.approx((1 + 1 / math.log2(3)) / 3)
    assert got["ndcg@50"] == pytest.approx((1 / math.log2(32) + 1 + 1 / math.log2(3)) / 3)
    # under full ranking the same sessions rank far lower: the negatives made the difference
    assert evaluate_full(IndexScorer(n), data, ks=(5,))["recall@5"] == 0.0


def test_sampled_ties_count_against_the_model():
    data = make_eval([[0, 5]], negatives=[[1, 2, 3] + [4] * 96])
    got = evaluate_sampled(TableScorer(np.zeros((6, 6))), data, ks=(5, 10))
    assert got["hr@10"] == 0.0  # every candidate ties: rank 100


def test_sampled_needs_negatives():
    with pytest.raises(ValueError, match="negatives"):
        evaluate_sampled(IndexScorer(3), make_eval([[0, 1]]))


def test_ranks_among_candidates():
    scores = torch.tensor([[0.1, 0.5, 0.5, 0.9], [0.3, 0.2, 0.1, 0.0]])
    cands = torch.tensor([[1, 2, 0, -1], [2, 0, 1, 3]])
    assert ranks_among_candidates(scores, cands).tolist() == [2, 3]


def test_evaluation_is_batch_size_invariant_on_a_random_scorer():
    rng = np.random.default_rng(3)
    table = rng.normal(size=(30, 30))
    seqs = [list(rng.integers(0, 30, size=n)) for n in rng.integers(2, 12, size=25)]
    data = make_eval(seqs, eval_from=rng.integers(1, 4, size=25))
    runs = [evaluate_full(TableScorer(table), data, batch_size=b, progress=False) for b in (1, 7)]
    assert runs[0] == pytest.approx(runs[1])


def random_artifact(tmp_path, input_kind, layers=(6, 5), n_items=9, emb=4, seed=0):
    manifest = Manifest(
        version="t1",
        input_kind=input_kind,
        n_items=n_items,
        layers=layers,
        embedding_dim=emb if input_kind == "embedding" else 0,
    )
    rng = np.random.default_rng(seed)
    weights = {k: rng.normal(scale=0.5, size=s) for k, s in expected_shapes(manifest).items()}
    items = [f"item-{i}" for i in range(n_items)]
    return read_artifact(write_artifact(tmp_path / input_kind, manifest, weights, items))


@pytest.mark.parametrize("input_kind", ["shared", "embedding", "onehot"])
def test_artifact_scorer_is_the_scoring_core(tmp_path, input_kind):
    """ArtifactScorer adapts the core to the evaluation loop: the core's state and scores
    (its parity with torch is tests/test_scoring.py), a reset row back at the start."""
    art = random_artifact(tmp_path, input_kind)
    core = ServingModel.from_artifact(art)
    scorer = ArtifactScorer(art)
    assert isinstance(scorer, SessionScorer)
    seq = torch.tensor([[3, 1], [0, 8], [3, 3]])  # (T, B)
    state = scorer.init_state(2)
    for t, items in enumerate(seq):
        state, scores = scorer.step(state, items)
        want = core.scores(core.run(seq[: t + 1].T.tolist()))
        torch.testing.assert_close(scores, torch.from_numpy(want), rtol=0, atol=0)
        torch.testing.assert_close(scorer.score_rows(state, torch.tensor([1])), scores[1:])
    state = scorer.reset(state, torch.tensor([True, False]))
    assert not state[0].any() and state[1].any()


def test_map_to_vocab_skips_unknown_clicks_and_negatives():
    source = ["a", "b", "c", "d", "e"]
    target = {"b": 0, "c": 1, "e": 2, "a": 3}  # "d" is unknown
    data = make_eval(
        [[0, 3, 1, 2], [3, 3, 4], [2, 4, 3]],
        eval_from=[3, 1, 2],
        negatives=[[1, 3, 4], [0, 0, 0], [3, 3, 1]],
    )
    mapped, counts = map_to_vocab(data, source, target)
    s = mapped.sessions
    seqs = [s.items[s.offsets[k] : s.offsets[k + 1]].tolist() for k in range(3)]
    assert seqs == [[3, 0, 1], [2], [1, 2]]
    # session 0: target "c" stays the only target (position 2 now); session 2 lost its target
    assert mapped.eval_from.tolist() == [2, 1, 2]
    assert counts.unknown_clicks == 4
    assert counts.unknown_targets == 2  # "d" as a target in sessions 1 and 2
    assert mapped.negatives.tolist() == [[0, -1, 2], [3, 3, 3], [-1, -1, 0]]
    assert counts.unknown_negatives == 3
    assert len(s.timestamps) == 6


def test_limit_history_keeps_the_last_clicks_before_the_first_target():
    data = make_eval([[0, 1, 2, 3, 4], [5, 6], [7, 8, 9]], eval_from=[4, 1, 1])
    cut = limit_history(data, 2)
    s = cut.sessions
    seqs = [s.items[s.offsets[k] : s.offsets[k + 1]].tolist() for k in range(3)]
    assert seqs == [[2, 3, 4], [5, 6], [7, 8, 9]]
    assert cut.eval_from.tolist() == [2, 1, 1]
    assert s.timestamps.tolist() == [2000, 3000, 4000, 5000, 6000, 7000, 8000, 9000]
    assert cut.n_targets == data.n_targets
    assert limit_history(data, 0) is data
    assert evaluate_full(IndexScorer(10), cut, ks=(1,), progress=False)["n_examples"] == 4


class StepOnly:
    """Hides a scorer's optional fast paths, so the loop uses step() alone."""

    def __init__(self, scorer):
        self.inner, self.n_items = scorer, scorer.n_items

    def init_state(self, batch_size):
        return self.inner.init_state(batch_size)

    def step(self, state, items):
        return self.inner.step(state, items)

    def reset(self, state, mask):
        return self.inner.reset(state, mask)


@pytest.mark.parametrize("kind", ["shared", "embedding", "onehot"])
def test_gru4rec_scorer_matches_its_exported_artifact(tmp_path, kind):
    from batch_training.model import GRU4Rec

    torch.manual_seed(0)
    model = GRU4Rec(
        25,
        (8, 6),
        embedding=5 if kind == "embedding" else 0,
        constrained_embedding=kind == "shared",
    )
    weights = model.export_weights()
    weights["item_support"] = np.ones(25, np.float32)
    manifest = Manifest(
        version="m",
        input_kind=model.input_kind,
        n_items=25,
        layers=model.layers,
        embedding_dim=model.embedding_dim,
    )
    art = read_artifact(
        write_artifact(tmp_path / kind, manifest, weights, [str(i) for i in range(25)])
    )
    rng = np.random.default_rng(1)
    seqs = [list(rng.integers(0, 25, size=n)) for n in rng.integers(2, 9, size=30)]
    data = make_eval(seqs, eval_from=rng.integers(1, 3, size=30))
    runs = [
        evaluate_full(scorer, data, batch_size=4, progress=False)
        for scorer in (
            GRU4RecScorer(model),
            StepOnly(GRU4RecScorer(model)),
            ArtifactScorer(art),
            StepOnly(ArtifactScorer(art)),
        )
    ]
    assert runs[0]["n_examples"] == data.n_targets
    for other in runs[1:]:
        assert other == pytest.approx(runs[0])
