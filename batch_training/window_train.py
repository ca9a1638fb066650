"""History-window training of GRU4Rec, as ReChorus trains its sequential models.

Every position of a user's training sequence is one example (batch_training.windows): its
last `max_history` items run through a GRU that starts at zero, with backpropagation through
the window; the final hidden state, projected back to the embedding size, scores the target
and `n_sample` uniform negatives the user never clicked (redrawn every epoch) by dot products
with the same item embeddings. BPR loss, Adam with L2 on the weights (not the biases), the
examples shuffled every epoch, early stopping on the validation metric.

Beside ReChorus's BPR the mode takes `loss: "cross-entropy"`: a softmax over the target and
its `n_sample` negatives, or, with `n_sample: 0`, over every item (the full catalogue, which
is cheap next to the GRU's pass over the window for catalogues of a few thousand items).

ReChorus's GRU4Rec: embedding -> GRU -> Linear(hidden -> embedding) -> dot with the item
embeddings. The artifact has no projection, so the trained model is folded into
`batch_training.model.GRU4Rec` (an embedding input, output weights and biases):
score_i = E_i . (W h + b) = (E W)_i . h + (E b)_i, so output_weight = E W, output_bias = E b.
The folded model, one GRU step per click from a zero state, scores exactly as the window model.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import tqdm

from batch_training import checkpoint as checkpoint_io
from batch_training.checkpoint import fingerprint
from batch_training.config import TrainConfig
from batch_training.early_stop import BestEpoch
from batch_training.model import GRU4Rec
from batch_training.train import Sessions, TrainResult, resolve_device
from batch_training.windows import NegativeDrawer, Windows, build_windows

log = logging.getLogger(__name__)


class WindowGRU4Rec(nn.Module):
    """ReChorus's GRU4Rec: item embedding -> GRU over the window -> Linear -> dot products."""

    def __init__(self, n_items: int, embedding: int, hidden: int) -> None:
        super().__init__()
        self.n_items = int(n_items)
        self.item_embedding = nn.Embedding(n_items, embedding)
        self.rnn = nn.GRU(embedding, hidden, batch_first=True)
        self.out = nn.Linear(hidden, embedding)
        # ReChorus's init: N(0, 0.01) for embeddings and linear layers, torch's for the GRU.
        for param in (self.item_embedding.weight, self.out.weight, self.out.bias):
            nn.init.normal_(param, mean=0.0, std=0.01)

    def encode(self, windows: Tensor, lengths: Tensor) -> Tensor:
        """windows (B, L) left-aligned, PAD after `lengths` (B,) items -> final state (B, H).

        The GRU runs over the padding too, and each row's state is read at its last item:
        the padding comes after the items, so it never reaches their states (nor, in the
        backward, their gradients): the same result as packing the windows, whose
        bookkeeping made a step ~1.7x slower on the CPU."""
        x = self.item_embedding(windows.clamp(min=0).long())  # (B, L, E)
        states, _ = self.rnn(x)  # (B, L, H), from a zero state
        return states[torch.arange(len(lengths), device=x.device), lengths.to(x.device) - 1]

    def forward(self, windows: Tensor, lengths: Tensor, items: Tensor | None = None) -> Tensor:
        """Scores (B, C) of items (B, C) after each window; items None: of every item."""
        query = self.out(self.encode(windows, lengths))  # (B, E)
        if items is None:
            return query @ self.item_embedding.weight.T  # (B, n_items)
        return (query[:, None, :] * self.item_embedding(items)).sum(-1)

    @torch.no_grad()
    def to_gru4rec(self) -> GRU4Rec:
        """The same scorer as a `GRU4Rec` (embedding input, one layer), in eval mode."""
        emb = self.item_embedding.weight.detach().cpu().float()  # (n_items, E)
        model = GRU4Rec(
            self.n_items,
            (self.rnn.hidden_size,),
            embedding=self.item_embedding.embedding_dim,
            constrained_embedding=False,
        )
        rnn = {k: v.detach().cpu().float().numpy() for k, v in self.rnn.named_parameters()}
        model.load_weights(
            {
                "gru.0.weight_ih": rnn["weight_ih_l0"],
                "gru.0.weight_hh": rnn["weight_hh_l0"],
                "gru.0.bias_ih": rnn["bias_ih_l0"],
                "gru.0.bias_hh": rnn["bias_hh_l0"],
                "item_embedding": emb.numpy(),
                # float64 products: the fold adds no rounding beyond float32's own
                "output_weight": (emb.double() @ self.out.weight.cpu().double()).float().numpy(),
                "output_bias": (emb.double() @ self.out.bias.cpu().double()).float().numpy(),
            }
        )
        return model.eval()


def bpr_loss(scores: Tensor) -> Tensor:
    """Per-example BPR, scores (B, 1 + n_neg) with the target first: mean over negatives of
    -log sigmoid(target - negative) (with one negative, ReChorus's loss exactly)."""
    return -F.logsigmoid(scores[:, :1] - scores[:, 1:]).mean(dim=1)


def softmax_loss(scores: Tensor, targets: Tensor) -> Tensor:
    """Per-example cross-entropy of scores (B, C); `targets` (B,) names each row's true column."""
    return F.cross_entropy(scores, targets, reduction="none")


def _optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """Adam, L2 on the weights only: ReChorus exempts every parameter named "bias"."""
    named = list(model.named_parameters())
    weights = [p for n, p in named if "bias" not in n]
    biases = [p for n, p in named if "bias" in n]
    groups = [{"params": weights}, {"params": biases, "weight_decay": 0.0}]
    return torch.optim.Adam(groups, lr=config.learning_rate, weight_decay=config.weight_decay)


def _epoch(
    model: WindowGRU4Rec,
    optimizer: torch.optim.Optimizer,
    windows: Windows,
    negatives: np.ndarray | None,
    order: np.ndarray,
    config: TrainConfig,
    dev: torch.device,
    bar: tqdm,
) -> float:
    """One pass over the examples in `order`; returns the mean loss per example.
    negatives None: the targets are scored against every item (a full softmax)."""
    items = torch.from_numpy(windows.items)
    lengths = torch.from_numpy(windows.lengths)
    targets = torch.from_numpy(windows.targets)
    columns = None
    if negatives is not None:  # the target first, then its negatives
        columns = torch.from_numpy(np.concatenate([windows.targets[:, None], negatives], axis=1))
    column_0 = torch.zeros(config.batch_size, dtype=torch.long, device=dev)
    loss_sum, t0 = 0.0, time.perf_counter()
    for i, at in enumerate(range(0, len(order), config.batch_size)):
        rows = torch.from_numpy(order[at : at + config.batch_size])
        # Windows of a batch are cut to its longest one: packing ignores the padding anyway.
        n = lengths[rows]
        longest = int(n.max())
        window = items[rows, :longest].to(dev)
        if columns is None:  # every item, the target at its own index
            scores, truth = model(window, n), targets[rows].to(dev)  # (B, n_items)
        else:  # (B, 1 + n_sample), the target in column 0
            scores, truth = model(window, n, columns[rows].to(dev)), column_0[: len(rows)]
        loss = (bpr_loss(scores) if config.loss == "bpr" else softmax_loss(scores, truth)).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        loss_sum += loss.item() * len(rows)
        bar.update(len(rows))
        if i % 50 == 0:
            done = at + len(rows)
            mean = loss_sum / done
            if not math.isfinite(mean):
                raise FloatingPointError(f"loss is {mean}; try a lower learning_rate")
            speed = done / (time.perf_counter() - t0)
            bar.set_postfix(loss=f"{mean:.4f}", ex_s=f"{speed:,.0f}")
    return loss_sum / max(len(order), 1)


class _Resumable:
    """Saves the run after each epoch to `path` and resumes from it (None: neither)."""

    def __init__(self, path: Path | None, expected: dict[str, Any], dev: torch.device) -> None:
        self.path = path
        self.expected = expected
        self.cuda = dev.type == "cuda"  # then CUDA's generator is saved and restored too

    def resume(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        rng: np.random.Generator,
        best: BestEpoch,
    ) -> list[dict[str, Any]]:
        """Load the saved state into these objects; the saved history ([] if none)."""
        if self.path is None or not self.path.exists():
            return []
        state = checkpoint_io.load(self.path, self.expected)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        rng.bit_generator.state = state["numpy_rng"]
        torch.set_rng_state(state["torch_rng"])
        if self.cuda and state.get("cuda_rng") is not None:
            torch.cuda.set_rng_state(state["cuda_rng"])
        best.load_state_dict(state["best"])
        history = state["history"]
        log.info("resuming from %s after epoch %d", self.path, history[-1]["epoch"])
        return history

    def save(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        rng: np.random.Generator,
        best: BestEpoch,
        history: list[dict[str, Any]],
    ) -> None:
        if self.path is None:
            return
        state = {
            "fingerprint": self.expected,
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "numpy_rng": rng.bit_generator.state,
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state() if self.cuda else None,
            "best": best.state_dict(),
            "history": history,
        }
        checkpoint_io.save(self.path, state)


def train_windows(
    train_data: Sessions,
    config: TrainConfig,
    *,
    n_items: int,
    validate: Callable[[GRU4Rec], float] | None = None,
    device: str = "auto",
    progress: bool = True,
    checkpoint: Path | None = None,
) -> TrainResult:
    """Train in the history-window mode; `validate(model)` (higher is better) is called on the
    folded GRU4Rec after every epoch and drives early stopping. Returns the best validated
    epoch's model (the last epoch's without `validate`), folded, in eval mode.

    checkpoint: a file the run's state is saved to after every epoch; if it exists, the run
    goes on from it (batch_training/checkpoint.py)."""
    if config.mode != "window":
        raise ValueError(f"train_windows needs mode='window', got {config.mode!r}")
    dev = resolve_device(device)
    windows = build_windows(train_data.items, train_data.offsets, config.max_history)
    if len(windows) == 0:
        raise ValueError("training data: no sequence has two items, nothing to learn from")
    drawer = NegativeDrawer(train_data.items, train_data.offsets, n_items)
    rng = np.random.default_rng(config.seed)
    rng_devices = [torch.cuda.current_device()] if dev.type == "cuda" else []
    best = BestEpoch(config.patience, validated=validate is not None)
    with torch.random.fork_rng(devices=rng_devices):
        torch.manual_seed(config.seed)
        model = WindowGRU4Rec(n_items, config.embedding, config.layers[0]).to(dev)
        optimizer = _optimizer(model, config)
        run = _Resumable(checkpoint, fingerprint(config, n_items, train_data.items), dev)
        history = run.resume(model, optimizer, rng, best)
        first = history[-1]["epoch"] + 1 if history else 1
        if history and best.should_stop(history[-1]["epoch"]):
            first = config.n_epochs + 1  # it had stopped early: nothing left to train
        for epoch in range(first, config.n_epochs + 1):
            model.train()
            t0 = time.perf_counter()
            negatives = None  # n_sample 0: a softmax over every item, nothing to draw
            if config.n_sample:
                negatives = drawer.draw(windows.users, config.n_sample, rng)  # (n_ex, n_sample)
            order = rng.permutation(len(windows))
            desc = f"epoch {epoch}/{config.n_epochs}"
            with tqdm(
                total=len(windows), desc=desc, unit="ex", unit_scale=True, disable=not progress
            ) as bar:
                mean_loss = _epoch(model, optimizer, windows, negatives, order, config, dev, bar)
            seconds = time.perf_counter() - t0
            entry: dict[str, Any] = {
                "epoch": epoch,
                "loss": mean_loss,
                "events": len(windows),
                "seconds": seconds,
                "events_per_s": len(windows) / seconds,
                "valid": None,
            }
            if validate is not None:
                model.eval()
                t_valid = time.perf_counter()
                with torch.no_grad():
                    entry["valid"] = float(validate(model.to_gru4rec().to(dev)))
                entry["valid_seconds"] = time.perf_counter() - t_valid
            best.record(epoch, entry["valid"], model)
            history.append(entry)
            run.save(model, optimizer, rng, best, history)
            log.info(
                "epoch %d: loss %.5f, %.0f examples/s, %.1fs, valid %s",
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
    return TrainResult(model.to_gru4rec().to(dev), history, best.epoch, config, str(dev))
