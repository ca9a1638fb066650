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
"""

from __future__ import annotations

import logging
import math
import resource
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import Tensor
from tqdm import tqdm

from batch_training.config import TrainConfig
from batch_training.lanes import (  # re-exported: the iterator's old home
    SessionStep,
    advance_lanes,
    session_bounds,
    session_parallel_batches,
)
from batch_training.losses import loss_function
from batch_training.model import GRU4Rec
from batch_training.optim import AdagradMomentum
from batch_training.sampler import NegativeSampler

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


def _train_step(
    model: GRU4Rec,
    optimizer: torch.optim.Optimizer,
    ctx: _EpochContext,
    step: SessionStep,
    hidden: list[Tensor],
) -> tuple[Tensor, list[Tensor]]:
    """One session-parallel step: score targets + negatives, update. Returns the lane losses."""
    dev = ctx.device
    inputs = torch.from_numpy(step.inputs).to(dev, non_blocking=True)
    targets = torch.from_numpy(step.targets).to(dev, non_blocking=True)
    sampled = ctx.sampler.sample() if ctx.sampler is not None else None
    columns = targets if sampled is None else torch.cat([targets, sampled])  # (B + n_sample,)
    log_q = None
    if ctx.log_support is not None:
        # In-batch targets occur ~ support, sampled items ~ support ** alpha.
        log_q = ctx.log_support[columns]
        log_q[len(targets) :] *= ctx.config.sample_alpha
    with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=ctx.use_amp):
        output, hidden = model.step(inputs, hidden)
        scores = model.score_items(output, columns)  # (B, B + n_sample), diagonal = positives
    per_lane = ctx.loss_fn(scores.float(), log_q)
    # The authors divide by the configured batch size, also when the batch has shrunk.
    loss = per_lane.sum() / ctx.config.batch_size
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return per_lane.detach(), hidden


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
    for i, step in enumerate(steps):
        # Carry the state across steps, but no backpropagation through time.
        hidden = advance_lanes([h.detach() for h in hidden], step)
        per_lane, hidden = _train_step(model, optimizer, ctx, step, hidden)
        loss_sum += per_lane.sum()
        n_events += len(per_lane)
        bar.update(len(per_lane))
        if i % 100 == 0:  # .item() waits for the device: not every step
            mean = loss_sum.item() / n_events
            if not math.isfinite(mean):
                raise FloatingPointError(
                    f"loss is {mean} in epoch {epoch} at step {i}; try a lower learning_rate"
                )
            speed = n_events / (time.perf_counter() - t0)
            bar.set_postfix(loss=f"{mean:.4f}", ev_s=f"{speed:,.0f}")
    mean = loss_sum.item() / max(n_events, 1)
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
) -> TrainResult:
    """Train GRU4Rec; `validate(model)` (higher is better) drives early stopping.

    item_support: training click counts per item, for the sampler and logQ; counted from
    `train_data` when not given. The returned model is the best validated epoch's (the last
    epoch's without `validate`), in eval mode. On the CPU a seed gives the same run twice.
    """
    _check_inputs(train_data, n_items, item_support)
    dev = resolve_device(device)
    items = np.asarray(train_data.items, dtype=np.int64)
    if item_support is None:
        item_support = np.bincount(items, minlength=n_items)
    support = np.asarray(item_support, dtype=np.float64)
    starts, ends = session_bounds(train_data.offsets, config.max_history)
    epoch_events = int(np.sum(ends - starts - 1))

    # Seed init, dropout and sampling without disturbing the caller's random state.
    rng_devices = [torch.cuda.current_device()] if dev.type == "cuda" else []
    with torch.random.fork_rng(devices=rng_devices):
        torch.manual_seed(config.seed)
        model = GRU4Rec.from_config(n_items, config).to(dev)
        optimizer = _optimizer(model, config)
        sampler = None
        if config.n_sample > 0:
            sampler = NegativeSampler(
                support,
                config.sample_alpha,
                config.n_sample,
                config.sample_cache_size,
                device=dev,
                seed=config.seed,
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
        )

        # Without sampled negatives a lone lane has nothing to rank against.
        min_lanes = 1 if sampler else 2
        history: list[dict[str, Any]] = []
        best_metric, best_epoch, best_state = -math.inf, 0, None
        for epoch in range(1, config.n_epochs + 1):
            model.train()
            if dev.type == "cuda":
                torch.cuda.reset_peak_memory_stats(dev)
            t0 = time.perf_counter()
            steps = session_parallel_batches(
                items, starts, ends, config.batch_size, min_lanes=min_lanes
            )
            hidden = model.init_hidden(min(config.batch_size, len(starts)))
            desc = f"epoch {epoch}/{config.n_epochs}"
            with tqdm(
                total=epoch_events,
                desc=desc,
                unit="ev",
                unit_scale=True,
                disable=not progress,
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
            if validate is None:
                best_epoch = epoch
            else:
                model.eval()
                t_valid = time.perf_counter()
                with torch.no_grad():
                    entry["valid"] = metric = float(validate(model))
                entry["valid_seconds"] = time.perf_counter() - t_valid
                if metric > best_metric:
                    best_metric, best_epoch = metric, epoch
                    best_state = {
                        k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()
                    }
            history.append(entry)
            log.info(
                "epoch %d: loss %.5f, %.0f events/s, %.1fs, valid %s",
                epoch,
                mean_loss,
                entry["events_per_s"],
                seconds,
                entry["valid"],
            )
            if validate is not None and epoch - best_epoch >= config.patience:
                log.info("no better validation for %d epochs, stopping", config.patience)
                break

        if best_state is not None and best_epoch != history[-1]["epoch"]:
            model.load_state_dict(best_state)
    return TrainResult(model.eval(), history, best_epoch, config, str(dev))


def plot_history(history: list[dict[str, Any]], path: str | Path) -> Path:
    """Training curves (loss, validation metric, events/s per epoch) to a PNG."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    epochs = [h["epoch"] for h in history]
    fig = Figure(figsize=(10, 3.2), layout="constrained")
    FigureCanvasAgg(fig)
    ax_loss, ax_valid, ax_speed = fig.subplots(1, 3)
    ax_loss.plot(epochs, [h["loss"] for h in history], marker="o")
    ax_loss.set(title="training loss", xlabel="epoch")
    valid = [(h["epoch"], h["valid"]) for h in history if h.get("valid") is not None]
    if valid:
        ax_valid.plot(*zip(*valid, strict=True), marker="o", color="tab:green")
    else:  # a split without a validation set (e.g. Diginetica's): fixed epochs
        ax_valid.text(0.5, 0.5, "no validation set", ha="center", va="center", color="gray")
        ax_valid.set(xticks=[], yticks=[])
    ax_valid.set(title="validation metric", xlabel="epoch")
    ax_speed.bar(epochs, [h["events_per_s"] for h in history], color="tab:gray")
    ax_speed.set(title="events / s", xlabel="epoch")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    return path
