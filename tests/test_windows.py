"""History-window mode: the batching, the negatives, the zero-start window GRU, the fold."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence

from batch_training.config import ConfigError, TrainConfig, load_preset
from batch_training.export import export_artifact
from batch_training.train import TrainResult
from batch_training.window_train import WindowGRU4Rec, bpr_loss, softmax_loss, train_windows
from batch_training.windows import PAD, NegativeDrawer, build_windows
from schemas.artifact import read_artifact
from scoring import ServingModel


@dataclass(frozen=True)
class Sessions:
    items: np.ndarray
    offsets: np.ndarray


@dataclass(frozen=True)
class Vocab:
    ids: tuple[str, ...]


def sequences(*seqs: list[int]) -> Sessions:
    offsets = np.concatenate([[0], np.cumsum([len(s) for s in seqs])]).astype(np.int64)
    return Sessions(np.concatenate([np.asarray(s, dtype=np.int64) for s in seqs]), offsets)


def window_config(**changes) -> TrainConfig:
    return load_preset("rechorus").replace(**{"embedding": 8, "layers": (12,), **changes})


# --- batching -----------------------------------------------------------------------------------


def test_every_position_after_the_first_is_one_example_with_its_last_items():
    data = sequences([10, 11, 12], [20, 21, 22, 23, 24], [30])
    w = build_windows(data.items, data.offsets, history_max=3)
    P = PAD
    assert w.items.tolist() == [
        [10, P, P],  # -> 11
        [10, 11, P],  # -> 12
        [20, P, P],  # -> 21
        [20, 21, P],  # -> 22
        [20, 21, 22],  # -> 23
        [21, 22, 23],  # -> 24: only the last 3 items
    ]
    assert w.lengths.tolist() == [1, 2, 1, 2, 3, 3]
    assert w.targets.tolist() == [11, 12, 21, 22, 23, 24]
    assert w.users.tolist() == [0, 0, 1, 1, 1, 1]  # a one-item sequence gives no example
    assert len(w) == 6


def test_a_window_never_reaches_into_the_previous_sequence():
    data = sequences([1, 2], [3, 4, 5])
    w = build_windows(data.items, data.offsets, history_max=20)
    assert w.items.shape == (3, 20)
    assert w.items[1, :2].tolist() == [3, PAD]
    assert w.items[2, :3].tolist() == [3, 4, PAD]


def test_negatives_are_never_among_the_users_items_and_cover_the_rest():
    n_items = 12
    data = sequences([0, 1, 2, 3, 4, 5, 6, 7, 8, 9], [9, 10, 11], [5])
    drawer = NegativeDrawer(data.items, data.offsets, n_items)
    users = np.array([0, 1, 2] * 2000)
    neg = drawer.draw(users, 2, np.random.default_rng(0))
    assert neg.shape == (6000, 2)
    for user, allowed in ((0, {10, 11}), (1, set(range(9))), (2, set(range(12)) - {5})):
        drawn = set(neg[users == user].ravel().tolist())
        assert drawn == allowed  # none of the user's items, every other item drawn
    # uniform among the allowed items: user 0 has two, about half each
    share = np.mean(neg[users == 0] == 10)
    assert 0.45 < share < 0.55


def test_negatives_are_redrawn_from_the_generator_each_time():
    data = sequences([0, 1], [2, 3])
    drawer = NegativeDrawer(data.items, data.offsets, 50)
    rng = np.random.default_rng(0)
    users = np.arange(2).repeat(100)
    assert not np.array_equal(drawer.draw(users, 1, rng), drawer.draw(users, 1, rng))


def test_a_user_who_clicked_every_item_is_refused():
    data = sequences([0, 1, 2], [0])
    with pytest.raises(ValueError, match="clicked all 3 items"):
        NegativeDrawer(data.items, data.offsets, 3)


# --- the window GRU ------------------------------------------------------------------------------


def gru_from_zero(model: WindowGRU4Rec, items: list[int]) -> torch.Tensor:
    """The GRU equations written out, one item at a time from a zero state."""
    cell = torch.nn.GRUCell(model.rnn.input_size, model.rnn.hidden_size)
    cell.load_state_dict({k.removesuffix("_l0"): v for k, v in model.rnn.state_dict().items()})
    h = torch.zeros(1, model.rnn.hidden_size)
    for item in items:
        h = cell(model.item_embedding.weight[item][None], h)
    return h[0]


def test_each_window_starts_from_a_zero_state_and_ignores_its_padding():
    torch.manual_seed(0)
    model = WindowGRU4Rec(30, 8, 12)
    data = sequences([3, 4, 5, 6], [7, 8], [9, 10, 11])
    w = build_windows(data.items, data.offsets, history_max=3)
    windows, lengths = torch.from_numpy(w.items), torch.from_numpy(w.lengths)
    with torch.no_grad():
        batch = model.encode(windows, lengths)
        expected = torch.stack(
            [
                gru_from_zero(model, row[:n].tolist())
                for row, n in zip(w.items, w.lengths, strict=True)
            ]
        )
        torch.testing.assert_close(batch, expected, atol=1e-6, rtol=1e-5)
        # what sits in the padding slots changes nothing
        noisy = torch.where(windows == PAD, torch.full_like(windows, 29), windows)
        torch.testing.assert_close(model.encode(noisy, lengths), batch, atol=0, rtol=0)
        full = lengths == 3  # a batch of full windows only
        torch.testing.assert_close(model.encode(windows[full], lengths[full]), expected[full])
    assert not torch.allclose(batch[0], batch[1])  # the windows differ, so do their states


def test_encode_has_the_gradients_of_packed_windows():
    """Reading each row's state at its last item gives packing's gradients too: the padding
    after the items passes no gradient back into them."""
    torch.manual_seed(1)
    model = WindowGRU4Rec(30, 8, 12)
    windows = torch.randint(0, 30, (6, 5))
    lengths = torch.tensor([5, 2, 5, 1, 4, 3])
    windows[torch.arange(5)[None, :] >= lengths[:, None]] = PAD
    weights = torch.randn(6, 12)

    def grads(encode) -> list[torch.Tensor]:
        model.zero_grad()
        (encode() * weights).sum().backward()
        return [p.grad.clone() for p in model.parameters() if p.grad is not None]

    def packed() -> torch.Tensor:
        x = model.item_embedding(windows.clamp(min=0))
        sequences = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
        return model.rnn(sequences)[1][-1]

    for got, want in zip(grads(lambda: model.encode(windows, lengths)), grads(packed), strict=True):
        torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-5)


def test_bpr_loss_is_minus_log_sigmoid_of_the_margin():
    scores = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    expected = -torch.log(torch.sigmoid(torch.tensor([2.0, -1.0])))
    torch.testing.assert_close(bpr_loss(scores), expected)


def test_the_softmax_loss_over_every_item_or_over_sampled_columns_is_minus_log_softmax():
    torch.manual_seed(2)
    model = WindowGRU4Rec(15, 8, 12)
    windows = torch.tensor([[3, 4, PAD], [5, 6, 7]])
    lengths, targets = torch.tensor([2, 3]), torch.tensor([9, 0])
    with torch.no_grad():
        every = model(windows, lengths)  # (2, 15): every item, without naming them
        named = model(windows, lengths, torch.arange(15).expand(2, 15))
        torch.testing.assert_close(every, named)
        expected = -torch.log_softmax(every, dim=1)[torch.arange(2), targets]
        torch.testing.assert_close(softmax_loss(every, targets), expected)
        # sampled: the target in column 0, then its negatives; only those columns compete
        columns = torch.tensor([[9, 1, 2], [0, 14, 3]])
        sampled = model(windows, lengths, columns)
        expected = -torch.log_softmax(every.gather(1, columns), dim=1)[:, 0]
        first = torch.zeros(2, dtype=torch.long)
        torch.testing.assert_close(softmax_loss(sampled, first), expected)


def test_the_folded_artifact_serves_the_scores_of_the_trained_window_model(tmp_path):
    torch.manual_seed(1)
    n_items = 25
    model = WindowGRU4Rec(n_items, 8, 12)
    with torch.no_grad():  # give the projection a visible bias
        model.out.bias.normal_(0.0, 0.5)
    folded = model.to_gru4rec()
    result = TrainResult(folded, [{"epoch": 1}], 1, window_config())
    vocab = Vocab(tuple(f"item{i}" for i in range(n_items)))
    path = export_artifact(
        result,
        vocab,
        tmp_path / "model",
        version="w1",
        item_support=np.ones(n_items),
        training_data={},
        metrics={},
    )
    serving = ServingModel.from_artifact(read_artifact(path), search_index=False)
    history = [[3, 7, 7, 1], [20], [0, 5, 9, 14, 2, 2, 11]]
    state = serving.run(history)  # one GRU step per click from a zero state
    windows = torch.full((3, 7), PAD)
    for i, seq in enumerate(history):
        windows[i, : len(seq)] = torch.tensor(seq)
    all_items = torch.arange(n_items).expand(3, n_items)
    with torch.no_grad():
        trained = model(windows, torch.tensor([len(s) for s in history]), all_items)
    np.testing.assert_allclose(serving.scores(state), trained.numpy(), atol=1e-5, rtol=1e-4)


# --- config and loop ----------------------------------------------------------------------------


def test_window_mode_refuses_what_it_does_not_implement():
    with pytest.raises(ConfigError, match="loss"):
        window_config(loss="bpr-max")
    with pytest.raises(ConfigError, match="n_sample"):
        window_config(n_sample=0)  # BPR needs a negative
    assert window_config(loss="cross-entropy", n_sample=0).n_sample == 0  # every item
    with pytest.raises(ConfigError, match="layers"):
        window_config(layers=(12, 12))
    with pytest.raises(ConfigError, match="max_history"):
        window_config(max_history=0)
    with pytest.raises(ConfigError, match="mode"):
        window_config(mode="lanes")
    assert TrainConfig().mode == "session"  # the default stays session-parallel


@pytest.mark.parametrize(
    ("loss", "n_sample"), [("bpr", 1), ("cross-entropy", 3), ("cross-entropy", 0)]
)
def test_training_learns_a_cycle_and_keeps_the_best_validated_epoch(loss, n_sample):
    n_items = 20
    rng = np.random.default_rng(0)
    starts = rng.integers(0, n_items, 200)
    data = sequences(
        *[[(s + k) % n_items for k in range(int(rng.integers(4, 12)))] for s in starts]
    )
    config = window_config(n_epochs=5, patience=2, max_history=5, learning_rate=0.02, batch_size=32)
    config = config.replace(loss=loss, n_sample=n_sample)
    calls: list[float] = []

    def validate(model) -> float:
        # after item i comes i + 1: the share of other items scored below i + 1 (an AUC)
        with torch.no_grad():
            out, _ = model.step(torch.arange(n_items), model.init_hidden(n_items))
            scores = model.score_all(out)
            nxt = (torch.arange(n_items) + 1) % n_items
            below = (scores < scores.gather(1, nxt[:, None])).sum(1) / (n_items - 1)
        calls.append(float(below.float().mean()))
        return calls[-1]

    result = train_windows(data, config, n_items=n_items, validate=validate, progress=False)
    assert [h["epoch"] for h in result.history] == list(range(1, len(calls) + 1))
    best = max(calls)
    assert best >= 0.9 and calls[0] < best
    assert result.best_epoch == 1 + int(np.argmax(calls))
    assert validate(result.model) == best  # the returned model is the best epoch's
    assert result.history[0]["loss"] > 5 * result.history[-1]["loss"]
