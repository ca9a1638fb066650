"""The hand-written training step computes what autograd computes, where it is used."""

import numpy as np
import pytest
import torch

from batch_training.config import TrainConfig
from batch_training.fast_step import FastStep
from batch_training.losses import loss_function
from batch_training.model import GRU4Rec
from batch_training.optim import coalesce_rows
from batch_training.train import _autograd_step, _EpochContext, _optimizer, train

COVERED = [
    dict(loss="cross-entropy", logq=1.0, final_act="linear"),
    dict(loss="cross-entropy", logq=0.0, final_act="elu"),  # final_act: unused by XE
    dict(loss="bpr-max", bpreg=0.9, final_act="elu", elu_param=1.0),
    dict(loss="bpr-max", bpreg=0.0, final_act="elu", elu_param=0.5),
    dict(loss="bpr-max", bpreg=1.5, final_act="linear"),
]


def config_of(**kw) -> TrainConfig:
    base = dict(
        layers=(12,),
        batch_size=6,
        n_sample=9,
        sample_cache_size=90,
        learning_rate=0.1,
        momentum=0.3,
        dropout_p_embed=0.3,
        dropout_p_hidden=0.2,
        seed=5,
    )
    return TrainConfig(**{**base, **kw})


def a_step(config: TrainConfig, seed: int, lanes: int):
    """A model with random weights (biases too) and one step's inputs, columns and state."""
    gen = torch.Generator().manual_seed(seed)
    n_items = 20
    torch.manual_seed(seed)
    model = GRU4Rec.from_config(n_items, config)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
    inputs = torch.randint(0, n_items, (lanes,), generator=gen)
    # Items repeat between inputs, targets and samples: their gradients must add up.
    columns = torch.randint(0, n_items, (lanes + config.n_sample,), generator=gen)
    log_q = torch.rand(len(columns), generator=gen) * 3
    hidden = [torch.randn(lanes, config.layers[0], generator=gen)]
    return model, inputs, columns, log_q, hidden


def autograd_reference(model, config, inputs, columns, log_q, hidden):
    ctx = _EpochContext(
        config=config,
        device=torch.device("cpu"),
        loss_fn=loss_function(config),
        sampler=None,
        log_support=None,
        use_amp=False,
    )
    optimizer = _optimizer(model, config)
    return _autograd_step(model, optimizer, ctx, inputs, columns, log_q, hidden)


@pytest.mark.parametrize("changes", COVERED)
@pytest.mark.parametrize("lanes", [6, 3])  # 3: a batch that has shrunk below batch_size
def test_gradients_match_autograd(changes, lanes):
    config = config_of(**changes)
    for seed in range(3):
        model, inputs, columns, log_q, hidden = a_step(config, seed, lanes)
        torch.manual_seed(100 + seed)  # the same dropout masks on both paths
        want_loss, want_hidden, want_rows, want_row_grads = autograd_reference(
            model, config, inputs, columns, log_q, hidden
        )
        want = {name: p.grad.clone() for name, p in model.cells.named_parameters()}
        model.zero_grad(set_to_none=True)

        torch.manual_seed(100 + seed)
        got = FastStep(model, config)(inputs, columns, log_q, hidden)

        assert torch.allclose(got.per_lane, want_loss.detach(), rtol=1e-5, atol=1e-6)
        assert torch.allclose(got.hidden[0], want_hidden[0].detach(), rtol=1e-5, atol=1e-6)
        assert torch.equal(got.rows, torch.cat([inputs, columns]))  # as they come
        rows, row_grads = coalesce_rows(got.rows, got.row_grads)
        assert torch.equal(rows, want_rows)
        assert torch.allclose(row_grads, want_row_grads, rtol=1e-4, atol=1e-6)
        for name, p in model.cells.named_parameters():
            assert torch.allclose(p.grad, want[name], rtol=1e-4, atol=1e-6), name


def test_a_wrong_gradient_would_be_caught():
    # The tolerance check above must be able to fail: a BPR-max gradient without its
    # regulariser term differs from autograd's.
    config = config_of(loss="bpr-max", bpreg=0.9, final_act="elu", elu_param=1.0)
    model, inputs, columns, log_q, hidden = a_step(config, 0, 6)
    torch.manual_seed(1)
    _, _, _, want = autograd_reference(model, config, inputs, columns, log_q, hidden)
    step = FastStep(model, config)
    step.bpreg = 0.0
    torch.manual_seed(1)
    got = step(inputs, columns, log_q, hidden)
    assert not torch.allclose(coalesce_rows(got.rows, got.row_grads)[1], want, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize(
    "changes",
    [
        dict(layers=(8, 8)),
        dict(constrained_embedding=False, embedding=6),
        dict(constrained_embedding=False),
        dict(loss="top1-max"),
        dict(optimizer="adam"),
        dict(sparse_updates=False),
        dict(in_batch_negatives=False),
    ],
)
def test_other_configurations_take_the_autograd_step(changes):
    config = config_of(**changes)
    model = GRU4Rec.from_config(20, config)
    assert not FastStep.supports(model, config)
    with pytest.raises(ValueError):
        FastStep(model, config)


@pytest.mark.parametrize("loss", ["cross-entropy", "bpr-max"])
def test_training_runs_match(loss, monkeypatch):
    """Whole runs, seeded: the fast step's weights equal autograd's up to rounding."""
    rng = np.random.default_rng(0)
    lengths = rng.integers(2, 7, size=60)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    items = rng.integers(0, 30, size=offsets[-1]).astype(np.int64)

    class Data:
        pass

    data = Data()
    data.items, data.offsets = items, offsets
    config = config_of(loss=loss, logq=1.0, bpreg=0.5, n_epochs=2, final_act="elu")
    fast = train(data, config, n_items=30, device="cpu", progress=False).model
    monkeypatch.setattr(FastStep, "supports", staticmethod(lambda *a, **k: False))
    slow = train(data, config, n_items=30, device="cpu", progress=False).model
    for (name, a), b in zip(fast.state_dict().items(), slow.state_dict().values(), strict=True):
        assert torch.allclose(a, b, rtol=1e-3, atol=1e-5), name
