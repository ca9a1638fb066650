"""Training GRU4Rec with session-parallel mini-batches (Hidasi et al., ICLR 2016).

The iterator itself lives in batch_training.lanes, shared with evaluation.

`batch_size` lanes each walk one session, oldest sessions first. At every step a lane feeds
its current item and is scored on the next one; the other lanes' targets and `n_sample`
popularity-sampled items are the negatives. When a lane's session ends the next unused
session takes the lane and the lane's hidden state is zeroed at exactly that step. Hidden
states are carried across steps but detached (no backpropagation through time). When no
unused session is left, finished lanes are dropped and the batch shrinks, so every click of
every session is a target once per epoch.

As in the authors' code: sessions are not shuffled; the loss is summed over the lanes and
divided by the configured batch size; Adagrad with momentum updates only the item rows a
step touches; dropout is inverted, and a layer's dropped-out output is also its carried
state. Additions of this project: `in_batch_negatives=False`, `max_history`, Adam, and
bfloat16 autocast on CUDA (opt-in).

A step is forward, loss, backward, update. For the papers' setups (one GRU layer, the
shared embedding, sparse Adagrad, cross-entropy or BPR-max) forward and backward are
written out by hand (batch_training.fast_step, chosen automatically); every other
configuration goes through autograd (`_autograd_step`), and the two are tested equal.
"""

from __future__ import annotations

import itertools
import logging
import math
import resource
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch
from torch import Tensor
from tqdm import tqdm

from batch_training import distributed
from batch_training.config import TrainConfig
from batch_training.early_stop import BestEpoch
from batch_training.fast_step import FastStep
from batch_training.lanes import (  # re-exported: the iterator's old home
    SessionStep,
    advance_lanes,
    session_bounds,
    session_parallel_batches,
)
from batch_training.losses import loss_function
from batch_training.model import GRU4Rec
from batch_training.optim import AdagradMomentum, coalesce_rows
from batch_training.sampler import NegativeSampler
from batch_training.stage_timer import StageTimer

log = logging.getLogger(__name__)


class Sessions(Protocol):
    """What training needs of `batch_training.sessions.SessionData`."""

    items: np.ndarray  # int64 (n_clicks,)
    offsets: np.ndarray  # int64 (n_sessions + 1,)


def resolve_device(name: str = "auto") -> torch.device:
    """ "auto" -> the current CUDA device when there is one, else the CPU."""
    if name == "auto":
        return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {name!r} requested but CUDA is not available")
    return device


# --- training --------------------------------------------------------------------------------


@dataclass
class TrainResult:
    model: GRU4Rec
    history: list[dict[str, Any]]
    best_epoch: int  # 1-based; the model holds this epoch's weights
    config: TrainConfig
    device: str = field(default="cpu")


def _check_inputs(data: Sessions, n_items: int, support: np.ndarray | None) -> None:
    items, offsets = np.asarray(data.items), np.asarray(data.offsets)
    if items.ndim != 1 or offsets.ndim != 1 or len(offsets) < 2:
        raise ValueError("training data: items must be 1-d and offsets hold n_sessions + 1")
    if offsets[0] != 0 or offsets[-1] != len(items) or np.any(np.diff(offsets) < 0):
        raise ValueError("training data: offsets must rise from 0 to len(items)")
    if len(items) and (items.min() < 0 or items.max() >= n_items):
        raise ValueError(f"training data: item index outside [0, {n_items})")
    if not np.any(np.diff(offsets) >= 2):
        raise ValueError("training data: no session has two clicks, nothing to learn from")
    if support is not None and np.shape(support) != (n_items,):
        raise ValueError(f"item_support has shape {np.shape(support)}, expected ({n_items},)")


def _optimizer(model: GRU4Rec, config: TrainConfig) -> torch.optim.Optimizer:
    if config.optimizer == "adagrad":
        return AdagradMomentum(
            model.parameters(), lr=config.learning_rate, momentum=config.momentum
        )
    return torch.optim.Adam(
        model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay
    )


def _peak_memory_mb(device: torch.device) -> float:
    """Peak CUDA memory of the epoch; on CPU the process's peak resident set so far."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


@dataclass
class _EpochContext:
    """What one training step needs besides the model and its optimiser."""

    config: TrainConfig
    device: torch.device
    loss_fn: Callable[[Tensor, Tensor | None], Tensor]
    sampler: NegativeSampler | None
    log_support: Tensor | None  # (n_items,) for the logQ correction, None when it is off
    use_amp: bool
    profile: StageTimer | None = None
    sync: distributed.GradSync | None = None  # data-parallel: sums gradients over the ranks
    fast: FastStep | None = None  # the hand-written step, where it covers the configuration


def _gathers_rows(model: GRU4Rec) -> bool:
    """Whether a step can gather its item rows once (`_RowBatch`) instead of per lookup."""
    return model.training and model.sparse_grad and model.input_kind == "shared"


class _RowBatch:
    """The output-weight rows one step touches, gathered once for the input lookup and the
    scored columns.

    With sparse lookups the output weights are read twice per step (inputs, then columns),
    and backward builds a sparse gradient of B + C rows that the optimiser must coalesce (a
    sort and a scatter). Gathering the step's unique rows into a small leaf instead gives
    their summed gradient directly, already coalesced: the same update, fewer passes.
    """

    def __init__(self, model: GRU4Rec, inputs: Tensor, columns: Tensor) -> None:
        ids, self.n_inputs = torch.cat([inputs, columns]), len(inputs)
        self.model = model
        self.rows, inverse = torch.unique(ids, sorted=True, return_inverse=True)
        self.weight = model.output_weight.detach().index_select(0, self.rows).requires_grad_()
        self.bias = model.output_bias.detach().index_select(0, self.rows).requires_grad_()
        self.input_at, self.column_at = inverse[: self.n_inputs], inverse[self.n_inputs :]

    def forward(self, hidden: list[Tensor]) -> tuple[Tensor, list[Tensor]]:
        output, hidden = self.model.step_embedded(self.weight[self.input_at], hidden)
        weight = self.weight.index_select(0, self.column_at)
        bias = self.bias.index_select(0, self.column_at).squeeze(1)
        return torch.nn.functional.linear(output, weight, bias), hidden

    def row_grads(self) -> Tensor:
        """(R, H + 1): the gathered rows' weight and bias gradients side by side."""
        assert self.weight.grad is not None and self.bias.grad is not None
        return torch.cat([self.weight.grad, self.bias.grad], dim=1)


def _train_step(
    model: GRU4Rec,
    optimizer: torch.optim.Optimizer,
    ctx: _EpochContext,
    step: SessionStep,
    hidden: list[Tensor],
) -> tuple[Tensor, list[Tensor]]:
    """One session-parallel step: score targets + negatives, update. Returns the lane losses."""
    dev, timer = ctx.device, ctx.profile
    inputs = torch.from_numpy(step.inputs).to(dev, non_blocking=True)
    targets = torch.from_numpy(step.targets).to(dev, non_blocking=True)
    if timer:
        timer.tick("batch")
    sampled = ctx.sampler.sample() if ctx.sampler is not None else None
    columns = targets if sampled is None else torch.cat([targets, sampled])  # (B + n_sample,)
    log_q = None
    if ctx.log_support is not None:
        # In-batch targets occur ~ support, sampled items ~ support ** alpha.
        log_q = ctx.log_support[columns]
        log_q[len(targets) :] *= ctx.config.sample_alpha
    if timer:
        timer.tick("sampling")
    if ctx.fast is not None:
        fast = ctx.fast(inputs, columns, log_q, hidden, timer)
        per_lane, hidden, rows, row_grads = fast.per_lane, fast.hidden, fast.rows, fast.row_grads
    else:
        per_lane, hidden, rows, row_grads = _autograd_step(
            model, optimizer, ctx, inputs, columns, log_q, hidden
        )
    if ctx.sync is not None:  # sums the ranks' gradients into the parameters' .grad
        if rows is not None and row_grads is not None:
            rows, row_grads = coalesce_rows(rows, row_grads)  # the exchange needs unique rows
        ctx.sync.reduce(rows, row_grads, active=True)
    if timer:
        timer.tick("backward")
    if ctx.sync is None and rows is not None and row_grads is not None:
        assert isinstance(optimizer, AdagradMomentum)  # sparse updates: only Adagrad
        optimizer.step_rows(rows, row_grads, [model.output_weight, model.output_bias])
    if isinstance(optimizer, AdagradMomentum):
        optimizer.update()  # step() without torch's hooks around it
    else:
        optimizer.step()
    if timer:
        timer.tick("optimiser")
        timer.steps += 1
    return per_lane.detach(), hidden


def _autograd_step(
    model: GRU4Rec,
    optimizer: torch.optim.Optimizer,
    ctx: _EpochContext,
    inputs: Tensor,
    columns: Tensor,
    log_q: Tensor | None,
    hidden: list[Tensor],
) -> tuple[Tensor, list[Tensor], Tensor | None, Tensor | None]:
    """Forward, loss and backward through autograd: every configuration. Returns the lane
    losses, the new state and, with gathered rows, the rows and their gradients."""
    dev, timer = ctx.device, ctx.profile
    rows = _RowBatch(model, inputs, columns) if _gathers_rows(model) else None
    with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=ctx.use_amp):
        if rows is not None:
            scores, hidden = rows.forward(hidden)
        else:
            output, hidden = model.step(inputs, hidden)
            scores = model.score_items(output, columns)  # (B, B + n_sample), diagonal = positives
    if timer:
        timer.tick("forward")
    per_lane = ctx.loss_fn(scores.float(), log_q)
    # The authors divide by the configured batch size, also when the batch has shrunk.
    loss = per_lane.sum() / ctx.config.batch_size
    if timer:
        timer.tick("loss")
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if rows is None:
        return per_lane, hidden, None, None
    return per_lane, hidden, rows.rows, rows.row_grads()


def _train_epoch(
    model: GRU4Rec,
    optimizer: torch.optim.Optimizer,
    ctx: _EpochContext,
    steps: Iterator[SessionStep],
    hidden: list[Tensor],
    bar: tqdm,
    epoch: int,
) -> tuple[float, int]:
    """Run the steps of one epoch; returns (mean loss per event, events)."""
    t0 = time.perf_counter()
    loss_sum = torch.zeros((), device=ctx.device)
    n_events = 0
    if ctx.profile:
        ctx.profile.start()
    for i in itertools.count():
        step = next(steps, None)
        if step is None:
            # Data-parallel: a rank out of steps adds zero gradients until all ranks are done.
            if ctx.sync is None or not ctx.sync.reduce(None, None, active=False):
                break
            optimizer.step()
            continue
        # Carry the state across steps, but no backpropagation through time.
        hidden = advance_lanes([h.detach() for h in hidden], step)
        per_lane, hidden = _train_step(model, optimizer, ctx, step, hidden)
        loss_sum += per_lane.sum()
        n_events += len(per_lane)
        bar.update(len(per_lane))
        if ctx.profile:
            ctx.profile.tick("bookkeeping")
        if i % 100 == 0:  # .item() waits for the device: not every step
            mean = loss_sum.item() / n_events
            if not math.isfinite(mean):
                raise FloatingPointError(
                    f"loss is {mean} in epoch {epoch} at step {i}; try a lower learning_rate"
                )
            speed = n_events / (time.perf_counter() - t0)
            bar.set_postfix(loss=f"{mean:.4f}", ev_s=f"{speed:,.0f}")
    total = loss_sum.item()
    if ctx.sync is not None:
        total, events = ctx.sync.all_sum(total, n_events)
        n_events = int(events)
    mean = total / max(n_events, 1)
    if not math.isfinite(mean):
        raise FloatingPointError(f"loss is {mean} after epoch {epoch}; try a lower learning_rate")
    return mean, n_events


def train(
    train_data: Sessions,
    config: TrainConfig,
    *,
    n_items: int,
    item_support: np.ndarray | None = None,
    validate: Callable[[GRU4Rec], float] | None = None,
    device: str = "auto",
    progress: bool = True,
    profile: StageTimer | None = None,
) -> TrainResult:
    """Train GRU4Rec; `validate(model)` (higher is better) drives early stopping.

    item_support: training click counts per item, for the sampler and logQ; counted from
    `train_data` when not given. The returned model is the best validated epoch's (the last
    epoch's without `validate`), in eval mode. On the CPU a seed gives the same run twice.
    profile: a StageTimer that sums the time of each stage of each step (benchmarks only).

    Inside a torch.distributed process group (torchrun; batch_training.distributed) each rank
    trains on its share of the sessions with batch_size / N lanes and the gradients are summed,
    so the ranks hold equal weights; only rank 0 calls `validate`, and its metric is
    broadcast. Events and loss in the history are over all ranks.
    """
    _check_inputs(train_data, n_items, item_support)
    dev = resolve_device(device)
    items = np.asarray(train_data.items, dtype=np.int64)
    if item_support is None:
        item_support = np.bincount(items, minlength=n_items)
    support = np.asarray(item_support, dtype=np.float64)
    starts, ends = session_bounds(train_data.offsets, config.max_history)
    rank, world_size = distributed.world()
    lanes = distributed.lanes_of(config.batch_size, rank, world_size)
    starts, ends = starts[rank::world_size], ends[rank::world_size]
    epoch_events = int(np.sum(ends - starts - 1))

    # Seed init, dropout and sampling without disturbing the caller's random state.
    rng_devices = [torch.cuda.current_device()] if dev.type == "cuda" else []
    with torch.random.fork_rng(devices=rng_devices):
        torch.manual_seed(config.seed)
        model = GRU4Rec.from_config(n_items, config).to(dev)
        if rank > 0:  # equal initial weights, but each rank's own dropout masks
            torch.manual_seed(config.seed + rank)
        optimizer = _optimizer(model, config)
        sampler = None
        if config.n_sample > 0:
            sampler = NegativeSampler(
                support,
                config.sample_alpha,
                config.n_sample,
                config.sample_cache_size,
                device=dev,
                seed=config.seed,  # data-parallel: one shared draw, as one process
            )
        log_support = None
        if config.loss == "cross-entropy" and config.logq > 0:
            # Clicks, at least 1: every target was clicked at least once in training.
            log_support = torch.as_tensor(np.log(np.maximum(support, 1.0)), dtype=torch.float32)
            log_support = log_support.to(dev)
        use_amp = config.mixed_precision and dev.type == "cuda" and torch.cuda.is_bf16_supported()
        ctx = _EpochContext(
            config=config,
            device=dev,
            loss_fn=loss_function(config),
            sampler=sampler,
            log_support=log_support,
            use_amp=use_amp,
            profile=profile,
        )
        if FastStep.supports(model, config, use_amp):
            ctx.fast = FastStep(model, config)
        if world_size > 1:
            gathered = _gathers_rows(model)
            if model.sparse_grad and not gathered:
                raise ValueError(
                    "data-parallel training with sparse updates needs the shared embedding "
                    "(constrained_embedding); else set sparse_updates=false"
                )
            ctx.sync = distributed.GradSync(
                model, gathered_rows=gathered, max_rows=2 * lanes + config.n_sample
            )

        # Without sampled negatives a lone lane has nothing to rank against.
        min_lanes = 1 if sampler else 2
        history: list[dict[str, Any]] = []
        best = BestEpoch(config.patience, validated=validate is not None)
        for epoch in range(1, config.n_epochs + 1):
            model.train()
            if dev.type == "cuda":
                torch.cuda.reset_peak_memory_stats(dev)
            t0 = time.perf_counter()
            steps = session_parallel_batches(items, starts, ends, lanes, min_lanes=min_lanes)
            hidden = model.init_hidden(min(lanes, len(starts)))
            desc = f"epoch {epoch}/{config.n_epochs}"
            with tqdm(
                total=epoch_events,
                desc=desc,
                unit="ev",
                unit_scale=True,
                disable=not progress or rank > 0,
                mininterval=0.5,
            ) as bar:
                mean_loss, n_events = _train_epoch(model, optimizer, ctx, steps, hidden, bar, epoch)
            seconds = time.perf_counter() - t0
            entry: dict[str, Any] = {
                "epoch": epoch,
                "loss": mean_loss,
                "events": n_events,
                "seconds": seconds,
                "events_per_s": n_events / seconds,
                "peak_memory_mb": _peak_memory_mb(dev),
                "valid": None,
            }
            if validate is not None:
                model.eval()
                t_valid = time.perf_counter()
                with torch.no_grad():
                    metric = float(validate(model)) if rank == 0 else None
                    if ctx.sync is not None:
                        metric = ctx.sync.broadcast(metric)
                    entry["valid"] = metric
                entry["valid_seconds"] = time.perf_counter() - t_valid
            best.record(epoch, entry["valid"], model)
            history.append(entry)
            log.info(
                "epoch %d: loss %.5f, %.0f events/s, %.1fs, valid %s",
                epoch,
                mean_loss,
                entry["events_per_s"],
                seconds,
                entry["valid"],
            )
            if best.should_stop(epoch):
                log.info("no better validation for %d epochs, stopping", config.patience)
                break

        best.restore(model, history[-1]["epoch"])
    return TrainResult(model.eval(), history, best.epoch, config, str(dev))
