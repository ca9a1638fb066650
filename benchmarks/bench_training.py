"""Training throughput (events/s) and peak memory of GRU4Rec, per dataset and variant.

Each run is `batch_training.train.train` on a dataset split (`batch_training.splits.load_split`),
in a fresh child process so that its peak memory is its own. Figures are medians over
`--runs` runs; the ratio column compares each variant with the first one of the same dataset.

Variants:
  sparse  the authors' indexed Adagrad: only the item rows a step touches are updated
  dense   dense gradients, every item row updated every step (the baseline of `sparse`)
  amp     on CUDA: bfloat16 autocast on (mixed_precision=true; the default is float32)

    python benchmarks/bench_training.py --datasets diginetica:5000 movielens-1m:100 \\
        --preset diginetica-bprmax --runs 3 --threads 1

A dataset may carry its own slice size as NAME:MAX_SESSIONS (else --max-sessions). A preset
in the history-window mode (`rechorus`) is timed the same way (its "events" are examples; it
trains alike in both variants, since Adam updates every row).
    python benchmarks/bench_training.py --device cuda --variants sparse amp dense
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

VARIANTS = {
    "sparse": {},
    "dense": {"sparse_updates": False},
    "amp": {"mixed_precision": True},
}


def run_once(args: argparse.Namespace) -> dict:
    """One training run in this process; returns its figures."""
    if args.code_root:  # an older copy of the code (e.g. before an optimisation) goes first
        sys.path.insert(0, str(Path(args.code_root).resolve()))
    import torch

    import batch_training
    from batch_training.config import apply_overrides, load_preset
    from batch_training.splits import load_split
    from batch_training.train import resolve_device, train

    if args.code_root and not Path(batch_training.__file__).resolve().is_relative_to(
        Path(args.code_root).resolve()
    ):  # else the "before" rows would silently time the current code
        raise SystemExit(f"--compare {args.code_root}: no batch_training/ package in it")

    timer = None
    if args.profile:  # this checkout's timer, also for an older copy of the code
        spec = importlib.util.spec_from_file_location(
            "_bench_stage_timer", ROOT / "batch_training" / "stage_timer.py"
        )
        assert spec is not None and spec.loader is not None
        stage_timer = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(stage_timer)
        timer = stage_timer.StageTimer(resolve_device(args.device))

    if args.threads:
        torch.set_num_threads(args.threads)
    import torch.distributed as dist

    if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # --nproc: one of N data-parallel ranks
        from batch_training import distributed  # (not in a --compare copy of older code)

        args.device = distributed.init_from_env(args.device)
    rank, nproc = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
    options = {"max_sessions": args.max_sessions} if args.max_sessions else {}  # 0 = all
    split = load_split(args.dataset, **options)
    config = load_preset(args.preset, n_epochs=args.epochs, **VARIANTS[args.variant])
    config = apply_overrides(config, args.set)
    device = resolve_device(args.device)
    rss_before = _current_rss_mb()
    t0 = time.perf_counter()
    if config.mode == "window":  # history-window training (`rechorus`): examples/s
        if timer or int(os.environ.get("WORLD_SIZE", "1")) > 1:
            raise SystemExit("window mode: no --profile and no --nproc")
        from batch_training.window_train import train_windows

        result = train_windows(
            split.train, config, n_items=split.vocab.n_items, device=str(device), progress=False
        )
    else:
        result = train(
            split.train,
            config,
            n_items=split.vocab.n_items,
            item_support=split.item_support,
            device=str(device),
            progress=False,
            **({"profile": timer} if timer else {}),
        )
    return {
        "code": args.code_root or "current",
        "stage_ms": timer.per_step_ms() if timer else None,
        "stage_cpu_ms": timer.cpu_per_step_ms() if timer else None,
        "steps": timer.steps if timer else None,
        "dataset": args.dataset,
        "variant": args.variant,
        "device": result.device,
        "clicks": int(split.train.n_clicks),
        "sessions": int(split.train.n_sessions),
        "items": int(split.vocab.n_items),
        "events": result.history[-1]["events"],
        "events_per_s": [h["events_per_s"] for h in result.history],
        "epoch_seconds": [h["seconds"] for h in result.history],
        "loss": [h["loss"] for h in result.history],
        "peak_memory_mb": max(h.get("peak_memory_mb", _peak_rss_mb()) for h in result.history),
        "rss_before_train_mb": rss_before,
        "total_seconds": time.perf_counter() - t0,
        "torch_threads": torch.get_num_threads(),
        "nproc": nproc,
        "rank": rank,
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
    }


def _peak_rss_mb() -> float:
    """This process's peak RSS (what training reports as peak memory on the CPU)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _current_rss_mb() -> float:
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    import resource

    return pages * resource.getpagesize() / 2**20


def run_child(
    args: argparse.Namespace,
    dataset_arg: str,
    variant: str,
    code_root: str | None = None,
    nproc: int = 1,
) -> dict:
    dataset, _, size = dataset_arg.partition(":")
    max_sessions = int(size) if size else args.max_sessions
    launcher = [sys.executable]
    if nproc > 1:
        launcher += ["-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}"]
    cmd = [
        *launcher,
        str(Path(__file__).resolve()),
        "--child",
        "--dataset",
        dataset,
        "--variant",
        variant,
        "--preset",
        args.preset,
        "--epochs",
        str(args.epochs),
        "--device",
        args.device,
        "--threads",
        str(args.threads),
    ]
    if max_sessions:
        cmd += ["--max-sessions", str(max_sessions)]
    if code_root:
        cmd += ["--code-root", code_root]
    if args.profile:
        cmd += ["--profile"]
    for pair in args.set:
        cmd += ["--set", pair]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    if proc.returncode != 0:
        raise RuntimeError(f"{dataset}/{variant} failed:\n{proc.stderr[-3000:]}")
    return json.loads(next(x for x in reversed(proc.stdout.splitlines()) if x.startswith("{")))


def plot_scaling(runs: list[dict], path: Path) -> None:
    """Median events/s against the number of processes, one line per dataset and variant."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5, 3.4), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    groups: dict[tuple[str, str], dict[int, list[float]]] = {}
    for r in runs:
        if r["code"] == "current":
            by_n = groups.setdefault((r["dataset"], r["variant"]), {})
            by_n.setdefault(r["nproc"], []).extend(r["events_per_s"])
    for (dataset, variant), by_n in groups.items():
        ns = sorted(by_n)
        ax.plot(
            ns, [statistics.median(by_n[n]) for n in ns], marker="o", label=f"{dataset} {variant}"
        )
    ax.set(xlabel="processes (gloo, 1 torch thread each)", ylabel="events / s", xticks=ns)
    ax.set_ylim(bottom=0)
    ax.set_title(f"data-parallel training on {os.cpu_count()} shared CPU cores", fontsize=10)
    ax.legend()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)


def print_profile(runs: list[dict]) -> None:
    """Median ms per step of each stage, wall and CPU time, per dataset, variant and code."""
    groups: dict[tuple[str, str, str], list[dict]] = {}
    for r in runs:
        if r.get("stage_ms") and r.get("nproc", 1) == 1:
            code = "current" if r["code"] == "current" else "before"
            groups.setdefault((r["dataset"], r["variant"], code), []).append(r)
    for (dataset, variant, code), rs in groups.items():
        stages = list(rs[0]["stage_ms"])
        wall = {k: statistics.median(r["stage_ms"][k] for r in rs) for k in stages}
        cpu = {k: statistics.median(r["stage_cpu_ms"][k] for r in rs) for k in stages}
        print(
            f"per step, {dataset} {variant}, {code} code "
            f"({rs[0]['steps']:,} steps, median of {len(rs)}):       wall      CPU"
        )
        for k in stages:
            print(f"  {k:<12}{wall[k]:8.3f} ms {cpu[k]:8.3f} ms")
        total_wall, total_cpu = sum(wall.values()), sum(cpu.values())
        print(f"  {'total':<12}{total_wall:8.3f} ms {total_cpu:8.3f} ms")
        events = statistics.median(r["events"] / r["steps"] for r in rs)
        print(f"  events per CPU second of the steps: {1e3 * events / total_cpu:,.0f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", nargs="+", default=["diginetica:5000", "movielens-1m:100"])
    parser.add_argument("--variants", nargs="+", default=["sparse", "dense"], choices=VARIANTS)
    parser.add_argument("--preset", default="diginetica-bprmax")
    parser.add_argument("--max-sessions", type=int, default=5000, help="0 = whole dataset")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = default)")
    parser.add_argument("--set", action="append", default=[], help="config override key=value")
    parser.add_argument("--json", type=Path, help="also write every run's figures here")
    parser.add_argument(
        "--profile",
        action="store_true",
        help="also time each stage of the step (ms/step, wall and CPU time)",
    )
    parser.add_argument(
        "--compare",
        metavar="DIR",
        help="also run each variant with the batch_training/ package inside DIR (e.g. DIR/"
        "batch_training a copy of the code before a change), interleaved with the current "
        "code's runs; row 'before'",
    )
    parser.add_argument("--code-root", help=argparse.SUPPRESS)
    parser.add_argument(
        "--nproc",
        type=int,
        nargs="+",
        default=[1],
        help="data-parallel processes (torchrun, gloo on CPU); several values: one row each",
    )
    parser.add_argument("--plot", type=Path, help="with several --nproc: events/s figure (PNG)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--dataset", help=argparse.SUPPRESS)
    parser.add_argument("--variant", default="sparse", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.child:
        result = run_once(args)
        if result["rank"] == 0:  # under torchrun: one line, rank 0's (the events of all ranks)
            print(json.dumps(result))
        return 0

    runs: list[dict] = []
    rows = []
    for dataset in args.datasets:
        baseline = None
        jobs = [(v, None, n) for v in args.variants for n in args.nproc]
        if args.compare:
            jobs = [(v, root, 1) for v in args.variants for root in (args.compare, None)]
        results_of: dict[tuple[str, str | None, int], list[dict]] = {job: [] for job in jobs}
        for _ in range(args.runs):  # interleaved: a slow minute on a shared machine hits all
            for variant, root, n in jobs:
                results_of[variant, root, n].append(run_child(args, dataset, variant, root, n))
        for (variant, root, n), results in results_of.items():
            runs += results
            # Every epoch of every run is one sample of the throughput.
            speeds = [v for r in results for v in r["events_per_s"]]
            speed = statistics.median(speeds)
            baseline = baseline or speed
            first = results[0]
            rows.append(
                (
                    f"{dataset.partition(':')[0]}",
                    f"{first['clicks']:,}",
                    f"{first['items']:,}",
                    variant + (" (before)" if root else "") + (f" x{n} proc" if n > 1 else ""),
                    f"{speed:,.0f}",
                    f"{min(speeds):,.0f}-{max(speeds):,.0f}",
                    f"{statistics.median(s for r in results for s in r['epoch_seconds']):.1f}",
                    f"{statistics.median(r['peak_memory_mb'] for r in results):,.0f}",
                    f"{speed / baseline:.2f}",
                )
            )
            print(f"done: {dataset} {variant} ({len(results)} runs)", file=sys.stderr)
    header = (
        "dataset",
        "train clicks",
        "items",
        "variant",
        "events/s",
        "range",
        "epoch s",
        "peak MB",
        "ratio",
    )
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows, strict=True)]
    print(
        f"preset {args.preset}, {args.epochs} epoch(s) x {args.runs} run(s), "
        f"device {runs[0]['device']}{' (' + runs[0]['gpu'] + ')' if runs[0]['gpu'] else ''}, "
        f"torch threads {runs[0]['torch_threads']}, overrides {args.set or 'none'}, "
        f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs"
    )
    for row in (header, *rows):
        print("  ".join(str(x).rjust(w) for x, w in zip(row, widths, strict=True)))
    print("peak MB: CUDA peak allocated on GPU; on CPU the child process's peak RSS.")
    if args.profile:
        print_profile(runs)
    if args.plot and len(args.nproc) > 1:
        plot_scaling(runs, args.plot)
    if args.json:
        args.json.write_text(json.dumps(runs, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
