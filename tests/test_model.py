"""The GRU4Rec module: input modes, initialisation, GRUCell conventions, sparse gradients."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from batch_training.config import (
    ConfigError,
    TrainConfig,
    apply_overrides,
    list_presets,
    load_preset,
    read_preset,
)
from batch_training.model import GRU4Rec

N_ITEMS = 30

MODES = {
    "shared": dict(constrained_embedding=True),
    "embedding": dict(constrained_embedding=False, embedding=6),
    "onehot": dict(constrained_embedding=False, embedding=0),
}


def make(mode: str, layers=(8,), **kw) -> GRU4Rec:
    torch.manual_seed(0)
    return GRU4Rec(N_ITEMS, layers, **MODES[mode], **kw)


@pytest.mark.parametrize("mode", MODES)
def test_step_shapes_and_input_kind(mode):
    model = make(mode, layers=(8, 5)).eval()
    assert model.input_kind == mode
    hidden = model.init_hidden(4)
    assert [tuple(h.shape) for h in hidden] == [(4, 8), (4, 5)]
    assert all(torch.count_nonzero(h) == 0 for h in hidden)
    output, new_hidden = model.step(torch.tensor([0, 3, 29, 3]), hidden)
    assert output.shape == (4, 5)
    assert torch.equal(output, new_hidden[-1])
    assert model.score_all(output).shape == (4, N_ITEMS)
    # Same item from the same state gives the same output (lanes 1 and 3).
    assert torch.allclose(output[1], output[3])


def test_initialisation_ranges_follow_the_authors():
    model = make("shared", layers=(8,))
    cell = model.cells[0]
    sigma_w = math.sqrt(6 / (N_ITEMS + 8))
    sigma_gate = math.sqrt(6 / (8 + 8))  # each gate block from its own (in, H)
    assert model.output_weight.abs().max() <= sigma_w
    assert model.output_weight.abs().max() > 0.8 * sigma_w
    assert cell.weight_ih.abs().max() <= sigma_gate
    assert cell.weight_hh.abs().max() <= sigma_gate
    for bias in (cell.bias_ih, cell.bias_hh, model.output_bias):
        assert torch.count_nonzero(bias) == 0
    onehot = make("onehot", layers=(8,))
    assert onehot.onehot_weight_ih.shape == (N_ITEMS, 24)
    assert onehot.onehot_weight_ih.abs().max() <= math.sqrt(6 / (N_ITEMS + 8))


def test_onehot_lookup_equals_a_grucell_on_one_hot_vectors():
    model = make("onehot", layers=(8,)).eval()
    cell = torch.nn.GRUCell(N_ITEMS, 8)
    with torch.no_grad():
        cell.weight_ih.copy_(model.onehot_weight_ih.t())
        cell.weight_hh.copy_(model.onehot_weight_hh)
        cell.bias_ih.copy_(torch.randn(24))
        cell.bias_hh.copy_(torch.randn(24))
        model.onehot_bias_ih.copy_(cell.bias_ih)
        model.onehot_bias_hh.copy_(cell.bias_hh)
    items = torch.tensor([1, 7, 7, 29])
    h = torch.randn(4, 8)
    out, _ = model.step(items, [h])
    expected = cell(F.one_hot(items, N_ITEMS).float(), h)
    torch.testing.assert_close(out, expected)


def test_shared_mode_reads_the_output_weights_as_input():
    model = make("shared", layers=(8,)).eval()
    items = torch.tensor([4, 9])
    h = model.init_hidden(2)
    out, _ = model.step(items, h)
    expected = model.cells[0](model.output_weight[items], h[0])
    torch.testing.assert_close(out, expected)


def test_score_items_equals_the_matching_columns_of_score_all():
    model = make("embedding", layers=(8,)).eval()
    with torch.no_grad():
        model.output_bias.normal_()
    out, _ = model.step(torch.tensor([1, 2, 3]), model.init_hidden(3))
    cols = torch.tensor([5, 0, 29, 5])
    torch.testing.assert_close(model.score_items(out, cols), model.score_all(out)[:, cols])


def test_dropout_only_in_training_and_carried_in_the_state():
    model = make("shared", layers=(16,), dropout_p_embed=0.5, dropout_p_hidden=0.5)
    items = torch.tensor([1, 2, 3, 4])
    model.eval()
    a, _ = model.step(items, model.init_hidden(4))
    b, _ = model.step(items, model.init_hidden(4))
    assert torch.equal(a, b)
    model.train()
    out, hidden = model.step(items, model.init_hidden(4))
    assert torch.equal(out, hidden[0])  # the dropped-out output is the next state
    assert (out == 0).float().mean() > 0.2


@pytest.mark.parametrize("mode", MODES)
def test_training_gradients_touch_only_the_rows_of_the_step(mode):
    model = make(mode, layers=(8,)).train()
    items, cols = torch.tensor([2, 5]), torch.tensor([5, 11, 17])
    out, _ = model.step(items, model.init_hidden(2))
    model.score_items(out, cols).sum().backward()
    grad = model.output_weight.grad
    assert grad.is_sparse
    touched = set(grad.coalesce().indices()[0].tolist())
    assert touched == ({2, 5, 11, 17} if mode == "shared" else {5, 11, 17})
    if mode == "onehot":
        assert set(model.onehot_weight_ih.grad.coalesce().indices()[0].tolist()) == {2, 5}
    if mode == "embedding":
        assert set(model.item_embedding.grad.coalesce().indices()[0].tolist()) == {2, 5}


def test_dense_gradients_for_adam_and_for_the_dense_baseline():
    assert GRU4Rec.from_config(N_ITEMS, TrainConfig()).sparse_grad
    for config in (TrainConfig(optimizer="adam"), TrainConfig(sparse_updates=False)):
        model = GRU4Rec.from_config(N_ITEMS, config).train()
        out, _ = model.step(torch.tensor([1]), model.init_hidden(1))
        model.score_items(out, torch.tensor([3])).sum().backward()
        assert not model.output_weight.grad.is_sparse


def test_config_checks_keys_types_and_values():
    with pytest.raises(ConfigError, match="unknown keys"):
        TrainConfig.from_dict({"lr": 0.1})
    with pytest.raises(ConfigError, match="expected int"):
        TrainConfig.from_dict({"batch_size": "64"})
    with pytest.raises(ConfigError, match="loss"):
        TrainConfig(loss="mse")
    with pytest.raises(ConfigError, match="weight_decay"):
        TrainConfig(weight_decay=1e-4)  # Adagrad runs without L2, as the authors'
    with pytest.raises(ConfigError, match="in_batch_negatives"):
        TrainConfig(in_batch_negatives=False, n_sample=0)
    config = TrainConfig().replace(layers=[32, 16], learning_rate=1)
    assert config.layers == (32, 16) and config.learning_rate == 1
    assert TrainConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ConfigError, match="unknown"):
        config.replace(hidden=3)


def test_overrides_from_a_command_line():
    config = apply_overrides(
        TrainConfig(), ["layers=256,128", "loss=bpr-max", "n-epochs=2", "logq=1"]
    )
    assert config.layers == (256, 128) and config.loss == "bpr-max"
    assert config.n_epochs == 2 and config.logq == 1.0
    with pytest.raises(ConfigError, match="unknown key"):
        apply_overrides(TrainConfig(), ["hidden=3"])
    with pytest.raises(ConfigError, match="expected bool"):
        apply_overrides(TrainConfig(), ["constrained_embedding=yes"])


def test_presets_load_and_carry_their_published_values():
    assert {"diginetica-bprmax", "diginetica-xe", "quick", "rechorus"} <= set(list_presets())
    for name in list_presets():
        assert read_preset(name)["source"]
        load_preset(name)
    bprmax = load_preset("diginetica-bprmax")
    assert (bprmax.loss, bprmax.layers, bprmax.batch_size) == ("bpr-max", (512,), 128)
    assert (bprmax.dropout_p_embed, bprmax.dropout_p_hidden) == (0.5, 0.3)
    assert (bprmax.learning_rate, bprmax.momentum, bprmax.n_sample) == (0.05, 0.15, 2048)
    assert (bprmax.sample_alpha, bprmax.bpreg, bprmax.elu_param, bprmax.logq) == (
        0.3,
        0.9,
        1.0,
        0.0,
    )
    rechorus = load_preset("rechorus")
    assert rechorus.input_kind == "embedding" and rechorus.embedding == 64
    assert rechorus.optimizer == "adam" and rechorus.weight_decay == 1e-6
    assert load_preset("quick", n_epochs=1).n_epochs == 1
    with pytest.raises(ConfigError, match="no preset"):
        load_preset("nope")


def test_load_weights_refuses_wrong_shapes():
    model = make("shared", layers=(8,))
    weights = model.export_weights()
    weights["gru.0.weight_hh"] = np.zeros((24, 7), dtype=np.float32)
    with pytest.raises(ValueError, match="gru.0.weight_hh"):
        make("shared", layers=(8,)).load_weights(weights)
