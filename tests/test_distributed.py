"""Data-parallel training (batch_training.distributed) on CPU with 2 gloo processes."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from batch_training.config import TrainConfig
from batch_training.distributed import GradSync, lanes_of
from batch_training.losses import loss_function
from batch_training.model import GRU4Rec
from batch_training.train import _RowBatch

ROOT = Path(__file__).resolve().parents[1]
N_ITEMS, H = 40, 8


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_batch(rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Each rank's inputs and columns (targets + its own sampled items, some shared)."""
    g = torch.Generator().manual_seed(100 + rank)
    inputs = torch.randint(0, N_ITEMS, (3,), generator=g)
    columns = torch.randint(0, N_ITEMS, (3 + 6,), generator=g)
    return inputs, columns


def _rank_loss(model: GRU4Rec, rank: int) -> tuple[torch.Tensor, _RowBatch]:
    config = TrainConfig(loss="cross-entropy", logq=0.0, batch_size=6)
    inputs, columns = _rank_batch(rank)
    rows = _RowBatch(model, inputs, columns)
    scores, _ = rows.forward(model.init_hidden(3))
    return loss_function(config)(scores, None).sum() / config.batch_size, rows


def _model() -> GRU4Rec:
    torch.manual_seed(0)
    return GRU4Rec(N_ITEMS, (H,), sparse_grad=True).train()


def _sync_worker(rank: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    model = _model()
    loss, rows = _rank_loss(model, rank)
    loss.backward()
    sync = GradSync(model, gathered_rows=True, max_rows=2 * 3 + 6)
    assert sync.reduce(rows.rows, rows.row_grads(), active=True)
    grads = {n: p.grad.to_dense() for n, p in model.named_parameters()}
    torch.save(grads, f"{out}.{rank}")
    # A rank out of steps adds zeros, not its stale .grad (the previous step's sum).
    if rank == 0:
        model.zero_grad(set_to_none=True)
        loss, rows = _rank_loss(model, 0)
        loss.backward()
        assert sync.reduce(rows.rows, rows.row_grads(), active=True)
    else:
        assert sync.reduce(None, None, active=False)
    torch.save({n: p.grad.to_dense() for n, p in model.named_parameters()}, f"{out}.idle{rank}")
    assert not sync.reduce(None, None, active=False)  # nobody active: nothing to step
    dist.destroy_process_group()


def test_grad_sync_sums_the_ranks_gradients(tmp_path):
    """The all-reduced gradient (dense and the union of touched rows) equals the gradient of
    the sum of both ranks' losses, computed in one process."""
    out = str(tmp_path / "grads")
    mp.start_processes(_sync_worker, args=(_free_port(), out), nprocs=2, start_method="spawn")
    model = _model()
    total = _rank_loss(model, 0)[0] + _rank_loss(model, 1)[0]
    leaf_grads = torch.autograd.grad(total, list(model.parameters()), allow_unused=True)
    expected = {}
    for (name, p), g in zip(model.named_parameters(), leaf_grads, strict=True):
        expected[name] = torch.zeros_like(p) if g is None else g
    # The row leaves are detached copies: their gradients land on the table via the batches.
    for rank in (0, 1):
        loss, rows = _rank_loss(model, rank)
        loss.backward()
        grads = rows.row_grads()
        expected["output_weight"] = expected["output_weight"].index_add(0, rows.rows, grads[:, :-1])
        expected["output_bias"] = expected["output_bias"].index_add(0, rows.rows, grads[:, -1:])
    for rank in (0, 1):
        got = torch.load(f"{out}.{rank}")
        for name, g in expected.items():
            torch.testing.assert_close(got[name], g, msg=f"rank {rank}: {name}")
    # Rank 1 idle: both ranks hold rank 0's gradient alone.
    model.zero_grad(set_to_none=True)
    loss, rows = _rank_loss(model, 0)
    loss.backward()
    alone = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    grads = rows.row_grads()
    alone["output_weight"] = torch.zeros_like(model.output_weight).index_add(
        0, rows.rows, grads[:, :-1]
    )
    alone["output_bias"] = torch.zeros_like(model.output_bias).index_add(
        0, rows.rows, grads[:, -1:]
    )
    for rank in (0, 1):
        got = torch.load(f"{out}.idle{rank}")
        for name, g in alone.items():
            torch.testing.assert_close(got[name], g, msg=f"idle, rank {rank}: {name}")


def test_lanes_split_the_batch():
    assert [lanes_of(7, r, 2) for r in (0, 1)] == [4, 3]
    with pytest.raises(ValueError, match="no lane"):
        lanes_of(1, 1, 2)


def _cli_train(out: Path, nproc: int) -> dict:
    cmd = [
        sys.executable,
        "-m",
        "gru4stream.cli",
        "train",
        "--dataset",
        "diginetica",
        "--max-sessions",
        "4000",
        "--preset",
        "quick",
        "--epochs",
        "2",
        "--protocol",
        "full",
        "--threads",
        "1",
        "--quiet",
        "--out",
        str(out),
        "--nproc",
        str(nproc),
    ]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads((out / "metrics.json").read_text())


@pytest.mark.slow
def test_two_processes_match_one_within_noise(tmp_path):
    """`gru4stream train --nproc 2` trains, only rank 0 writes, and the metrics are close.

    Tolerance: 0.03 absolute on Recall@20 and 0.012 on MRR@20 (about 16% / 22% relative).
    This small a run is noisy: seeds 1-3 of one process gave Recall@20 0.181-0.190 and MRR@20
    0.054-0.059, seeds 1-2 of two processes 0.171-0.186 / 0.054-0.058; beyond the seed, two
    processes differ in the lanes' sessions and dropout draws, and each lane has half the
    in-batch negatives (its rank's 16 lanes). The exact gradient sum is tested above.
    """
    one = _cli_train(tmp_path / "one", 1)["test"]["full"]
    two = _cli_train(tmp_path / "two", 2)["test"]["full"]
    assert abs(one["recall@20"] - two["recall@20"]) < 0.03, (one, two)
    assert abs(one["mrr@20"] - two["mrr@20"]) < 0.012, (one, two)
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == [
        "metrics.json",
        "model",
        "training.png",
    ]
