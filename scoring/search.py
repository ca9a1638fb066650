"""Scores and top-K search over one model's items: the one scoring formula of the project.

`scores(hidden, output_weight, output_bias)` is h @ Wy.T + by (the artifact's scores, see
`schemas.artifact`); full-ranking evaluation and the exhaustive baseline path call it as it
is. The FAISS index holds the same numbers: the output bias is folded into the inner product
by one extra dimension, query [h, 1] . item [Wy_i, by_i] = h . Wy_i + by_i, so the top-K by
inner product is the top-K by `scores`. Up to `exact_max_items` items the search is exact:
BLAS products of the whole batch with blocks of items and a one-pass top-k selection
(`scoring.topk`), seen items masked out first; or, with `exact_search="faiss"`, FAISS's
IndexFlatIP. Above, HNSW. FAISS leaves seen items out by over-fetching and filtering.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import chain

import faiss
import numpy as np

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServingOptions:
    # Exact search is fast enough up to ~100k items at micro-batch sizes; HNSW above.
    exact_max_items: int = 100_000
    # How: "blas" scores every item with one matrix product and keeps each row's top k in
    # one pass (`topk.top_k`); "faiss" searches an IndexFlatIP. Same items (ties aside). At
    # micro-batch sizes FAISS's per-query heaps dominate: with "blas" the inference core
    # (GRU step and search) does 1.6-1.8x the events per CPU-second (benchmarks/
    # bench_inference.py, MovieLens-1M and Diginetica catalogues, batch 64-1024). Both
    # leave the interpreter lock free while they run, so the event loop goes on meanwhile.
    exact_search: str = "blas"
    hnsw_m: int = 32
    hnsw_ef_construction: int = 200
    hnsw_ef_search: int = 128
    # Precompute item -> first-layer input gates when the table stays below this size.
    gate_table_max_bytes: int = 512 * 1024 * 1024
    # FAISS OpenMP threads; one per worker so workers scale by process, not by thread.
    faiss_threads: int = 1
    # Exact search goes through BLAS (sgemm + heap) from this many queries per call. FAISS's
    # default switches only at nq * d >= 128000 (~1000 queries at d=128); below that a
    # per-query loop is 3-7x slower at micro-batch sizes. Note: a process-wide FAISS setting.
    blas_min_queries: int = 4
    # Threads for building an HNSW index only (a one-off cost at load or swap time).
    build_threads: int = 1
    # False: no FAISS index (offline evaluation needs every score, never a top-K search, and
    # an HNSW build over a large catalogue would cost minutes for nothing).
    search_index: bool = True

    def __post_init__(self) -> None:
        if self.exact_search not in ("blas", "faiss"):
            raise ValueError(f"exact_search: {self.exact_search!r} is not 'blas' or 'faiss'")


def scores(hidden: np.ndarray, output_weight: np.ndarray, output_bias: np.ndarray) -> np.ndarray:
    """Scores of every item, (B, n_items), from last-layer states (B, H_last)."""
    return hidden @ output_weight.T + output_bias


def item_vectors(output_weight: np.ndarray, output_bias: np.ndarray) -> np.ndarray:
    """Items as [Wy_i, by_i] (n, H_last + 1), so that `queries(h) . item` is the score."""
    return np.ascontiguousarray(np.concatenate([output_weight, output_bias[:, None]], axis=1))


def queries(hidden: np.ndarray) -> np.ndarray:
    """Last-layer states (B, H) as search queries [h, 1] (B, H + 1), float32."""
    query = np.empty((hidden.shape[0], hidden.shape[1] + 1), dtype=np.float32)
    query[:, :-1] = hidden
    query[:, -1] = 1.0
    return query


def build_index(vectors: np.ndarray, options: ServingOptions, name: str = "") -> faiss.Index:
    """An inner-product index over `item_vectors`: exact up to `exact_max_items`, HNSW above."""
    n, dim = vectors.shape
    faiss.cvar.distance_compute_blas_threshold = max(options.blas_min_queries, 1) * dim
    if n <= options.exact_max_items:
        index = faiss.IndexFlatIP(dim)
        index.add(vectors)
        return index
    index = faiss.IndexHNSWFlat(dim, options.hnsw_m, faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efConstruction = options.hnsw_ef_construction
    started = time.perf_counter()
    faiss.omp_set_num_threads(max(options.build_threads, 1))
    try:
        index.add(vectors)
    finally:
        faiss.omp_set_num_threads(max(options.faiss_threads, 1))
    log.info(
        "model %s: HNSW index over %d items built in %.1f s",
        name,
        n,
        time.perf_counter() - started,
    )
    return index


def search(
    index: faiss.Index, hidden: np.ndarray, fetch: int, options: ServingOptions
) -> tuple[np.ndarray, np.ndarray]:
    """The `fetch` best items of each row: (scores (B, fetch), item indices (B, fetch))."""
    query = queries(hidden)
    if isinstance(index, faiss.IndexFlat):
        return index.search(query, fetch)
    params = faiss.SearchParametersHNSW()
    params.efSearch = max(options.hnsw_ef_search, fetch)
    return index.search(query, fetch, params=params)


def pad_ragged(rows: Sequence[Sequence[int]] | np.ndarray | None, n: int) -> np.ndarray | None:
    """Item-index lists of any lengths -> (n, max_len) int64, padded with -1."""
    if rows is None:
        return None
    if isinstance(rows, np.ndarray) and rows.ndim == 2:
        return rows.astype(np.int64, copy=False)
    if len(rows) != n:
        raise ValueError(f"exclude has {len(rows)} rows, the batch has {n}")
    lengths = np.fromiter(map(len, rows), dtype=np.int64, count=n)
    flat = np.fromiter(chain.from_iterable(rows), dtype=np.int64, count=int(lengths.sum()))
    # One scatter for the whole batch (a worker builds every answer's seen items this way),
    # not a slice assignment per row: row r's values go to columns 0..len_r-1.
    out = np.full((n, max(int(lengths.max(initial=0)), 1)), -1, dtype=np.int64)
    starts = np.repeat(np.cumsum(lengths) - lengths, lengths)
    out[np.repeat(np.arange(n), lengths), np.arange(flat.size) - starts] = flat
    return out


def first_valid(
    labels: np.ndarray, scores: np.ndarray, valid: np.ndarray | None, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Per row, the first k entries where `valid` holds (default: a finite score), in order;
    -1 / -inf where short."""
    if valid is None:
        valid = np.isfinite(scores)
    # A stable sort of ~valid moves the valid columns to the front without reordering them.
    order = np.argsort(~valid, axis=1, kind="stable")[:, :k]
    top = np.take_along_axis(labels, order, axis=1)
    top_scores = np.take_along_axis(scores, order, axis=1)
    ok = np.take_along_axis(valid, order, axis=1)
    top[~ok] = -1
    top_scores[~ok] = -np.inf
    if top.shape[1] < k:  # catalogue smaller than k
        pad = k - top.shape[1]
        top = np.pad(top, ((0, 0), (0, pad)), constant_values=-1)
        top_scores = np.pad(top_scores, ((0, 0), (0, pad)), constant_values=-np.inf)
    return top, top_scores


def top_k_excluding(
    labels: np.ndarray, found: np.ndarray, exclude: np.ndarray | None, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Over-fetched candidates (B, fetch), best first -> the k best not in `exclude` (B, E)."""
    valid = labels >= 0
    if exclude is not None:
        # (B, fetch, 1) == (B, 1, E): at most (k + 50) * 50 compares per row.
        valid &= ~(labels[:, :, None] == exclude[:, None, :]).any(axis=2)
    return first_valid(labels, found, valid, k)
