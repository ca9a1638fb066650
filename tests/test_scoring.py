"""The scoring core: its one parity test with the training model, search and edge cases."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from batch_training.model import GRU4Rec
from schemas.artifact import Artifact, read_artifact
from scoring import ServingModel, pad_ragged
from stream_app.synthetic import write_random_artifact

torch.set_num_threads(1)


def _model(tmp_path, **kw) -> tuple[ServingModel, Artifact]:
    options = kw.pop("options", {})
    artifact = read_artifact(write_random_artifact(tmp_path / "model", **kw))
    return ServingModel.from_artifact(artifact, **options), artifact


def _sessions(n_items: int, n: int, max_len: int, seed: int = 1) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    return [list(rng.integers(0, n_items, rng.integers(1, max_len + 1))) for _ in range(n)]


@pytest.mark.parametrize("kind", ["shared", "onehot"])
def test_recommend_returns_the_exact_top_k(tmp_path, kind):
    model, _ = _model(tmp_path, n_items=200, input_kind=kind)
    sessions = _sessions(200, 16, 5, seed=3)
    state = model.run(sessions)
    top, top_scores = model.recommend(state, 10)
    want = model.scores(state)  # the one scoring formula, every item
    np.testing.assert_allclose(top_scores, np.take_along_axis(want, top, axis=1), atol=1e-4)
    for row in range(len(sessions)):
        assert list(top[row]) == list(np.argsort(-want[row], kind="stable")[:10])
    exhaustive, _ = model.recommend_exhaustive(state, 10)
    np.testing.assert_array_equal(exhaustive, top)


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


def torch_scores_after(torch_model: GRU4Rec, sequence: list[int]) -> np.ndarray:
    """The training model's scores (n_items,) after feeding one session, in eval mode."""
    with torch.no_grad():
        hidden = torch_model.init_hidden(1)
        for item in sequence:
            out, hidden = torch_model.step(torch.tensor([int(item)]), hidden)
        return torch_model.score_all(out)[0].numpy()


@pytest.mark.parametrize(
    "kind,layers",
    [("shared", (24,)), ("embedding", (24,)), ("onehot", (16, 8)), ("embedding", (20, 12))],
)
def test_scores_and_top_k_match_the_training_model(tmp_path, kind, layers):
    """THE parity test: batch_training's GRU4Rec (torch, loaded from the artifact, eval mode)
    and the scoring core give the same scores after every prefix and the same top-K.

    The core steps all sessions as one batch, short ones padded with -1, as the worker does.
    """
    model, artifact = _model(tmp_path, n_items=70, layers=layers, input_kind=kind)
    torch_model = GRU4Rec.from_artifact(artifact)
    sessions = _sessions(70, 8, 6, seed=11)
    padded = pad_ragged(sessions, len(sessions))
    state = model.initial_state(len(sessions))
    for t in range(padded.shape[1]):
        state = model.step(state, padded[:, t])
        for row, session in enumerate(sessions):
            if t < len(session):
                want = torch_scores_after(torch_model, session[: t + 1])
                got = model.scores(state[row : row + 1])[0]
                np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)
    top, _ = model.recommend(state, 10)
    for row, session in enumerate(sessions):
        want = torch.topk(torch.from_numpy(torch_scores_after(torch_model, session)), 10)
        assert top[row].tolist() == want.indices.tolist()


def test_a_model_without_search_index_scores_but_does_not_search(tmp_path):
    """Offline evaluation loads without FAISS (`search_index=False`): the same scores."""
    artifact = read_artifact(write_random_artifact(tmp_path / "m", n_items=40))
    served = ServingModel.from_artifact(artifact)
    scorer = ServingModel.from_artifact(artifact, search_index=False)
    assert scorer.index is None
    sessions = _sessions(40, 5, 4)
    np.testing.assert_array_equal(
        scorer.scores(scorer.run(sessions)), served.scores(served.run(sessions))
    )
    with pytest.raises(RuntimeError, match="without a search index"):
        scorer.recommend(scorer.run(sessions), 5)


@pytest.mark.parametrize("n_items", [30, 500])
def test_exact_search_by_blas_returns_what_faiss_returns(tmp_path, n_items):
    """Exact search by one product and a top-k pass and FAISS's IndexFlatIP agree,
    with seen items left out and empty sessions answered by popularity."""
    artifact = read_artifact(write_random_artifact(tmp_path / "m", n_items=n_items, seed=5))
    blas = ServingModel.from_artifact(artifact, exact_search="blas")
    flat = ServingModel.from_artifact(artifact, exact_search="faiss")
    assert blas.dense and blas.index is None and flat.index is not None and not flat.dense
    sessions = _sessions(n_items, 40, 12, seed=3)
    state = blas.run(sessions)
    state[:3] = 0  # three sessions with no known item: the popularity fallback
    seen = [list(s) for s in sessions]
    for k in (5, 20, n_items + 3):
        for exclude in (None, seen):
            got, got_scores = blas.recommend(state, k, exclude)
            want, want_scores = flat.recommend(state, k, exclude)
            np.testing.assert_array_equal(got, want)
            np.testing.assert_allclose(got_scores, want_scores, atol=1e-5)
            if exclude is not None:
                for row, items in enumerate(exclude):
                    assert not set(got[row].tolist()) & set(items)


def test_unknown_exact_search_is_refused(tmp_path):
    artifact = read_artifact(write_random_artifact(tmp_path / "m", n_items=10))
    with pytest.raises(ValueError, match="exact_search"):
        ServingModel.from_artifact(artifact, exact_search="gpu")


def test_pad_ragged_lays_index_lists_out_as_rows():
    from scoring import pad_ragged

    assert pad_ragged([[3, 1], [], [5]], 3).tolist() == [[3, 1], [-1, -1], [5, -1]]
    assert pad_ragged([[], []], 2).tolist() == [[-1], [-1]]
    with pytest.raises(ValueError, match="exclude has 1 rows, the batch has 2"):
        pad_ragged([[1]], 2)


def test_top_k_selection_equals_a_stable_sort():
    """Best first, ties to the lower index, excluded and -inf columns never returned, -1 /
    -inf where a row has fewer than k columns left."""
    from scoring.topk import top_k

    rng = np.random.default_rng(5)
    for n, k in ((50, 7), (9, 12), (300, 20), (1, 1)):
        scores = rng.integers(0, 6, size=(8, n)).astype(np.float32)  # many ties
        scores[0, : n // 2] = -np.inf
        exclude = np.full((8, 3), -1, dtype=np.int64)
        exclude[1] = [0, n - 1, 0]
        exclude[2, 0] = n // 2
        masked = scores.copy()
        for row, items in enumerate(exclude):
            masked[row, items[items >= 0]] = -np.inf
        got, got_scores = top_k(scores.copy(), k, exclude)
        order = np.argsort(-masked, axis=1, kind="stable")[:, :k]
        for row in range(8):
            want = [int(i) for i in order[row] if np.isfinite(masked[row, i])]
            want += [-1] * (k - len(want))
            assert got[row].tolist() == want, (n, k, row)
            finite = [masked[row, i] for i in want if i >= 0]
            np.testing.assert_array_equal(got_scores[row, : len(finite)], finite)
            assert np.all(got_scores[row, len(finite) :] == -np.inf)


def test_top_k_by_blocks_of_items_equals_one_product():
    """Scoring a block of items at a time gives the top k of the whole product, exclusions
    and ties across blocks included (small integers: every product exact, many ties)."""
    from scoring.topk import item_blocks, top_k, top_k_blocks

    rng = np.random.default_rng(6)
    columns = rng.integers(-3, 4, size=(9, 1000)).astype(np.float32)
    query = rng.integers(-3, 4, size=(12, 9)).astype(np.float32)
    exclude = rng.integers(-1, 1000, size=(12, 30))
    for k in (1, 20, 1000):
        want = top_k(query @ columns, k, exclude)
        got = top_k_blocks(query, item_blocks(columns, 128), k, exclude)
        np.testing.assert_array_equal(got[0], want[0])
        np.testing.assert_array_equal(got[1], want[1])
        for row, items in zip(got[0], exclude, strict=True):
            assert not set(row[row >= 0].tolist()) & set(items.tolist())
