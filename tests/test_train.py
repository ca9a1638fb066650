"""Session-parallel training: the lane iterator, hidden resets, the optimiser, the loop."""

from dataclasses import dataclass

import numpy as np
import pytest
import torch

from batch_training.config import TrainConfig, load_preset
from batch_training.curves import plot_history
from batch_training.model import GRU4Rec
from batch_training.optim import AdagradMomentum, coalesce_rows
from batch_training.train import (
    advance_lanes,
    resolve_device,
    session_bounds,
    session_parallel_batches,
    train,
)


@dataclass(frozen=True)
class Sessions:
    items: np.ndarray
    offsets: np.ndarray


def sessions_of(lengths: list[int], first_item: int = 0) -> Sessions:
    """Session s holds consecutive item ids, so every click is identifiable."""
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    return Sessions(np.arange(first_item, first_item + offsets[-1], dtype=np.int64), offsets)


def cyclic_sessions(n_sessions: int, n_items: int, seed: int = 0) -> Sessions:
    """A learnable pattern: after item i comes item i + 1 (mod n_items)."""
    rng = np.random.default_rng(seed)
    items, offsets = [], [0]
    for _ in range(n_sessions):
        start, length = rng.integers(0, n_items), rng.integers(2, 9)
        items += [(start + k) % n_items for k in range(length)]
        offsets.append(len(items))
    return Sessions(np.array(items, dtype=np.int64), np.array(offsets, dtype=np.int64))


def tiny_config(**kw) -> TrainConfig:
    base = dict(
        layers=(16,),
        batch_size=8,
        n_sample=8,
        sample_cache_size=1024,
        n_epochs=2,
        learning_rate=0.1,
        momentum=0.2,
        seed=3,
    )
    return TrainConfig(**{**base, **kw})


# --- the iterator ----------------------------------------------------------------------------


def test_session_parallel_walk_by_hand():
    # Sessions A=[0,1,2], B=[3,4], C=[5] (no target: skipped), D=[6,7,8,9], E=[10,11].
    data = sessions_of([3, 2, 1, 4, 2])
    starts, ends = session_bounds(data.offsets)
    assert starts.tolist() == [0, 3, 6, 10] and ends.tolist() == [3, 5, 10, 12]
    steps = list(session_parallel_batches(data.items, starts, ends, batch_size=2))
    got = [
        (s.inputs.tolist(), s.targets.tolist(), s.reset.tolist(), s.keep, s.sessions.tolist())
        for s in steps
    ]
    assert got[0] == ([0, 3], [1, 4], [True, True], None, [0, 1])
    assert got[1] == ([1, 6], [2, 7], [False, True], None, [0, 2])  # B ended: D takes lane 1
    assert got[2] == ([10, 7], [11, 8], [True, False], None, [3, 2])  # A ended: E takes lane 0
    # E ends and no session is left: lane 0 is dropped, the batch shrinks to lane 1.
    assert got[3][:3] == ([8], [9], [False]) and got[3][3].tolist() == [1]
    assert len(steps) == 4


def test_every_click_after_the_first_is_a_target_exactly_once():
    data = cyclic_sessions(57, 20, seed=1)
    starts, ends = session_bounds(data.offsets)
    positions = np.concatenate(
        [s.positions for s in session_parallel_batches(data.items, starts, ends, 5)]
    )
    # Every session has >= 2 clicks; inputs are all clicks but each session's last.
    expected = np.setdiff1d(np.arange(len(data.items)), ends - 1)
    assert np.array_equal(np.sort(positions), expected)


def test_min_lanes_stops_when_too_few_lanes_remain():
    data = sessions_of([2, 6])
    starts, ends = session_bounds(data.offsets)
    all_steps = list(session_parallel_batches(data.items, starts, ends, 2))
    two_lane = list(session_parallel_batches(data.items, starts, ends, 2, min_lanes=2))
    assert len(all_steps) == 5 and len(two_lane) == 1


def test_max_history_cuts_sessions_into_overlapping_pieces():
    offsets = np.array([0, 7, 9, 10])  # lengths 7, 2, 1
    starts, ends = session_bounds(offsets, max_history=3)
    assert list(zip(starts.tolist(), ends.tolist(), strict=True)) == [
        (0, 4),
        (3, 7),
        (7, 9),
    ]
    # Each target sits in exactly one piece and sees at most 3 earlier items.
    targets = np.concatenate([np.arange(s + 1, e) for s, e in zip(starts, ends, strict=True)])
    assert targets.tolist() == [1, 2, 3, 4, 5, 6, 8]


def test_hidden_state_is_reset_exactly_at_session_boundaries():
    """Every lane's state equals a fresh run over its own session's prefix, at every step."""
    torch.manual_seed(0)
    lengths = [3, 5, 2, 2, 6, 4, 3, 2, 7]
    data = sessions_of(lengths)
    n_items = int(data.items.max()) + 1
    model = GRU4Rec(n_items, (6, 4), constrained_embedding=True).eval()
    starts, ends = session_bounds(data.offsets)
    hidden = model.init_hidden(3)
    n_resets = 0
    with torch.no_grad():
        for step in session_parallel_batches(data.items, starts, ends, 3):
            hidden = advance_lanes(hidden, step)
            for h in hidden:  # zero exactly on the lanes that start a session here
                zero_rows = (h == 0).all(dim=1).numpy()
                assert np.array_equal(zero_rows, step.reset)
            n_resets += int(step.reset.sum())
            _, hidden = model.step(torch.from_numpy(step.inputs), hidden)
            for lane, (s, pos) in enumerate(zip(step.sessions, step.positions, strict=True)):
                fresh = model.init_hidden(1)
                for item in data.items[starts[s] : pos + 1]:
                    _, fresh = model.step(torch.tensor([item]), fresh)
                for h, f in zip(hidden, fresh, strict=True):
                    torch.testing.assert_close(h[lane], f[0])
    assert n_resets == len(lengths)


# --- the optimiser ---------------------------------------------------------------------------


FUSED = pytest.mark.parametrize("fused", [True, False], ids=["fused", "torch"])


@FUSED
def test_adagrad_momentum_dense_step_by_hand(fused):
    p = torch.nn.Parameter(torch.tensor([1.0, -2.0]))
    opt = AdagradMomentum([p], lr=0.1, momentum=0.5, eps=1e-6, fused=fused)
    grads = [torch.tensor([0.5, 1.0]), torch.tensor([-1.0, 2.0])]
    acc, velocity, value = np.zeros(2), np.zeros(2), np.array([1.0, -2.0])
    for g in grads:
        p.grad = g.clone()
        opt.step()
        acc += g.numpy() ** 2
        velocity = 0.5 * velocity - 0.1 * g.numpy() / np.sqrt(acc + 1e-6)
        value += velocity
    np.testing.assert_allclose(p.detach().numpy(), value, rtol=1e-6)


@FUSED
def test_adagrad_sparse_step_updates_only_the_touched_rows(fused):
    """Rows a step does not touch keep value, accumulator and velocity (no momentum drift)."""
    torch.manual_seed(0)
    start = torch.randn(6, 3)
    param = torch.nn.Parameter(start.clone())
    opt = AdagradMomentum([param], lr=0.05, momentum=0.4, eps=1e-6, fused=fused)
    value, acc, velocity = start.numpy().astype(np.float64), np.zeros((6, 3)), np.zeros((6, 3))
    for rows in ([1, 4, 1], [4, 5]):  # row 1 twice: its gradients are summed first
        opt.zero_grad()
        idx = torch.tensor(rows)
        torch.nn.functional.embedding(idx, param, sparse=True).pow(2).sum().backward()
        assert param.grad.is_sparse
        opt.step()
        grad = np.zeros((6, 3))
        for r in rows:
            grad[r] += 2 * value[r]
        for r in sorted(set(rows)):
            acc[r] += grad[r] ** 2
            velocity[r] = 0.4 * velocity[r] - 0.05 * grad[r] / np.sqrt(acc[r] + 1e-6)
            value[r] += velocity[r]
    np.testing.assert_allclose(param.detach().numpy(), value, rtol=1e-5, atol=1e-6)
    # Row 1 was not touched by the second step: momentum did not move it again.
    untouched = [0, 2, 3]
    assert torch.equal(param.detach()[untouched], start[untouched])
    assert torch.count_nonzero(opt.state[param]["acc"][untouched]) == 0
    assert torch.count_nonzero(opt.state[param]["velocity"][untouched]) == 0


@FUSED
def test_adagrad_step_rows_equals_the_sparse_step(fused):
    """Training's gathered rows (plain rows and values) update as a sparse gradient would."""
    torch.manual_seed(1)
    weight, bias = torch.randn(7, 4), torch.randn(7, 1)
    sparse = [torch.nn.Parameter(weight.clone()), torch.nn.Parameter(bias.clone())]
    plain = [torch.nn.Parameter(weight.clone()), torch.nn.Parameter(bias.clone())]
    opt_sparse = AdagradMomentum(sparse, lr=0.05, momentum=0.3, fused=fused)
    opt_plain = AdagradMomentum(plain, lr=0.05, momentum=0.3, fused=fused)
    for rows in ([0, 2, 5], [2, 3], [6]):
        index = torch.tensor(rows)
        grads = torch.randn(len(rows), 5)  # weight and bias gradients side by side
        for p, values in zip(sparse, (grads[:, :4], grads[:, 4:]), strict=True):
            p.grad = torch.sparse_coo_tensor(index[None], values, p.shape, check_invariants=True)
        opt_sparse.step()
        opt_plain.step_rows(index, grads, plain)
    for a, b in zip(sparse, plain, strict=True):
        assert torch.allclose(a, b, rtol=1e-6, atol=1e-7)
    assert torch.equal(plain[0].detach()[[1, 4]], weight[[1, 4]])  # rows never touched
    assert not torch.equal(plain[0].detach()[[0, 2]], weight[[0, 2]])


@FUSED
def test_step_rows_sums_the_gradients_of_repeated_rows(fused):
    """A row handed over several times is updated once, with its gradients summed."""
    torch.manual_seed(4)
    weight, bias = torch.randn(9, 3), torch.randn(9, 1)
    rows = torch.tensor([4, 1, 4, 7, 1, 4])
    grads = torch.randn(6, 4)
    runs = []
    for ids, values in ((rows, grads), coalesce_rows(rows, grads)):
        params = [torch.nn.Parameter(weight.clone()), torch.nn.Parameter(bias.clone())]
        opt = AdagradMomentum(params, lr=0.1, momentum=0.2, fused=fused)
        for _ in range(2):
            opt.step_rows(ids, values, params)
        runs.append(params)
    assert torch.equal(coalesce_rows(rows, grads)[0], torch.tensor([1, 4, 7]))
    for a, b in zip(*runs, strict=True):
        torch.testing.assert_close(a.detach(), b.detach(), rtol=1e-6, atol=1e-7)
    assert not torch.equal(runs[0][0].detach()[4], weight[4])
    assert torch.equal(runs[0][0].detach()[[0, 2, 3]], weight[[0, 2, 3]])


def test_fused_step_rows_refuses_a_row_out_of_range_and_stays_usable():
    params = [torch.nn.Parameter(torch.randn(5, 2)), torch.nn.Parameter(torch.randn(5, 1))]
    opt = AdagradMomentum(params, lr=0.1)
    before = params[0].detach().clone()
    with pytest.raises(IndexError, match="out of range"):
        opt.step_rows(torch.tensor([1, 5]), torch.randn(2, 3), params)
    assert torch.equal(params[0].detach(), before)
    assert torch.equal(opt.state[params[0]]["last"], torch.full((5,), -1))  # table intact
    opt.step_rows(torch.tensor([1, 1]), torch.ones(2, 3), params)
    assert not torch.equal(params[0].detach()[1], before[1])


@pytest.fixture
def torch_threads(request):
    before = torch.get_num_threads()
    torch.set_num_threads(request.param)
    yield request.param
    torch.set_num_threads(before)


@pytest.mark.parametrize("torch_threads", [1, 2], indirect=True)  # serial and parallel kernels
@pytest.mark.parametrize("momentum", [0.0, 0.15])
def test_fused_cpu_update_equals_the_torch_operations(momentum, torch_threads):
    """The fused kernels (cpu_kernels) and the torch reference update dense parameters,
    touched rows and their states alike over several steps; untouched rows stay put."""
    torch.manual_seed(2)
    start = [torch.randn(300, 17), torch.randn(300, 1), torch.randn(3, 5000), torch.randn(5000)]
    runs = []
    for fused in (True, False):
        params = [torch.nn.Parameter(t.clone()) for t in start]
        opt = AdagradMomentum(params, lr=0.05, momentum=momentum, fused=fused)
        gen = torch.Generator().manual_seed(3)
        for _ in range(4):
            rows = torch.randint(0, 300, (160,), generator=gen)  # unsorted, with repeats
            row_grads = torch.randn(160, 18, generator=gen)
            row_grads[::3] *= 1e-21  # squares below float32's normal range
            opt.step_rows(rows, row_grads, params[:2])
            for p in params[2:]:
                p.grad = torch.randn(p.shape, generator=gen)
            opt.step()
            for p in params[2:]:
                p.grad = None
        runs.append((params, opt))
    (fused_params, fused_opt), (torch_params, torch_opt) = runs
    for a, b in zip(fused_params, torch_params, strict=True):
        torch.testing.assert_close(a.detach(), b.detach(), rtol=1e-6, atol=1e-6)
        for key in torch_opt.state[b]:
            if key != "denom":  # the torch path's scratch buffer
                torch.testing.assert_close(fused_opt.state[a][key], torch_opt.state[b][key])
    touched = torch.zeros(300, dtype=torch.bool)
    gen = torch.Generator().manual_seed(3)
    for _ in range(4):
        touched[torch.randint(0, 300, (160,), generator=gen)] = True
        torch.randn(160, 18, generator=gen)
        for p in start[2:]:
            torch.randn(p.shape, generator=gen)
    assert not touched.all()
    assert torch.equal(fused_params[0].detach()[~touched], start[0][~touched])


# --- the loop --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "changes",
    [
        dict(loss="cross-entropy", logq=1.0),
        dict(loss="bpr-max", final_act="elu", elu_param=1.0, bpreg=0.5),
        dict(loss="top1-max", constrained_embedding=False, embedding=8),
        dict(loss="cross-entropy", constrained_embedding=False, n_sample=0, layers=(16, 8)),
        dict(
            loss="bpr",
            optimizer="adam",
            learning_rate=0.01,
            weight_decay=1e-5,
            in_batch_negatives=False,
            max_history=3,
        ),
    ],
)
def test_a_short_run_lowers_the_loss(changes):
    torch.set_num_threads(1)
    data = cyclic_sessions(150, 25)
    result = train(data, tiny_config(n_epochs=3, **changes), n_items=25, progress=False)
    losses = [h["loss"] for h in result.history]
    assert losses[-1] < 0.95 * losses[0]
    assert result.best_epoch == 3 and not result.model.training
    entry = result.history[0]
    assert entry["events"] > 0 and entry["events_per_s"] > 0 and entry["peak_memory_mb"] > 0


def test_the_trained_model_predicts_the_pattern():
    torch.set_num_threads(1)
    data = cyclic_sessions(300, 25)
    result = train(data, tiny_config(n_epochs=5), n_items=25, progress=False)
    model = result.model
    with torch.no_grad():
        out, _ = model.step(torch.arange(25), model.init_hidden(25))
        top = model.score_all(out).argmax(dim=1)
    assert (top == (torch.arange(25) + 1) % 25).float().mean() > 0.8


def test_same_seed_same_run_on_cpu():
    torch.set_num_threads(1)
    data = cyclic_sessions(80, 20)
    config = tiny_config(dropout_p_embed=0.2, dropout_p_hidden=0.2)
    a = train(data, config, n_items=20, progress=False)
    b = train(data, config, n_items=20, progress=False)
    c = train(data, config.replace(seed=4), n_items=20, progress=False)
    assert [h["loss"] for h in a.history] == [h["loss"] for h in b.history]
    for (name, wa), wb in zip(
        a.model.state_dict().items(), b.model.state_dict().values(), strict=True
    ):
        assert torch.equal(wa, wb), name
    assert [h["loss"] for h in a.history] != [h["loss"] for h in c.history]


def test_early_stopping_restores_the_best_epoch():
    data = cyclic_sessions(60, 20)
    scripted = iter([0.1, 0.5, 0.3, 0.2, 0.9])  # best at epoch 2, patience 2 -> stop after 4
    snapshots = []

    def validate(model):
        assert not model.training
        snapshots.append(model.output_weight.detach().clone())
        return next(scripted)

    config = tiny_config(n_epochs=5, patience=2)
    result = train(data, config, n_items=20, validate=validate, progress=False)
    assert [h["valid"] for h in result.history] == [0.1, 0.5, 0.3, 0.2]
    assert result.best_epoch == 2
    assert torch.equal(result.model.output_weight.detach(), snapshots[1])
    assert not torch.equal(snapshots[1], snapshots[3])


def test_bad_training_data_is_refused():
    data = sessions_of([3, 2])
    with pytest.raises(ValueError, match="outside"):
        train(data, tiny_config(), n_items=3, progress=False)
    with pytest.raises(ValueError, match="two clicks"):
        train(sessions_of([1, 1]), tiny_config(), n_items=5, progress=False)
    with pytest.raises(ValueError, match="item_support"):
        train(data, tiny_config(), n_items=5, item_support=np.ones(4), progress=False)


def test_resolve_device_picks_cuda_only_when_present():
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected
    assert resolve_device("cpu").type == "cpu"
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="CUDA"):
            resolve_device("cuda")


def test_plot_history_writes_a_png(tmp_path):
    history = [
        {"epoch": 1, "loss": 2.0, "events_per_s": 1000.0, "valid": 0.1},
        {"epoch": 2, "loss": 1.5, "events_per_s": 1100.0, "valid": 0.2},
    ]
    path = plot_history(history, tmp_path / "curves" / "train.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_quick_preset_trains():
    torch.set_num_threads(1)
    data = cyclic_sessions(100, 30)
    result = train(data, load_preset("quick", n_epochs=2), n_items=30, progress=False)
    assert result.history[-1]["loss"] < result.history[0]["loss"]


def test_fused_update_follows_state_tensors_that_were_replaced():
    """The fused path keeps numpy views of the optimiser's tensors; a state replaced by new
    tensors (as load_state_dict does) must be the one updated and read afterwards."""
    runs = []
    for fused in (True, False):
        torch.manual_seed(6)
        params = [torch.nn.Parameter(torch.randn(8, 3)), torch.nn.Parameter(torch.randn(8, 1))]
        dense = torch.nn.Parameter(torch.randn(4, 5))
        opt = AdagradMomentum([*params, dense], lr=0.1, momentum=0.2, fused=fused)
        for step in range(3):
            if step == 2:  # new accumulators, much larger: much smaller steps
                for p in (*params, dense):
                    opt.state[p]["acc"] = torch.full_like(p.detach(), 50.0)
            opt.step_rows(torch.tensor([1, 5, 1]), torch.randn(3, 4), params)
            dense.grad = torch.randn(4, 5)
            opt.step()
        runs.append((params, dense, opt))
    (params_f, dense_f, opt_f), (params_t, dense_t, opt_t) = runs
    for a, b in zip([*params_f, dense_f], [*params_t, dense_t], strict=True):
        torch.testing.assert_close(a.detach(), b.detach())
        torch.testing.assert_close(opt_f.state[a]["acc"], opt_t.state[b]["acc"])


def test_best_epoch_keeps_a_copy_stops_on_patience_and_restores():
    from batch_training.early_stop import BestEpoch

    model = torch.nn.Linear(2, 1)
    best = BestEpoch(patience=2, validated=True)
    for epoch, metric in enumerate([0.2, 0.7, 0.4, 0.1], start=1):
        with torch.no_grad():
            model.weight.fill_(float(epoch))  # the weights of each epoch
        best.record(epoch, metric, model)
        if best.should_stop(epoch):
            break
    assert (epoch, best.epoch, best.metric) == (4, 2, 0.7)
    best.restore(model, last_epoch=epoch)
    assert torch.all(model.weight == 2.0)  # epoch 2's weights, not a view of later ones
    unvalidated = BestEpoch(patience=1, validated=False)
    for epoch in range(1, 6):
        unvalidated.record(epoch, None, model)
        assert not unvalidated.should_stop(epoch)
    assert unvalidated.epoch == 5
