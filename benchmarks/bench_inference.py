"""Throughput of the inference core alone (GRU step + top-K search), by micro-batch size.

    python benchmarks/bench_inference.py                 # all catalogues, 5 runs each
    python benchmarks/bench_inference.py --only ml-1m --repeats 3
    python benchmarks/bench_inference.py --skip-1m       # without the 1M-item HNSW case

Catalogues (synthetic weights at the real sizes, so no training is needed; item vectors near
a rank-16 subspace like trained embeddings, or i.i.d. uniform with --embeddings uniform, the
worst case for HNSW):
  ml-1m        3,706 items, embedding 64 -> GRU 128 (the ReChorus preset), exact search
  diginetica   43,097 items, shared embedding, GRU 100 and GRU 512 (the preset), exact
  synth-1m     1,000,000 items, shared embedding, GRU 100, HNSW (recall@20 vs exact shown)

For each batch size B the script times `ServingModel.step` + `ServingModel.recommend`
(top-20, the session's last 10 items excluded) over a pool of live sessions, and the full
pure core `answer_batch` (the same plus session records and Recommendation objects). The
baselines, run in the same process on the same data:
  torch/event  GRU4Rec (batch_training.model) one event at a time: step, score all items,
               mask the seen items, topk; the "naive per-event forward"
  numpy-full   the same numpy GRU step, then scores over all items and a full argsort
Every figure is the median of --repeats runs; one thread everywhere (one core per worker).
Rates are given per CPU-second of the process (what one dedicated core sustains) and, for the
core, per elapsed second too: on a busy shared machine the two differ.
"""

from __future__ import annotations

import os

for _name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_name, "1")

import argparse  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from dataclasses import dataclass, replace  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from batch_training.model import GRU4Rec  # noqa: E402
from schemas.artifact import Artifact, Manifest  # noqa: E402
from schemas.events import ClickEvent  # noqa: E402
from scoring import ServingModel  # noqa: E402
from stream_app.core import Click, CoreConfig, answer_batch  # noqa: E402
from stream_app.sessions import SessionState  # noqa: E402
from stream_app.synthetic import random_weights  # noqa: E402

K = 20
HISTORY = 10  # items excluded per query (the session so far)
BATCH_SIZES = (1, 4, 16, 64, 256, 1024)


@dataclass(frozen=True)
class Catalogue:
    name: str
    n_items: int
    input_kind: str
    layers: tuple[int, ...]
    embedding_dim: int = 0


CATALOGUES = (
    Catalogue("ml-1m", 3_706, "embedding", (128,), 64),
    Catalogue("diginetica-h100", 43_097, "shared", (100,)),
    Catalogue("diginetica-h512", 43_097, "shared", (512,)),
    Catalogue("synth-1m", 1_000_000, "shared", (100,)),
)


def in_memory_artifact(cat: Catalogue, seed: int = 0, rank: int | None = 16) -> Artifact:
    manifest = Manifest(
        version=cat.name,
        input_kind=cat.input_kind,
        n_items=cat.n_items,
        layers=cat.layers,
        embedding_dim=cat.embedding_dim,
    )
    items = tuple(f"i{i}" for i in range(cat.n_items))
    return Artifact(Path(cat.name), manifest, random_weights(manifest, seed, rank), items)


@dataclass(frozen=True)
class Rate:
    wall: float  # events per second of elapsed time
    cpu: float  # events per CPU-second of this (single-threaded) process


def median_rate(fn, events_per_call: int, repeats: int, min_seconds: float) -> Rate:
    """Median events/s over `repeats` runs, each at least `min_seconds` long.

    Both clocks: on a shared machine elapsed time includes waiting for a core, while the
    process's CPU time is what one dedicated core would need.
    """
    fn()  # warm-up
    wall, cpu = [], []
    for _ in range(repeats):
        calls, started, cpu_started = 0, time.perf_counter(), time.process_time()
        while True:
            fn()
            calls += 1
            elapsed = time.perf_counter() - started
            if elapsed >= min_seconds:
                break
        wall.append(calls * events_per_call / elapsed)
        cpu.append(calls * events_per_call / max(time.process_time() - cpu_started, 1e-9))
    return Rate(statistics.median(wall), statistics.median(cpu))


class Workload:
    """A pool of live sessions; each call advances B of them by one click and answers."""

    def __init__(self, model: ServingModel, pool: int = 4096, seed: int = 1) -> None:
        rng = np.random.default_rng(seed)
        self.model = model
        self.rng = rng
        self.states = model.run(
            [rng.integers(0, model.n_items, HISTORY).tolist() for _ in range(pool)]
        )
        self.history = rng.integers(0, model.n_items, (pool, HISTORY))
        self.pool = pool

    def batch(self, size: int) -> tuple[np.ndarray, np.ndarray]:
        rows = self.rng.choice(self.pool, size, replace=False)
        return rows, self.rng.integers(0, self.model.n_items, size)

    def core(self, size: int, exhaustive: bool = False):
        model, batches = self.model, [self.batch(size) for _ in range(16)]
        counter = iter(range(1 << 62))

        def run() -> None:
            rows, items = batches[next(counter) % len(batches)]
            state = model.step(self.states[rows], items)
            pick = model.recommend_exhaustive if exhaustive else model.recommend
            pick(state, K, self.history[rows])

        return run

    def answer_batch(self, size: int):
        """The whole pure core, with session records as the agent hands them over."""
        model, rng = self.model, self.rng
        now = int(time.time() * 1000)
        sessions = {}
        for s in range(self.pool):
            sessions[f"s{s}"] = SessionState(
                partition=0,
                items=[f"i{i}" for i in self.history[s]],
                offsets=list(range(HISTORY)),
                last_event_ms=now - 1,
                touched_ms=now,
                count=HISTORY,
                model_version=model.version,
                hidden=self.states[s],
                seen=self.history[s].tolist(),
                seen_version=model.version,
            )
        batches = []
        for _ in range(8):
            rows = rng.choice(self.pool, size, replace=False)
            clicks = [
                Click(
                    ClickEvent(f"s{r}", f"i{rng.integers(0, model.n_items)}", now),
                    "clicks",
                    0,
                    HISTORY + 1,
                    b"",
                    None,
                    now,
                )
                for r in rows
            ]
            batches.append(clicks)
        counter = iter(range(1 << 62))
        config = CoreConfig(k=K)

        def run() -> None:
            clicks = batches[next(counter) % len(batches)]
            # Fresh copies: the core updates the records it is given, the table would not.
            stored = {c.event.session_id: _copy(sessions[c.event.session_id]) for c in clicks}
            answer_batch(model, clicks, stored, config, now_ms=now)

        return run


def _copy(s: SessionState) -> SessionState:
    """A session as the worker's session cache hands it over (seen items already indexed)."""
    return SessionState(
        s.partition,
        list(s.items),
        list(s.offsets),
        s.last_event_ms,
        s.touched_ms,
        s.count,
        s.model_version,
        s.hidden,
        None,
        None if s.seen is None else list(s.seen),
        s.seen_version,
    )


def torch_per_event(artifact: Artifact, workload: Workload):
    """The naive baseline: the training model, one event at a time, full scores + topk."""
    torch_model = GRU4Rec.from_artifact(artifact)
    layers = artifact.manifest.layers
    rng = np.random.default_rng(3)
    events = [
        (int(r), int(i), torch.from_numpy(workload.history[r]))
        for r, i in zip(
            rng.integers(0, workload.pool, 64),
            rng.integers(0, artifact.manifest.n_items, 64),
            strict=True,
        )
    ]
    hidden_of = {
        r: [torch.from_numpy(workload.states[r, layer, :h][None]) for layer, h in enumerate(layers)]
        for r, _, _ in events
    }
    counter = iter(range(1 << 62))

    @torch.no_grad()
    def run() -> None:
        row, item, seen = events[next(counter) % len(events)]
        out, _ = torch_model.step(torch.tensor([item]), hidden_of[row])
        scores = torch_model.score_all(out)[0]
        scores[seen] = -torch.inf
        torch.topk(scores, K)

    return run


def hnsw_recall(model: ServingModel, workload: Workload, queries: int = 200) -> float:
    """Recall@K of the HNSW answers against exact top-K (numpy scores), same states."""
    rows, items = workload.batch(queries)
    state = model.step(workload.states[rows], items)
    got, _ = model.recommend(state, K)
    scores = model.scores(state)
    exact = np.argpartition(-scores, K, axis=1)[:, :K]
    hits = [len(set(a.tolist()) & set(b.tolist())) for a, b in zip(got, exact, strict=True)]
    return float(np.mean(hits)) / K


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--min-seconds", type=float, default=0.4, help="per timed run")
    parser.add_argument("--only", nargs="*", help="catalogue names to run")
    parser.add_argument("--skip-1m", action="store_true")
    parser.add_argument("--batch-sizes", type=int, nargs="*", default=list(BATCH_SIZES))
    parser.add_argument("--build-threads", type=int, default=2, help="HNSW build only")
    parser.add_argument("--hnsw-m", type=int, default=16)
    parser.add_argument(
        "--embeddings",
        choices=("lowrank", "uniform"),
        default="lowrank",
        help="item vectors near a rank-16 subspace (like trained ones) or i.i.d. uniform",
    )
    parser.add_argument("--ef-construction", type=int, default=80)
    parser.add_argument("--ef-search", type=int, nargs="*", default=[64, 128, 256])
    args = parser.parse_args(argv)
    torch.set_num_threads(1)

    print(
        f"# inference core, K={K}, {HISTORY} seen items excluded, median of {args.repeats}; "
        f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs"
    )
    for cat in CATALOGUES:
        if args.only and cat.name not in args.only:
            continue
        if args.skip_1m and cat.n_items >= 1_000_000:
            continue
        artifact = in_memory_artifact(cat, rank=16 if args.embeddings == "lowrank" else None)
        started = time.perf_counter()
        model = ServingModel.from_artifact(
            artifact,
            build_threads=args.build_threads,
            hnsw_m=args.hnsw_m,
            hnsw_ef_construction=args.ef_construction,
        )
        load_s = time.perf_counter() - started
        workload = Workload(model)
        if model.exact:
            search = "exact (BLAS)" if model.dense else "exact (IndexFlatIP)"
        else:
            search = "HNSW (IndexHNSWFlat, IP)"
        print(
            f"\n## {cat.name}: {cat.n_items:,} items, {cat.input_kind}, GRU {cat.layers}, "
            f"{search}, load+index {load_s:.1f} s"
        )
        if not model.exact:
            print(f"HNSW M={args.hnsw_m}, efConstruction={args.ef_construction}")
            print("| efSearch | recall@20 vs exact | core events/CPU-s, batch 256 |")
            print("| ---: | ---: | ---: |")
            for ef in args.ef_search:
                model.options = replace(model.options, hnsw_ef_search=ef)
                recall = hnsw_recall(model, workload)
                rate = median_rate(workload.core(256), 256, args.repeats, args.min_seconds)
                print(f"| {ef} | {recall:.3f} | {rate.cpu:,.0f} |", flush=True)
            model.options = replace(model.options, hnsw_ef_search=args.ef_search[0])
            print(f"(tables below: efSearch={args.ef_search[0]})")
        naive = median_rate(torch_per_event(artifact, workload), 1, args.repeats, args.min_seconds)
        print(f"baseline torch/event: {naive.cpu:,.0f} events/CPU-s ({naive.wall:,.0f} events/s)")
        print(
            "| batch | core events/CPU-s | core events/s (elapsed) | answer_batch events/CPU-s "
            "| numpy-full events/CPU-s | core / torch-event | core / numpy-full |"
        )
        print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
        for size in args.batch_sizes:
            core = median_rate(workload.core(size), size, args.repeats, args.min_seconds)
            full_core = median_rate(
                workload.answer_batch(size), size, args.repeats, args.min_seconds
            )
            full = median_rate(
                workload.core(size, exhaustive=True), size, args.repeats, args.min_seconds
            )
            print(
                f"| {size} | {core.cpu:,.0f} | {core.wall:,.0f} | {full_core.cpu:,.0f} | "
                f"{full.cpu:,.0f} | {core.cpu / naive.cpu:.1f}x | {core.cpu / full.cpu:.1f}x |",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
