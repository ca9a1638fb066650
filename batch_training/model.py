"""GRU4Rec: stacked GRU cells over one item per step, scored against the output weights.

The hidden state is data owned by the caller: `init_hidden`, then `step` per event. Layers
follow torch's GRUCell (gates r, z, n), which is also the artifact's step equation, so an
exported model scores identically in the numpy serving path.

Three ways to read the input item (`input_kind`):
- "shared": the output weight row of the item is the input (constrained embedding);
- "embedding": a separate item embedding feeds the first layer;
- "onehot": the first layer's input weights are indexed by the item (a row lookup, never a
  dense one-hot product).

Item-indexed matrices are looked up with `F.embedding(..., sparse=True)` when the model is
trained by the authors' Adagrad: a step then touches only the rows of its items.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from batch_training.config import TrainConfig

if TYPE_CHECKING:
    from schemas.artifact import Artifact


def init_uniform(tensor: Tensor, fan_in: int, fan_out: int) -> None:
    """The authors' initialisation: U(-s, s) with s = sqrt(6 / (fan_in + fan_out))."""
    sigma = math.sqrt(6.0 / (fan_in + fan_out))
    with torch.no_grad():
        tensor.uniform_(-sigma, sigma)


def init_gru_cell(
    weight_ih: Tensor,
    weight_hh: Tensor,
    bias_ih: Tensor,
    bias_hh: Tensor,
    *,
    item_major: bool = False,
) -> None:
    """Each of the r, z, n gate blocks is initialised from its own (in, H) dimensions.

    weight_ih is (3H, in), or (in, 3H) when `item_major` (the one-hot first layer).
    """
    hidden = weight_hh.shape[1]
    in_dim = weight_ih.shape[0] if item_major else weight_ih.shape[1]
    for block in weight_ih.split(hidden, dim=1 if item_major else 0):
        init_uniform(block, in_dim, hidden)
    for block in weight_hh.split(hidden, dim=0):
        init_uniform(block, hidden, hidden)
    with torch.no_grad():
        bias_ih.zero_()
        bias_hh.zero_()


def dropout_mask(like: Tensor, p: float) -> Tensor | None:
    """Inverted dropout's mask for a tensor like `like`: 1 / (1 - p) with probability 1 - p,
    else 0; None when p is 0 (nothing to drop).

    Drawn as uniform < 1 - p: the distribution of F.dropout's bernoulli masks, several times
    faster to draw on the CPU. Training's hand-written step (batch_training.fast_step) draws
    its masks here too, so both steps drop the same units for a seed.
    """
    if p <= 0.0:
        return None
    keep = 1.0 - p
    if keep <= 0.0:
        return torch.zeros_like(like)
    return torch.rand_like(like).lt_(keep).div_(keep)


def dropout(x: Tensor, p: float, training: bool) -> Tensor:
    """Inverted dropout with `dropout_mask` (identity in eval mode or with p = 0)."""
    mask = dropout_mask(x, p) if training else None
    return x if mask is None else x * mask


def gru_update(gi: Tensor, gh: Tensor, h: Tensor) -> Tensor:
    """torch GRUCell's update from the input and hidden projections, gates in r, z, n order.

    gi, gh: (B, 3H) = x W_ih^T + b_ih and h W_hh^T + b_hh; h: (B, H).
    """
    i_r, i_z, i_n = gi.chunk(3, dim=1)
    h_r, h_z, h_n = gh.chunk(3, dim=1)
    r = torch.sigmoid(i_r + h_r)
    z = torch.sigmoid(i_z + h_z)
    n = torch.tanh(i_n + r * h_n)
    return (1.0 - z) * n + z * h


class GRU4Rec(nn.Module):
    def __init__(
        self,
        n_items: int,
        layers: tuple[int, ...] | list[int] = (100,),
        *,
        embedding: int = 0,
        constrained_embedding: bool = True,
        dropout_p_embed: float = 0.0,
        dropout_p_hidden: float = 0.0,
        sparse_grad: bool = True,
    ) -> None:
        super().__init__()
        if n_items < 1 or not layers or min(layers) < 1:
            raise ValueError(f"GRU4Rec needs n_items >= 1 and positive layers: {n_items}, {layers}")
        self.n_items = int(n_items)
        self.layers = tuple(int(x) for x in layers)
        self.dropout_p_embed = float(dropout_p_embed)
        self.dropout_p_hidden = float(dropout_p_hidden)
        self.sparse_grad = bool(sparse_grad)
        self.embedding_dim = 0
        if constrained_embedding:
            self.input_kind, in_dim = "shared", self.layers[-1]
        elif embedding > 0:
            self.input_kind, in_dim = "embedding", int(embedding)
            self.embedding_dim = int(embedding)
        else:
            self.input_kind, in_dim = "onehot", self.n_items

        if self.input_kind == "embedding":
            self.item_embedding = nn.Parameter(torch.empty(self.n_items, self.embedding_dim))
        if self.input_kind == "onehot":
            # First layer written out: its input weights are stored item-major (n_items, 3H),
            # the transpose of GRUCell's weight_ih, so a step reads B rows.
            h0 = self.layers[0]
            self.onehot_weight_ih = nn.Parameter(torch.empty(self.n_items, 3 * h0))
            self.onehot_weight_hh = nn.Parameter(torch.empty(3 * h0, h0))
            self.onehot_bias_ih = nn.Parameter(torch.empty(3 * h0))
            self.onehot_bias_hh = nn.Parameter(torch.empty(3 * h0))
        first_cell = 1 if self.input_kind == "onehot" else 0
        self.cells = nn.ModuleList()
        for i in range(first_cell, len(self.layers)):
            cell_in = in_dim if i == 0 else self.layers[i - 1]
            self.cells.append(nn.GRUCell(cell_in, self.layers[i]))
        self.output_weight = nn.Parameter(torch.empty(self.n_items, self.layers[-1]))
        # (n_items, 1) so that a sparse row lookup works like for the weights.
        self.output_bias = nn.Parameter(torch.empty(self.n_items, 1))
        self.reset_parameters()

    @classmethod
    def from_config(cls, n_items: int, config: TrainConfig) -> GRU4Rec:
        return cls(
            n_items,
            config.layers,
            embedding=config.embedding,
            constrained_embedding=config.constrained_embedding,
            dropout_p_embed=config.dropout_p_embed,
            dropout_p_hidden=config.dropout_p_hidden,
            # torch's Adam takes dense gradients only; it then updates every row, as ReChorus.
            sparse_grad=config.optimizer == "adagrad" and config.sparse_updates,
        )

    def reset_parameters(self) -> None:
        if self.input_kind == "embedding":
            init_uniform(self.item_embedding, self.n_items, self.embedding_dim)
        if self.input_kind == "onehot":
            init_gru_cell(
                self.onehot_weight_ih,
                self.onehot_weight_hh,
                self.onehot_bias_ih,
                self.onehot_bias_hh,
                item_major=True,
            )
        for cell in self.cells:
            init_gru_cell(cell.weight_ih, cell.weight_hh, cell.bias_ih, cell.bias_hh)
        init_uniform(self.output_weight, self.n_items, self.layers[-1])
        with torch.no_grad():
            self.output_bias.zero_()

    # --- the step -------------------------------------------------------------------------

    def _rows(self, weight: Tensor, items: Tensor) -> Tensor:
        return F.embedding(items, weight, sparse=self.sparse_grad and self.training)

    def init_hidden(self, batch_size: int) -> list[Tensor]:
        device = self.output_weight.device
        return [torch.zeros(batch_size, h, device=device) for h in self.layers]

    def step(self, items: Tensor, hidden: list[Tensor]) -> tuple[Tensor, list[Tensor]]:
        """One event per lane: items (B,) -> (last layer output (B, H_last), new hidden).

        In training mode the dropped-out output of a layer is also its carried state, as in
        the authors' code; in eval mode there is no dropout.
        """
        new_hidden: list[Tensor] = []
        if self.input_kind == "onehot":
            gi = self._rows(self.onehot_weight_ih, items) + self.onehot_bias_ih  # (B, 3H0)
            gh = F.linear(hidden[0], self.onehot_weight_hh, self.onehot_bias_hh)
            x = gru_update(gi, gh.to(gi.dtype), hidden[0])
            # The first layer stands in for the embedding here, so it takes the embed dropout.
            x = dropout(x, self.dropout_p_embed, self.training).float()
            new_hidden.append(x)
        else:
            table = self.output_weight if self.input_kind == "shared" else self.item_embedding
            return self.step_embedded(self._rows(table, items), hidden)
        return self._cells(x, hidden, new_hidden)

    def step_embedded(self, rows: Tensor, hidden: list[Tensor]) -> tuple[Tensor, list[Tensor]]:
        """`step` from the items' input rows (B, in_dim) already looked up ("shared" and
        "embedding" inputs): training gathers each step's item rows once (train._RowBatch)."""
        if self.input_kind == "onehot":
            raise ValueError("a one-hot first layer has no input rows; use step()")
        x = dropout(rows, self.dropout_p_embed, self.training)
        return self._cells(x, hidden, [])

    def _cells(
        self, x: Tensor, hidden: list[Tensor], new_hidden: list[Tensor]
    ) -> tuple[Tensor, list[Tensor]]:
        offset = len(new_hidden)
        for i, cell in enumerate(self.cells):
            x = cell(x, hidden[offset + i])
            # Autocast computes the cell in bfloat16; the carried state stays float32.
            x = dropout(x, self.dropout_p_hidden, self.training).float()
            new_hidden.append(x)
        return x, new_hidden

    def score_all(self, output: Tensor) -> Tensor:
        """(B, H_last) -> (B, n_items): output @ Wy^T + by."""
        return F.linear(output, self.output_weight, self.output_bias.squeeze(1))

    def score_items(self, output: Tensor, item_idx: Tensor) -> Tensor:
        """(B, H_last) x (C,) -> (B, C): scores of the given items only (sparse rows)."""
        weight = self._rows(self.output_weight, item_idx)  # (C, H_last)
        bias = self._rows(self.output_bias, item_idx).squeeze(1)  # (C,)
        return F.linear(output, weight, bias)

    # --- plain arrays in and out (the artifact's names and layout) ---------------------------

    def export_weights(self) -> dict[str, np.ndarray]:
        """float32 arrays named and shaped as in `schemas.artifact` (without item_support)."""

        def arr(t: Tensor) -> np.ndarray:
            return t.detach().to("cpu", torch.float32).numpy().copy()

        out: dict[str, np.ndarray] = {}
        layer = 0
        if self.input_kind == "onehot":
            out["gru.0.weight_ih"] = arr(self.onehot_weight_ih.t())  # (3H0, n_items)
            out["gru.0.weight_hh"] = arr(self.onehot_weight_hh)
            out["gru.0.bias_ih"] = arr(self.onehot_bias_ih)
            out["gru.0.bias_hh"] = arr(self.onehot_bias_hh)
            layer = 1
        for i, cell in enumerate(self.cells):
            out[f"gru.{layer + i}.weight_ih"] = arr(cell.weight_ih)
            out[f"gru.{layer + i}.weight_hh"] = arr(cell.weight_hh)
            out[f"gru.{layer + i}.bias_ih"] = arr(cell.bias_ih)
            out[f"gru.{layer + i}.bias_hh"] = arr(cell.bias_hh)
        if self.input_kind == "embedding":
            out["item_embedding"] = arr(self.item_embedding)
        out["output_weight"] = arr(self.output_weight)
        out["output_bias"] = arr(self.output_bias.squeeze(1))
        return out

    @torch.no_grad()
    def load_weights(self, weights: dict[str, np.ndarray]) -> None:
        """The inverse of `export_weights`; shapes must match this model."""

        def put(param: Tensor, name: str, transpose: bool = False) -> None:
            if name not in weights:
                raise KeyError(f"weight {name!r} missing")
            value = torch.as_tensor(np.asarray(weights[name], dtype=np.float32))
            value = value.t() if transpose else value
            value = value.reshape(param.shape) if name == "output_bias" else value
            if tuple(value.shape) != tuple(param.shape):
                raise ValueError(
                    f"weight {name!r} has shape {tuple(value.shape)}, model needs "
                    f"{tuple(param.shape)}"
                )
            param.copy_(value)

        layer = 0
        if self.input_kind == "onehot":
            put(self.onehot_weight_ih, "gru.0.weight_ih", transpose=True)
            put(self.onehot_weight_hh, "gru.0.weight_hh")
            put(self.onehot_bias_ih, "gru.0.bias_ih")
            put(self.onehot_bias_hh, "gru.0.bias_hh")
            layer = 1
        for i, cell in enumerate(self.cells):
            put(cell.weight_ih, f"gru.{layer + i}.weight_ih")
            put(cell.weight_hh, f"gru.{layer + i}.weight_hh")
            put(cell.bias_ih, f"gru.{layer + i}.bias_ih")
            put(cell.bias_hh, f"gru.{layer + i}.bias_hh")
        if self.input_kind == "embedding":
            put(self.item_embedding, "item_embedding")
        put(self.output_weight, "output_weight")
        put(self.output_bias, "output_bias")

    @classmethod
    def from_artifact(cls, artifact: Artifact, device: str | torch.device = "cpu") -> GRU4Rec:
        """Rebuild the torch model from a (verified) artifact, in eval mode."""
        m = artifact.manifest
        model = cls(
            m.n_items,
            m.layers,
            embedding=m.embedding_dim,
            constrained_embedding=m.input_kind == "shared",
        )
        model.load_weights(artifact.weights)
        return model.to(device).eval()
