"""Data-parallel training over processes (torchrun): the process group and the gradient sync.

Every rank holds the whole model and walks its own share of the sessions (session s goes to
rank s mod N, so each rank still reads them oldest first) with batch_size / N lanes. After
backward the ranks *sum* their gradients (each rank's loss is already divided by the
configured batch size), so one step is the update of one batch_size-lane step of a single
process: the same number of updates per epoch, at the same scale, and metrics within noise.
What differs: a lane's in-batch negatives are the targets of its own rank's lanes only, and
each rank draws its own shared negatives.

Sparse rows: each rank touches different output-weight rows. The ranks all-gather their
touched row ids (padded to a fixed bound), every rank forms the same sorted union, scatters
its row gradients into it, and the union's rows ride along with the dense gradients in one
all-reduce. Every rank then applies the same coalesced update, so the replicas stay equal
without broadcasting weights. Models without gathered rows need dense gradients
(`sparse_updates=false` or Adam): then every row's gradient is all-reduced, which is simple
but moves the whole item table each step.

A rank that has run out of steps joins each collective with zero gradients until every rank
is done (an all-gathered flag says when), so no rank waits forever.

CPU: gloo. CUDA: NCCL, one device per local rank.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Sequence

import torch
import torch.distributed as dist
from torch import Tensor

from batch_training.model import GRU4Rec


def world() -> tuple[int, int]:
    """(rank, world size); (0, 1) outside a process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and "LOCAL_RANK" in os.environ


def init_from_env(device: str = "auto") -> str:
    """Join the process group torchrun describes; returns the device this rank trains on."""
    use_cuda = device in ("auto", "cuda") and torch.cuda.is_available()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if use_cuda:
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return f"cuda:{local_rank}" if use_cuda else "cpu"


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def torchrun_command(nproc: int, module_args: Sequence[str]) -> list[str]:
    """`python -m torch.distributed.run` on this host with `nproc` ranks of a module."""
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={nproc}",
        "-m",
        *module_args,
    ]


def launch(nproc: int, module_args: Sequence[str]) -> int:
    """Run `python -m MODULE ARGS` as `nproc` torchrun ranks; their exit status."""
    return subprocess.call(torchrun_command(nproc, module_args))


def lanes_of(batch_size: int, rank: int, world_size: int) -> int:
    """This rank's share of the batch's lanes (the first ranks take the remainder)."""
    lanes = batch_size // world_size + (rank < batch_size % world_size)
    if lanes < 1:
        raise ValueError(f"batch_size {batch_size} gives no lane to rank {rank} of {world_size}")
    return lanes


class GradSync:
    """Sums the gradients of one step over the ranks (see the module docstring)."""

    def __init__(self, model: GRU4Rec, *, gathered_rows: bool, max_rows: int) -> None:
        self.model = model
        self.world_size = dist.get_world_size()
        self.gathered_rows = gathered_rows
        self.max_rows = max_rows
        table = {id(model.output_weight), id(model.output_bias)} if gathered_rows else set()
        self.dense = [p for p in model.parameters() if p.requires_grad and id(p) not in table]

    def reduce(self, rows: Tensor | None, row_grads: Tensor | None, active: bool) -> bool:
        """All-reduce this step's gradients into the parameters' .grad.

        rows (R,) / row_grads (R, H + 1): this rank's touched output rows and their weight and
        bias gradients (gathered-rows mode). Returns False when no rank had a step (nothing
        was reduced and the optimiser must not step).
        """
        device = self.dense[0].device
        union = None
        if self.gathered_rows:
            local = torch.full((self.max_rows + 1,), -1, dtype=torch.int64, device=device)
            local[0] = int(active)
            if rows is not None:
                if len(rows) > self.max_rows:
                    raise RuntimeError(f"{len(rows)} touched rows > bound {self.max_rows}")
                local[1 : 1 + len(rows)] = rows
            gathered = [torch.empty_like(local) for _ in range(self.world_size)]
            dist.all_gather(gathered, local)
            every = torch.stack(gathered)
            if not bool((every[:, 0] > 0).any()):
                return False
            ids = every[:, 1:].flatten()
            union = torch.unique(ids[ids >= 0], sorted=True)
        # An idle rank's .grad still holds the previous step's sum: it must add zeros.
        parts = [
            p.grad.reshape(-1)
            if active and p.grad is not None
            else torch.zeros(p.numel(), device=device)
            for p in self.dense
        ]
        width = self.model.output_weight.shape[1] + 1
        if union is not None:
            block = torch.zeros(len(union), width, device=device)
            if rows is not None and row_grads is not None:
                block[torch.searchsorted(union, rows)] = row_grads
            parts.append(block.reshape(-1))
        else:
            parts.append(torch.tensor([float(active)], device=device))
        flat = torch.cat(parts)
        dist.all_reduce(flat)
        offset = 0
        for p in self.dense:
            p.grad = flat[offset : offset + p.numel()].view_as(p)
            offset += p.numel()
        if union is None:
            return bool(flat[offset] > 0)
        block = flat[offset:].view(len(union), width)
        index = union[None]
        for param, values in (
            (self.model.output_weight, block[:, :-1]),
            (self.model.output_bias, block[:, -1:]),
        ):
            param.grad = torch.sparse_coo_tensor(
                index, values, param.shape, is_coalesced=True, check_invariants=False
            )
        return True

    def all_sum(self, *values: float) -> list[float]:
        """Sums of per-rank scalars (epoch loss and event counts)."""
        t = torch.tensor(values, dtype=torch.float64, device=self.dense[0].device)
        dist.all_reduce(t)
        return t.tolist()

    def broadcast(self, value: float | None) -> float:
        """Rank 0's value on every rank (the validation metric: only rank 0 evaluates)."""
        t = torch.tensor([value or 0.0], dtype=torch.float64, device=self.dense[0].device)
        dist.broadcast(t, src=0)
        return float(t.item())
