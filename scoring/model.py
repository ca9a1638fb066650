"""A servable model: an artifact's weights, its item vocabulary and the batched GRU step.

Everything that scores an artifact goes through `ServingModel`: the worker, the hot swap,
replay, `evaluate --model` and the retrain gate (`batch_training.evaluate.ArtifactScorer`),
so what is measured offline is what is served. The GRU equations are the ones fixed in
`schemas.artifact` (torch GRUCell conventions); `scores` equals the torch model's output for
the same prefix (tests/test_scoring.py), and `recommend` returns the same top-K from one BLAS
product and a top-k pass, or from FAISS (`scoring.search`).

State layout: one float32 array (B, n_layers, H_max) per batch; layer l uses the first
layers[l] columns. A row of zeros is the start of a session. An unknown item (index -1)
leaves its row unchanged, so a session whose items were all unknown keeps an all-zero state
and gets the popularity fallback from `recommend`.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence

import faiss
import numpy as np

from schemas.artifact import Artifact
from scoring import search, topk
from scoring.search import ServingOptions, first_valid, pad_ragged


def _sigmoid(x: np.ndarray) -> np.ndarray:
    # The tanh form never overflows, unlike 1 / (1 + exp(-x)) for large negative x.
    return 0.5 * (1.0 + np.tanh(0.5 * x))


class ServingModel:
    """One model version ready to serve: GRU weights, item vocabulary and its search."""

    def __init__(self, artifact: Artifact, options: ServingOptions) -> None:
        manifest = artifact.manifest
        w = artifact.weights
        self.artifact = artifact
        self.options = options
        self.version: str = manifest.version
        self.n_items: int = manifest.n_items
        self.items: tuple[str, ...] = artifact.items
        self.layers: tuple[int, ...] = manifest.layers
        self.input_kind: str = manifest.input_kind
        self.hidden_max: int = max(self.layers)
        self.loaded_at: float = time.time()
        self._index_of = {item: i for i, item in enumerate(self.items)}

        f32 = np.float32
        self.output_weight = np.ascontiguousarray(w["output_weight"], dtype=f32)  # (n, H_last)
        self.output_bias = np.ascontiguousarray(w["output_bias"], dtype=f32)  # (n,)
        self.item_support = np.asarray(w["item_support"], dtype=np.float64)
        self.popular = np.argsort(-self.item_support, kind="stable").astype(np.int64)

        # Per layer: W_ih.T (in, 3H), W_hh.T (H, 3H); r and z hidden biases folded into
        # the input-gate bias; the n hidden bias stays apart since r multiplies it.
        self._w_ih_t: list[np.ndarray | None] = []
        self._w_hh_t: list[np.ndarray] = []
        self._b_gi: list[np.ndarray] = []
        self._b_hn: list[np.ndarray] = []
        for layer, hidden in enumerate(self.layers):
            b_ih = np.asarray(w[f"gru.{layer}.bias_ih"], dtype=f32)
            b_hh = np.asarray(w[f"gru.{layer}.bias_hh"], dtype=f32)
            b_gi = b_ih.copy()
            b_gi[: 2 * hidden] += b_hh[: 2 * hidden]
            self._b_gi.append(b_gi)
            self._b_hn.append(np.ascontiguousarray(b_hh[2 * hidden :]))
            w_hh, w_ih = w[f"gru.{layer}.weight_hh"], w[f"gru.{layer}.weight_ih"]
            self._w_hh_t.append(np.ascontiguousarray(w_hh.T, dtype=f32))
            self._w_ih_t.append(np.ascontiguousarray(w_ih.T, dtype=f32))

        # First-layer input: the gate pre-activations of item i, x_i @ W_ih0.T + bias,
        # depend on the item only, so keep them as a lookup table (n, 3H0) when it fits.
        # For one-hot input that table is W_ih0.T itself (a row lookup, no matmul).
        if self.input_kind == "onehot":
            self._input_emb = None
        elif self.input_kind == "shared":
            self._input_emb = self.output_weight
        else:
            self._input_emb = np.ascontiguousarray(w["item_embedding"], dtype=f32)
        table_bytes = self.n_items * 3 * self.layers[0] * 4
        self._gate_table: np.ndarray | None = None
        if self._input_emb is None:
            self._gate_table = self._w_ih_t[0] + self._b_gi[0]
            self._w_ih_t[0] = None  # the table replaces it
        elif table_bytes <= options.gate_table_max_bytes:
            self._gate_table = self._input_emb @ self._w_ih_t[0] + self._b_gi[0]

        self.exact = self.n_items <= options.exact_max_items
        # Exact search by one BLAS product (no index), or by a FAISS index (flat or HNSW).
        self.dense = self.exact and options.exact_search == "blas"
        self.index = None if self.dense else self._build_index()
        # The dense search's operand: items as columns [Wy_i; by_i] (H_last + 1, n), so that
        # a product with the queries [h, 1] gives the scores, bias included; in blocks of
        # items (`topk.top_k_blocks`).
        self._item_blocks = (
            topk.item_blocks(search.item_vectors(self.output_weight, self.output_bias).T)
            if self.dense
            else []
        )

    # --- construction -------------------------------------------------------------------

    @classmethod
    def from_artifact(cls, artifact: Artifact, **options: object) -> ServingModel:
        """Build the serving model of a verified artifact (see `schemas.artifact.read_artifact`).

        Options are the fields of `ServingOptions`; unknown names are refused.
        """
        opts = ServingOptions(**options)  # type: ignore[arg-type]
        faiss.omp_set_num_threads(max(opts.faiss_threads, 1))
        return cls(artifact, opts)

    def _build_index(self) -> faiss.Index | None:
        if not self.options.search_index:
            return None
        vectors = search.item_vectors(self.output_weight, self.output_bias)
        return search.build_index(vectors, self.options, self.version)

    # --- items ---------------------------------------------------------------------------

    def index_of(self, external_ids: Iterable[str]) -> np.ndarray:
        """External item ids -> internal indices (int64), -1 for items the model does not know."""
        get = self._index_of.get
        return np.fromiter((get(i, -1) for i in external_ids), dtype=np.int64)

    def index_one(self, external_id: str) -> int:
        """One external id's internal index, -1 if the model does not know it."""
        return self._index_of.get(external_id, -1)

    def item_ids(self, indices: Iterable[int]) -> list[str]:
        items = self.items
        return [items[i] for i in indices if i >= 0]

    # --- the GRU -------------------------------------------------------------------------

    def initial_state(self, batch_size: int) -> np.ndarray:
        return np.zeros((batch_size, len(self.layers), self.hidden_max), dtype=np.float32)

    def _input_gates(self, items: np.ndarray) -> np.ndarray:
        """Known item indices (b,) -> first-layer input gate pre-activations (b, 3H0)."""
        if self._gate_table is not None:
            return self._gate_table[items]
        assert self._input_emb is not None and self._w_ih_t[0] is not None
        return self._input_emb[items] @ self._w_ih_t[0] + self._b_gi[0]

    def step(self, state: np.ndarray, item_idx: np.ndarray | Sequence[int]) -> np.ndarray:
        """One GRU step for every row: state (B, L, H_max), items (B,) -> new state.

        Rows whose item is -1 (unknown) are returned unchanged. The input is not modified.
        """
        items = np.asarray(item_idx, dtype=np.int64)
        if state.shape[0] != items.shape[0]:
            raise ValueError(f"state has {state.shape[0]} rows, items {items.shape[0]}")
        out = np.array(state, dtype=np.float32, copy=True)
        rows = np.flatnonzero(items >= 0)
        if rows.size == 0:
            return out
        all_rows = rows.size == items.shape[0]
        x = None  # the previous layer's new state, (b, H_{l-1})
        for layer, hidden in enumerate(self.layers):
            h = out[:, layer, :hidden] if all_rows else out[rows, layer, :hidden]  # (b, H)
            if x is None:
                gi = self._input_gates(items if all_rows else items[rows])  # (b, 3H)
            else:
                gi = x @ self._w_ih_t[layer] + self._b_gi[layer]
            gh = h @ self._w_hh_t[layer]  # (b, 3H)
            r = _sigmoid(gi[:, :hidden] + gh[:, :hidden])
            z = _sigmoid(gi[:, hidden : 2 * hidden] + gh[:, hidden : 2 * hidden])
            n = np.tanh(gi[:, 2 * hidden :] + r * (gh[:, 2 * hidden :] + self._b_hn[layer]))
            x = n + z * (h - n)  # == (1 - z) * n + z * h
            if all_rows:
                out[:, layer, :hidden] = x
            else:
                out[rows, layer, :hidden] = x
        return out

    def run(
        self, sequences: Sequence[Sequence[int]], state: np.ndarray | None = None
    ) -> np.ndarray:
        """The state after feeding each row its whole item sequence (index lists, -1 skipped).

        Used to rebuild a session's state from its history after a model swap.
        """
        padded = pad_ragged(sequences, len(sequences))
        state = self.initial_state(len(sequences)) if state is None else state
        if padded is None or padded.size == 0:
            return state
        for t in range(padded.shape[1]):
            state = self.step(state, padded[:, t])
        return state

    def last_hidden(self, state: np.ndarray) -> np.ndarray:
        return state[:, -1, : self.layers[-1]]

    # --- scoring -------------------------------------------------------------------------

    def scores(self, state: np.ndarray) -> np.ndarray:
        """Exact scores of every item, (B, n_items): h_last @ Wy.T + by (`search.scores`)."""
        return search.scores(self.last_hidden(state), self.output_weight, self.output_bias)

    def _dense_top_k(
        self, state: np.ndarray, k: int, exclude: np.ndarray | None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-k of `scores` (equal up to float rounding) by products with blocks of items."""
        query = search.queries(self.last_hidden(state))
        return topk.top_k_blocks(query, self._item_blocks, k, exclude)

    @staticmethod
    def empty_rows(state: np.ndarray) -> np.ndarray:
        """Rows that never saw a known item: an all-zero state (B,) bool."""
        return ~state.reshape(state.shape[0], -1).any(axis=1)

    def recommend(
        self,
        state: np.ndarray,
        k: int,
        exclude: Sequence[Sequence[int]] | np.ndarray | None = None,
        *,
        fallback: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-k item indices and scores per row, (B, k) each, best first.

        exclude: per row, item indices never to return (ragged lists or (B, E) padded with
        -1), e.g. the items already in the session. Over-fetching by the longest row makes
        sure k items remain.
        fallback: rows to answer by popularity (item_support, highest first; the scores are
        then the support counts). Default: the rows with an all-zero state (no known item
        yet). Where fewer than k items remain, the tail is -1 with score -inf.
        """
        batch = state.shape[0]
        excl = pad_ragged(exclude, batch)
        pop = self.empty_rows(state) if fallback is None else np.asarray(fallback, dtype=bool)
        if self.index is None and not (self.dense and self.options.search_index):
            raise RuntimeError(f"model {self.version} was loaded without a search index")
        model_rows, pop_rows = np.flatnonzero(~pop), np.flatnonzero(pop)
        if self.dense and not pop_rows.size:  # the usual batch: one product, one partial sort
            return self._dense_top_k(state, k, excl)

        width = 0 if excl is None else excl.shape[1]
        fetch = min(self.n_items, k + width)
        labels = np.full((batch, fetch), -1, dtype=np.int64)
        found = np.full((batch, fetch), -np.inf, dtype=np.float32)
        if model_rows.size:
            hidden = self.last_hidden(state[model_rows])
            if self.dense:
                rows_excl = None if excl is None else excl[model_rows]
                i, d = self._dense_top_k(state[model_rows], fetch, rows_excl)
            else:
                d, i = search.search(self.index, hidden, fetch, self.options)
            labels[model_rows] = i
            found[model_rows] = d
        if pop_rows.size:
            labels[pop_rows] = self.popular[:fetch]
            found[pop_rows] = self.item_support[self.popular[:fetch]].astype(np.float32)
        return search.top_k_excluding(labels, found, excl, k)

    def recommend_exhaustive(
        self,
        state: np.ndarray,
        k: int,
        exclude: Sequence[Sequence[int]] | np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """The naive path, kept as the benchmarks' baseline: score every item, sort them all.

        Same answers as `recommend` with exact search (ties aside).
        """
        batch = state.shape[0]
        scores = self.scores(state)
        pop = self.empty_rows(state)
        if pop.any():
            scores[pop] = self.item_support.astype(np.float32)
        excl = pad_ragged(exclude, batch)
        if excl is not None:
            rows, cols = np.nonzero(excl >= 0)
            scores[rows, excl[rows, cols]] = -np.inf
        order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        top_scores = np.take_along_axis(scores, order, axis=1)
        valid = np.isfinite(top_scores)
        return first_valid(order, top_scores, valid, k)
