"""The serving core against a torch reference, and its edge cases."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from schemas.artifact import Artifact, read_artifact
from stream_app.inference import ServingModel, pad_ragged
from stream_app.synthetic import write_random_artifact

torch.set_num_threads(1)


class TorchReference:
    """GRU4Rec's forward pass built from torch.nn.GRUCell and the artifact's weights."""

    def __init__(self, artifact: Artifact) -> None:
        m, w = artifact.manifest, artifact.weights
        self.kind = m.input_kind
        self.cells = []
        in_dim = {"onehot": m.n_items, "embedding": m.embedding_dim}.get(m.input_kind)
        in_dim = m.layers[-1] if in_dim is None else in_dim
        for layer, hidden in enumerate(m.layers):
            cell = torch.nn.GRUCell(in_dim, hidden)
            with torch.no_grad():
                for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
                    getattr(cell, name).copy_(torch.from_numpy(w[f"gru.{layer}.{name}"]))
            self.cells.append(cell)
            in_dim = hidden
        self.wy = torch.from_numpy(w["output_weight"])
        self.by = torch.from_numpy(w["output_bias"])
        self.emb = torch.from_numpy(w["item_embedding"]) if self.kind == "embedding" else None
        self.n_items = m.n_items

    @torch.no_grad()
    def scores_after(self, sequence: list[int]) -> np.ndarray:
        hidden = [torch.zeros(1, c.hidden_size) for c in self.cells]
        for item in sequence:
            idx = torch.tensor([item])
            if self.kind == "onehot":
                x = torch.nn.functional.one_hot(idx, self.n_items).float()
            elif self.kind == "shared":
                x = self.wy[idx]
            else:
                x = self.emb[idx]
            for layer, cell in enumerate(self.cells):
                hidden[layer] = cell(x, hidden[layer])
                x = hidden[layer]
        return (hidden[-1] @ self.wy.T + self.by)[0].numpy()


def _model(tmp_path, **kw) -> tuple[ServingModel, Artifact]:
    options = kw.pop("options", {})
    artifact = read_artifact(write_random_artifact(tmp_path / "model", **kw))
    return ServingModel.from_artifact(artifact, **options), artifact


def _sessions(n_items: int, n: int, max_len: int, seed: int = 1) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    return [list(rng.integers(0, n_items, rng.integers(1, max_len + 1))) for _ in range(n)]


@pytest.mark.parametrize(
    "kind,layers",
    [("shared", (24,)), ("embedding", (24,)), ("onehot", (24,)), ("embedding", (20, 12))],
)
def test_scores_match_torch_for_every_prefix(tmp_path, kind, layers):
    model, artifact = _model(tmp_path, n_items=60, layers=layers, input_kind=kind)
    reference = TorchReference(artifact)
    sessions = _sessions(60, 8, 6)
    # Step all sessions together, as the worker does, padding short ones with -1.
    padded = pad_ragged(sessions, len(sessions))
    state = model.initial_state(len(sessions))
    for t in range(padded.shape[1]):
        state = model.step(state, padded[:, t])
        for row, session in enumerate(sessions):
            if t < len(session):
                want = reference.scores_after(session[: t + 1])
                got = model.scores(state[row : row + 1])[0]
                np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)


@pytest.mark.parametrize("kind", ["shared", "onehot"])
def test_recommend_returns_the_exact_top_k(tmp_path, kind):
    model, artifact = _model(tmp_path, n_items=200, input_kind=kind)
    reference = TorchReference(artifact)
    sessions = _sessions(200, 16, 5, seed=3)
    state = model.run(sessions)
    top, top_scores = model.recommend(state, 10)
    for row, session in enumerate(sessions):
        want = reference.scores_after(session)
        np.testing.assert_allclose(top_scores[row], want[top[row]], atol=1e-4)
        # The k-th best torch score bounds every returned score from below.
        assert top_scores[row][-1] >= np.sort(want)[-10] - 1e-4
        assert list(top[row]) == list(np.argsort(-want, kind="stable")[:10])


def test_gate_table_and_direct_input_agree(tmp_path):
    artifact = read_artifact(write_random_artifact(tmp_path / "m", n_items=80, layers=(16, 16)))
    with_table = ServingModel.from_artifact(artifact)
    without = ServingModel.from_artifact(artifact, gate_table_max_bytes=0)
    assert with_table._gate_table is not None and without._gate_table is None
    sessions = _sessions(80, 10, 7)
    np.testing.assert_allclose(with_table.run(sessions), without.run(sessions), atol=1e-5)


def test_unknown_items_leave_the_state_unchanged(tmp_path):
    model, _ = _model(tmp_path, n_items=50)
    idx = model.index_of(["i3", "nope", "i7", ""])
    assert list(idx) == [3, -1, 7, -1]
    state = model.step(model.initial_state(1), [3])
    after_unknown = model.step(state, [-1])
    np.testing.assert_array_equal(after_unknown, state)
    # A session "3, unknown, 7" is the session "3, 7".
    np.testing.assert_array_equal(model.run([[3, -1, 7]]), model.run([[3, 7]]))


def test_step_does_not_modify_its_input(tmp_path):
    model, _ = _model(tmp_path, n_items=50)
    state = model.step(model.initial_state(2), [1, 2])
    before = state.copy()
    model.step(state, [4, -1])
    np.testing.assert_array_equal(state, before)


def test_exclusion_drops_seen_items_and_keeps_k(tmp_path):
    model, _ = _model(tmp_path, n_items=100)
    state = model.run([[5, 6]])
    top, _ = model.recommend(state, 10)
    seen = [int(top[0, 0]), int(top[0, 3]), 5, 6]
    filtered, filtered_scores = model.recommend(state, 10, exclude=[seen])
    assert not set(seen) & set(filtered[0].tolist())
    assert (filtered[0] >= 0).all() and len(filtered[0]) == 10
    # What is left keeps the model's order: the unfiltered ranking minus the seen items.
    full = np.argsort(-model.scores(state)[0], kind="stable")
    assert filtered[0].tolist() == [i for i in full.tolist() if i not in seen][:10]
    assert np.all(np.diff(filtered_scores[0]) <= 1e-6)


def test_popularity_fallback_for_sessions_without_known_items(tmp_path):
    model, artifact = _model(tmp_path, n_items=100)
    support = artifact.weights["item_support"]
    state = model.run([[-1, -1], [4]])
    assert list(model.empty_rows(state)) == [True, False]
    top, top_scores = model.recommend(state, 5, exclude=[[int(np.argmax(support))], []])
    popular = [i for i in np.argsort(-support, kind="stable") if i != np.argmax(support)]
    assert top[0].tolist() == popular[:5]
    np.testing.assert_allclose(top_scores[0], support[top[0]])
    # The other row is answered by the model, not by popularity.
    assert top[1].tolist() == np.argsort(-model.scores(state[1:])[0], kind="stable")[:5].tolist()


def test_small_catalogue_pads_with_minus_one(tmp_path):
    model, _ = _model(tmp_path, n_items=6)
    top, scores = model.recommend(model.run([[0, 1]]), 5, exclude=[[0, 1, 2]])
    assert sorted(top[0][:3].tolist()) == [3, 4, 5]
    assert top[0][3:].tolist() == [-1, -1]
    assert np.isneginf(scores[0][3:]).all()


def test_hnsw_path_has_high_recall_against_exact(tmp_path):
    artifact = read_artifact(write_random_artifact(tmp_path / "m", n_items=3000, layers=(32,)))
    exact = ServingModel.from_artifact(artifact)
    approx = ServingModel.from_artifact(artifact, exact_max_items=1000, hnsw_ef_search=200)
    assert exact.exact and not approx.exact
    state = exact.run(_sessions(3000, 64, 5, seed=7))
    want, _ = exact.recommend(state, 20)
    got, got_scores = approx.recommend(state, 20)
    recall = np.mean([len(set(a) & set(b)) / 20 for a, b in zip(want, got, strict=True)])
    assert recall >= 0.9, recall
    # Whatever HNSW returns is scored exactly.
    exact_scores = exact.scores(state)
    np.testing.assert_allclose(got_scores, np.take_along_axis(exact_scores, got, axis=1), atol=1e-4)


def test_unknown_options_are_refused(tmp_path):
    artifact = read_artifact(write_random_artifact(tmp_path / "m", n_items=10))
    with pytest.raises(TypeError):
        ServingModel.from_artifact(artifact, exact_max_itemz=5)


@pytest.mark.parametrize(
    "kind,layers", [("shared", (24,)), ("embedding", (20, 12)), ("onehot", (16, 8))]
)
def test_scores_match_the_training_model(tmp_path, kind, layers):
    """Parity with batch_training's GRU4Rec loaded from the same artifact (eval mode)."""
    from batch_training.model import GRU4Rec

    model, artifact = _model(tmp_path, n_items=70, layers=layers, input_kind=kind)
    torch_model = GRU4Rec.from_artifact(artifact)
    sessions = _sessions(70, 6, 5, seed=11)
    padded = pad_ragged(sessions, len(sessions))
    state = model.initial_state(len(sessions))
    with torch.no_grad():
        for session in sessions:
            hidden = torch_model.init_hidden(1)
            for t, item in enumerate(session):
                out, hidden = torch_model.step(torch.tensor([item]), hidden)
                want = torch_model.score_all(out)[0].numpy()
                prefix = model.run([session[: t + 1]])
                np.testing.assert_allclose(model.scores(prefix)[0], want, atol=1e-4, rtol=0)
    for t in range(padded.shape[1]):
        state = model.step(state, padded[:, t])
    top, _ = model.recommend(state, 10)
    with torch.no_grad():
        for row, session in enumerate(sessions):
            hidden = torch_model.init_hidden(1)
            for item in session:
                out, hidden = torch_model.step(torch.tensor([item]), hidden)
            want = torch.topk(torch_model.score_all(out)[0], 10).indices.tolist()
            assert top[row].tolist() == want
