"""Most-popular and item-kNN on tiny constructed sessions."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from batch_training.baselines import ItemKNN, MostPopular, item_neighbours
from batch_training.evaluate import SessionScorer, evaluate_full
from tests.eval_util import make_eval, make_sessions

TRAIN = make_sessions([[0, 1], [1, 0, 1], [2, 3], [3, 2], [2, 3, 4], [4, 4, 4, 4], [0, 5]])
N_ITEMS = 6


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Tiny tensors: a second thread only adds contention on a shared machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_most_popular_scores_by_training_clicks():
    pop = MostPopular.fit(TRAIN, N_ITEMS)
    assert isinstance(pop, SessionScorer)
    state = pop.init_state(2)
    _, scores = pop.step(state, torch.tensor([0, 3]))
    assert scores.shape == (2, N_ITEMS)
    assert scores[0].tolist() == [3, 3, 3, 3, 5, 1]  # click counts, repeats included
    got = evaluate_full(pop, make_eval([[1, 4], [4, 5], [2, 0]]), ks=(1, 5), progress=False)
    # 4 is the most clicked (rank 1); 5 is last (rank 6); 0 ties with 1, 2, 3 (rank 5)
    assert got["recall@1"] == pytest.approx(1 / 3)
    assert got["recall@5"] == pytest.approx(2 / 3)
    assert got["mrr@5"] == pytest.approx((1 + 1 / 5) / 3)


def test_item_neighbours_similarity_hand_computed():
    neighbours, sims = item_neighbours(TRAIN, N_ITEMS, n_neighbours=3, lmbd=0.0, alpha=0.5)
    # sessions holding: 0 -> {s0, s1, s6} (3), 1 -> {s0, s1} (2), 5 -> {s6} (1)
    assert neighbours[0, 0] == 1
    assert sims[0, 0] == pytest.approx(2 / math.sqrt(3 * 2))
    assert neighbours[0, 1] == 5
    assert sims[0, 1] == pytest.approx(1 / math.sqrt(3 * 1))
    assert sims[0, 2] == 0.0  # 0 co-occurs with nothing else; never with itself
    # 2 -> {s2, s3, s4}, 3 -> {s2, s3, s4}, 4 -> {s4, s5}
    assert neighbours[2, :2].tolist() == [3, 4]
    assert sims[2, :2] == pytest.approx([3 / 3, 1 / math.sqrt(3 * 2)])


def test_lambda_damps_rare_items():
    _, plain = item_neighbours(TRAIN, N_ITEMS, n_neighbours=2, lmbd=0.0)
    neighbours, damped = item_neighbours(TRAIN, N_ITEMS, n_neighbours=2, lmbd=20.0)
    assert damped[0, 0] == pytest.approx(2 / (math.sqrt(6) + 20))
    # the neighbour seen in one session loses relatively more than the one seen in two
    assert damped[0, 1] / plain[0, 1] < damped[0, 0] / plain[0, 0]
    assert neighbours[0].tolist() == [1, 5]


def test_item_knn_recommends_the_co_occurring_item():
    knn = ItemKNN.fit(TRAIN, N_ITEMS, n_neighbours=3)
    assert isinstance(knn, SessionScorer)
    _, scores = knn.step(knn.init_state(3), torch.tensor([2, 5, 1]))
    assert scores[0].argmax().item() == 3
    assert scores[1].argmax().item() == 0
    assert scores[2].argmax().item() == 0
    # non-neighbours sit below every neighbour, ordered by popularity
    row = scores[0]
    assert row[4] > 0 > row[1] and row[1] == row[0] > row[5]
    got = evaluate_full(knn, make_eval([[2, 3], [5, 0], [1, 0]]), ks=(1,), progress=False)
    assert got["recall@1"] == 1.0
    pop = evaluate_full(
        MostPopular.fit(TRAIN, N_ITEMS), make_eval([[2, 3], [5, 0], [1, 0]]), ks=(1,)
    )
    assert pop["recall@1"] == 0.0


def test_neighbour_blocks_do_not_change_the_result():
    rng = np.random.default_rng(0)
    seqs = [list(rng.integers(0, 50, size=n)) for n in rng.integers(2, 10, size=300)]
    train = make_sessions(seqs)
    a = item_neighbours(train, 50, n_neighbours=10, block=7)
    b = item_neighbours(train, 50, n_neighbours=10, block=1024)
    np.testing.assert_allclose(a[1], b[1], rtol=1e-6)
    # same similarity per slot; indices may differ only among exact ties
    dense = np.zeros((50, 50), np.float32)
    np.put_along_axis(dense, a[0], a[1], axis=1)
    dense_b = np.zeros((50, 50), np.float32)
    np.put_along_axis(dense_b, b[0], b[1], axis=1)
    assert np.all((dense == dense_b) | (dense == 0) | (dense_b == 0))
