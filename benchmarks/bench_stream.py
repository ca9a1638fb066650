"""End to end through the real broker: one worker's sustained throughput and its latency.

    gru4stream broker start                     # or any cluster: --kafka-config FILE, --bootstrap
    python benchmarks/bench_stream.py           # 3 runs of everything (about 6 minutes)
    python benchmarks/bench_stream.py --runs 1 --events 20000
    python benchmarks/bench_stream.py --quick --compare ../other --compare-rates 2500,8500

What it measures, for the micro-batching worker and for the naive baseline worker
(`--naive`: one click at a time, numpy scores over all items + a full sort, no executor),
and for a "Faust floor": a bare Faust agent that reads the same clicks in the same
micro-batches and sends one small answer per click, with no table, decoding or model, i.e.
what this machine allows a stock Faust worker before the first line of our own code (the
worker goes past it: it takes its batches and fetches without Faust's per-event turn and
1.5 s fetch wait, see stream_app/intake.py and stream_app/consumer.py):
  throughput  a backlog of clicks is written first, then a fresh worker drains it; the rate is
              (answers - 1) / (last answer - first answer), i.e. without start-up time
  latency     clicks are produced at a steady 50% and 90% of the measured throughput, and at
              each rate of --rates; each click carries its send time as its timestamp, and
              the latency is the time the answer is read back from `recommendations` minus
              that (click -> producer -> broker -> worker -> broker -> consumer); the first
              10% of each run is warm-up
With --compare DIR (another checkout, e.g. a `git worktree` of an earlier commit) the two
workers' backlog rates, and with --compare-rates their latency and CPU a click at those
paced rates, are measured in runs that alternate between them (ABBA), so that a host
whose speed drifts favours neither.
Every figure is the median over --runs runs (fresh topics, consumer group and data dir each;
the topics are deleted after each run: a broker left with thousands of partitions spends
about a second of CPU every 5 s on periodic work over them, seen as latency spikes).
Model: synthetic weights at the ML-1M catalogue size (3,706 items, embedding 64, GRU 128), or
with --catalogue diginetica at Diginetica's (43,097 items, shared embedding, GRU 100).
Each worker runs on a CPU of its own and the broker, the producer and the consumer on the
others (benchmarks/cpu_plan.py; --shared-cpus lets all share every CPU). The worker's own
CPU time is reported too: answers per CPU-second of the worker process is what one
dedicated core would sustain if nothing else were waiting for it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple, TypeVar
from uuid import uuid4

import numpy as np
import orjson
from aiokafka import TopicPartition
from aiokafka.partitioner import DefaultPartitioner

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.cpu_plan import CpuPlan, local_broker_pid  # noqa: E402
from kafka_io.cli import (  # noqa: E402
    add_kafka_arguments,
    report_failure,
    run_kafka,
    settings_from_args,
)
from kafka_io.clients import consumer, faust_options, producer  # noqa: E402
from kafka_io.errors import KafkaSetupError, check_connection  # noqa: E402
from kafka_io.settings import KafkaConfigError, KafkaSettings, write_properties  # noqa: E402
from kafka_io.topics import create_topics as create  # noqa: E402
from kafka_io.topics import delete_topics_with_prefix  # noqa: E402
from schemas.topics import CLICKS, RECOMMENDATIONS, spec_named  # noqa: E402
from stream_app.harness import WorkerProcess, produce_clicks  # noqa: E402
from stream_app.metrics import STAGES  # noqa: E402
from stream_app.synthetic import write_random_artifact  # noqa: E402

ACTIVE_SESSIONS = 2_000
# name -> (items, input kind, GRU layers, embedding dim)
CATALOGUES = {
    "ml-1m": (3_706, "embedding", (128,), 64),
    "diginetica": (43_097, "shared", (100,), 0),
}
N_ITEMS = CATALOGUES["ml-1m"][0]
PROG = "bench_stream"
T = TypeVar("T")


@dataclass(frozen=True)
class Run:
    tag: str
    clicks: str
    recs: str

    @classmethod
    def fresh(cls, mode: str) -> Run:
        tag = f"bench-{mode}-{uuid4().hex[:8]}"
        return cls(tag, f"{tag}-clicks", f"{tag}-recs")


class ClickSource:
    """Clicks of ACTIVE_SESSIONS interleaved sessions, random items, in time order."""

    def __init__(self, seed: int, n_items: int = N_ITEMS) -> None:
        self.n_items = n_items
        self.rng = np.random.default_rng(seed)
        self.prefix = uuid4().hex[:6]

    def message(self, timestamp: int) -> tuple[bytes, bytes]:
        sid = f"{self.prefix}-{self.rng.integers(ACTIVE_SESSIONS)}"
        item = f"i{self.rng.integers(self.n_items)}"
        value = orjson.dumps({"session_id": sid, "item_id": item, "timestamp": timestamp})
        return sid.encode(), value


async def create_topics(settings: KafkaSettings, run: Run) -> None:
    await create(settings, [spec_named(run.clicks, CLICKS), spec_named(run.recs, RECOMMENDATIONS)])


def client_properties(settings: KafkaSettings, tmp: Path) -> Path:
    """The settings for a child process (a worker), in a 0600 file: never on its command line."""
    return write_properties(settings, tmp / "client.properties")


def start_worker(
    settings: KafkaSettings,
    run: Run,
    model: Path,
    tmp: Path,
    naive: bool,
    code: Path | None = None,
    cpus: CpuPlan | None = None,
) -> WorkerProcess:
    args = [
        "--kafka-config", str(client_properties(settings, tmp)),
        "--app-id", run.tag,
        "--clicks-topic", run.clicks,
        "--recommendations-topic", run.recs,
        "--dlq-topic", f"{run.tag}-dlq",
        "--model-updates-topic", f"{run.tag}-updates",
        "--model", str(model),
        "--data-dir", str(tmp / run.tag),
        "--standby-replicas", "0",
        "--loglevel", "warning",
    ]  # fmt: skip
    if naive:
        args.append("--naive")
    worker = WorkerProcess(args, tmp / f"{run.tag}.log")
    if code is not None:
        worker.code_root = code
    return _pinned(worker.start(), cpus)


def _pinned(worker: WorkerProcess, cpus: CpuPlan | None) -> WorkerProcess:
    """The worker on its own CPU (right after it started: the threads it makes inherit it)."""
    if cpus is not None:
        cpus.pin_worker(worker.proc.pid)
    return worker


async def read_answers(
    settings: KafkaSettings, topic: str, count: int, timeout: float, out: list
) -> None:
    """Append (receive time s, click timestamp ms) per answer until `count` or timeout."""
    client = consumer(settings, group_id=None, fetch_max_wait_ms=5)
    await client.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(RECOMMENDATIONS.partitions)]
        client.assign(tps)
        await client.seek_to_beginning(*tps)
        deadline = time.monotonic() + timeout
        while len(out) < count and time.monotonic() < deadline:
            batch = await client.getmany(*tps, timeout_ms=100, max_records=10_000)
            now = time.time()
            for records in batch.values():
                for r in records:
                    out.append((now, orjson.loads(r.value)["click"]["timestamp"]))
    finally:
        await client.stop()


def floor_worker(
    settings: KafkaSettings, app_id: str, clicks: str, recs: str, datadir: str, web_port: int
) -> None:
    """The Faust floor (run in a child process): consume, send one answer per click."""
    import faust

    app = faust.App(
        app_id,
        **faust_options(settings),
        web_port=web_port,
        datadir=datadir,
        autodiscover=False,
        producer_acks=-1,
        producer_max_batch_size=512 * 1024,
        producer_linger=0.01,
        consumer_auto_offset_reset="earliest",
    )
    source = app.topic(clicks, key_serializer="raw", value_serializer="raw")

    @app.agent(source)
    async def answer(stream):
        async for events in stream.take_events(256, within=0.01):
            for event in events:
                message = event.message
                ts = int(message.timestamp * 1000)
                value = b'{"click":{"timestamp":%d}}' % ts
                await app.producer.send(recs, message.key, value, None, None, None)

    worker = app.Worker(loglevel="warning")
    worker.spinner = None
    worker.execute_from_commandline()


class FloorProcess(WorkerProcess):
    def start(self) -> FloorProcess:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child process
        self.proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), *self.args, str(self.web_port)],
            stdout=log,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
        log.close()
        return self


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def throughput(
    settings: KafkaSettings,
    model: Path,
    tmp: Path,
    naive: bool,
    events: int,
    n_items: int,
    floor: bool = False,
    code: Path | None = None,
    cpus: CpuPlan | None = None,
) -> tuple[float, float, dict[str, float]]:
    """Drain rate (answers/s), answers per CPU-second of the worker, its per-step profile."""
    run = Run.fresh("floor" if floor else "naive" if naive else "batched")
    await create_topics(settings, run)
    source = ClickSource(seed=1, n_items=n_items)
    start = int(time.time() * 1000) - 3_600_000
    await produce_clicks(settings, run.clicks, [source.message(start + i) for i in range(events)])
    answers: list = []
    reader = asyncio.create_task(read_answers(settings, run.recs, events, 900, answers))
    if floor:
        properties = str(client_properties(settings, tmp))
        names = [run.tag, run.clicks, run.recs, str(tmp / run.tag)]
        argv = ["--kafka-config", properties, "--floor-worker", *names]
        worker = _pinned(FloorProcess(argv, tmp / f"{run.tag}.log").start(), cpus)
    else:
        worker = start_worker(settings, run, model, tmp, naive, code, cpus)
    cpu_at_first = None
    try:
        while not reader.done():
            if cpu_at_first is None and answers:
                cpu_at_first = cpu_seconds(worker.proc.pid)
            await asyncio.sleep(0.05)
        await reader
        cpu_used = cpu_seconds(worker.proc.pid) - (cpu_at_first or 0.0)
        profile = {} if floor else await asyncio.to_thread(stage_profile, worker, events)
    finally:
        worker.stop()
        await delete_topics_with_prefix(settings, run.tag)
    if len(answers) < events:
        raise RuntimeError(f"{run.tag}: only {len(answers)}/{events} answers: {worker.tail()}")
    first, last = answers[0][0], answers[-1][0]
    rate = (len(answers) - 1) / (last - first)
    return rate, (len(answers) - 1) / max(cpu_used, 1e-9), profile


def stage_profile(worker: WorkerProcess, clicks: int) -> dict[str, float]:
    """The worker's agent time per click by step (µs): wall ("stage") and loop-thread CPU."""
    profile = {}
    for kind, name in (
        ("wall", "gru4stream_stage_seconds_total"),
        ("cpu", "gru4stream_stage_cpu_seconds_total"),
    ):
        for stage in STAGES:
            seconds = worker.metric(f'{name}{{stage="{stage}"}}')
            profile[f"{kind}:{stage}"] = seconds / clicks * 1e6
    batches = worker.metric("gru4stream_batch_size_count")
    profile["batch"] = worker.metric("gru4stream_batch_size_sum") / max(batches, 1)
    return profile


def print_profile(runs: list[dict[str, float]]) -> None:
    """A table of µs per click by step, medians over the runs."""
    if not runs or not any(runs[0].get(f"wall:{s}") for s in STAGES):
        return  # a worker that does not report its steps (older code)
    print("| µs per click (median) | " + " | ".join(STAGES) + " | total |")
    print("| --- |" + " ---: |" * (len(STAGES) + 1))
    for kind in ("wall", "cpu"):
        cells = [statistics.median(r[f"{kind}:{s}"] for r in runs) for s in STAGES]
        shown = " | ".join(f"{c:.0f}" for c in cells)
        label = "wall" if kind == "wall" else "CPU of the loop thread"
        print(f"| {label} | {shown} | {sum(cells):.0f} |")
    print(f"(clicks per micro-batch, mean: {statistics.median(r['batch'] for r in runs):.0f})")


class Paced(NamedTuple):
    """One run at a steady click rate."""

    p50: float  # ms, click sent -> answer read
    p95: float
    p99: float
    answers_per_s: float
    cpu_us: float  # the worker process's CPU time per answer, µs
    profile: dict[str, float]


async def latency(
    settings: KafkaSettings,
    model: Path,
    tmp: Path,
    naive: bool,
    rate: float,
    seconds: float,
    n_items: int,
    cpus: CpuPlan | None = None,
    code: Path | None = None,
) -> Paced:
    """Latency percentiles, answer rate and worker CPU at a steady click rate."""
    run = Run.fresh("naive" if naive else "batched")
    await create_topics(settings, run)
    worker = start_worker(settings, run, model, tmp, naive, code, cpus)
    try:
        await asyncio.to_thread(worker.wait_ready, 90)
        events = int(rate * seconds)
        answers: list = []
        reader = asyncio.create_task(
            read_answers(settings, run.recs, events, seconds + 60, answers)
        )
        source = ClickSource(seed=2, n_items=n_items)
        cpu_before = cpu_seconds(worker.proc.pid)
        await produce_paced(settings, run.clicks, source, rate, events)
        await reader
        cpu_used = cpu_seconds(worker.proc.pid) - cpu_before
        profile = await asyncio.to_thread(stage_profile, worker, events)
    finally:
        worker.stop()
        await delete_topics_with_prefix(settings, run.tag)
    answers.sort(key=lambda a: a[1])
    steady = answers[len(answers) // 10 :]
    lat = np.array([(recv * 1000 - ts) for recv, ts in steady])
    span = (steady[-1][1] - steady[0][1]) / 1000 if len(steady) > 1 else float("nan")
    p50, p95, p99 = np.percentile(lat, [50, 95, 99])
    cpu_us = cpu_used / max(len(answers), 1) * 1e6
    return Paced(float(p50), float(p95), float(p99), len(steady) / span, cpu_us, profile)


async def produce_paced(
    settings: KafkaSettings, topic: str, source: ClickSource, rate: float, n: int
):
    """Clicks stamped with their send time, at `rate` per second (in small bursts of 5 ms).

    Each burst goes out as one record batch per partition (keyed, partitioned as `send`
    would), not a `send` per click: the generator shares the machine with the worker, and
    a send per click cost it about 0.2 of a CPU at 4,500 clicks/s.
    """
    client = producer(settings, linger_ms=1)
    await client.start()
    try:
        partitions = sorted(await client.partitions_for(topic))
        partition_of = DefaultPartitioner()
        started = time.monotonic()
        sent = 0
        while sent < n:
            due = min(n, int((time.monotonic() - started) * rate) + 1)
            batches: dict[int, Any] = {}
            while sent < due:
                key, value = source.message(int(time.time() * 1000))
                partition = partition_of(key, partitions, partitions)
                batch = batches.get(partition)
                if batch is None or batch.append(key=key, value=value, timestamp=None) is None:
                    if batch is not None:  # full: send it, start another
                        await client.send_batch(batch, topic, partition=partition)
                    batch = batches[partition] = client.create_batch()
                    batch.append(key=key, value=value, timestamp=None)
                sent += 1
            for partition, batch in batches.items():
                await client.send_batch(batch, topic, partition=partition)
            await asyncio.sleep(0.005)
        await client.flush()
    finally:
        await client.stop()


def interleaved(args: argparse.Namespace, measure: Callable[[Path | None], T]) -> list[list[T]]:
    """`measure(code)` --runs times for this checkout (code None) and for args.compare.

    ABBA order: a load that rises or falls over the benchmark favours neither.
    Returns [this checkout's results, the compared checkout's].
    """
    this: list[T] = []
    other: list[T] = []
    pair = [(None, this), (args.compare.resolve(), other)]
    for run in range(args.runs):
        for code, out in pair if run % 2 == 0 else pair[::-1]:
            out.append(measure(code))
    return [this, other]


def compare_throughput(
    settings: KafkaSettings,
    model: Path,
    tmp: Path,
    args: argparse.Namespace,
    n_items: int,
    cpus: CpuPlan | None,
) -> None:
    """This checkout's worker against the one in args.compare, runs interleaved."""
    this, other = interleaved(
        args,
        lambda code: asyncio.run(
            throughput(settings, model, tmp, False, args.events, n_items, code=code, cpus=cpus)
        ),
    )
    for label, runs in (("this checkout", this), (f"{args.compare}", other)):
        rates = ", ".join(f"{r:,.0f}" for r, _, _ in runs)
        print(
            f"## {label}: sustained {statistics.median(r for r, _, _ in runs):,.0f} events/s "
            f"(runs: {rates}); {statistics.median(c for _, c, _ in runs):,.0f} per CPU-second"
        )
        print_profile([p for _, _, p in runs])
    ratio = statistics.median(r for r, _, _ in this) / statistics.median(r for r, _, _ in other)
    ratio_cpu = statistics.median(c for _, c, _ in this) / statistics.median(c for _, c, _ in other)
    print(f"this / compared: {ratio:.2f}x events/s, {ratio_cpu:.2f}x events per CPU-second")


def compare_latency(
    settings: KafkaSettings,
    model: Path,
    tmp: Path,
    args: argparse.Namespace,
    n_items: int,
    cpus: CpuPlan | None,
) -> None:
    """This checkout's worker against the one in args.compare at each paced rate, interleaved."""
    print("| worker | clicks/s | p50 ms | p95 ms | p99 ms | answers/s | worker CPU µs a click |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for rate in args.compare_rates:
        runs = interleaved(
            args,
            lambda code, rate=rate: asyncio.run(
                latency(settings, model, tmp, False, rate, args.seconds, n_items, cpus, code)
            ),
        )
        medians = []
        for label, paced in zip(("this checkout", str(args.compare)), runs, strict=True):
            m = [statistics.median(getattr(r, f) for r in paced) for f in Paced._fields[:5]]
            medians.append(m)
            p99s = ", ".join(f"{r.p99:.0f}" for r in paced)
            print(
                f"| {label} | {rate:,.0f} | {m[0]:.1f} | {m[1]:.1f} | {m[2]:.1f} (runs: {p99s}) "
                f"| {m[3]:,.0f} | {m[4]:.0f} |",
                flush=True,
            )
        this, that = medians
        print(
            f"| this / compared | | {this[0] / that[0]:.2f}x | {this[1] / that[1]:.2f}x "
            f"| {this[2] / that[2]:.2f}x | | {this[4] / that[4]:.2f}x |",
            flush=True,
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_kafka_arguments(parser)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--events", type=int, default=30_000, help="backlog per throughput run")
    parser.add_argument("--naive-events", type=int, default=3_000)
    parser.add_argument("--seconds", type=float, default=20.0, help="per latency run")
    parser.add_argument("--catalogue", choices=sorted(CATALOGUES), default="ml-1m")
    parser.add_argument(
        "--rates",
        type=lambda text: [float(r) for r in text.split(",") if r],
        default=[],
        metavar="R1,R2",
        help="also the micro-batched worker's latency at these click rates (e.g. 2500,3700)",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="only the micro-batched worker's and the floor's throughput (no naive, no latency)",
    )
    parser.add_argument(
        "--compare",
        type=Path,
        metavar="DIR",
        help="also measure the throughput of the worker in checkout DIR (e.g. an earlier "
        "commit's `git worktree`), its runs interleaved with this one's",
    )
    parser.add_argument(
        "--compare-rates",
        type=lambda text: [float(r) for r in text.split(",") if r],
        default=[],
        metavar="R1,R2",
        help="with --compare: also both workers' latency at these click rates, runs "
        "interleaved (--seconds each)",
    )
    parser.add_argument(
        "--shared-cpus",
        action="store_true",
        help="let the workers share every CPU with the broker and the benchmark (by default "
        "each worker gets one of its own where there are 2 or more: benchmarks/cpu_plan.py)",
    )
    parser.add_argument("--floor-worker", nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.compare_rates and not args.compare:
        parser.error("--compare-rates compares with --compare DIR; name the other checkout")
    try:
        settings = settings_from_args(args)
    except KafkaConfigError as exc:
        return report_failure(PROG, exc)
    if args.floor_worker:
        *names, port = args.floor_worker
        floor_worker(settings, *names, web_port=int(port))
        return 0
    try:
        run_kafka(check_connection(settings), settings)
    except KafkaSetupError as exc:
        return report_failure(PROG, exc)

    cpus = None if args.shared_cpus else CpuPlan.choose()
    broker = local_broker_pid(settings.bootstrap_servers) if cpus is not None else None
    with (
        cpus.applied(broker) if cpus is not None else contextlib.nullcontext(),
        tempfile.TemporaryDirectory(prefix="bench-stream-") as tmpdir,
    ):
        return _run(settings, args, cpus, Path(tmpdir))


def _run(settings: KafkaSettings, args: argparse.Namespace, cpus: CpuPlan | None, tmp: Path) -> int:
    n_items, kind, layers, embedding = CATALOGUES[args.catalogue]
    model = write_random_artifact(
        tmp / "model",
        version="bench",
        n_items=n_items,
        layers=layers,
        input_kind=kind,
        embedding_dim=embedding,
    )
    print(
        f"# end to end, one worker, {args.catalogue}: {n_items:,} items, {kind}, GRU "
        f"{layers}; median of {args.runs} runs; load average at start "
        f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs; "
        + (cpus.describe() if cpus is not None else "the workers share every CPU")
    )
    results = {}
    if args.compare:
        compare_throughput(settings, model, tmp, args, n_items, cpus)
        if args.compare_rates:
            compare_latency(settings, model, tmp, args, n_items, cpus)
    for naive in (False,) if args.quick else (False, True):
        name = "naive" if naive else "batched"
        n = args.naive_events if naive else args.events
        runs = [
            asyncio.run(throughput(settings, model, tmp, naive, n, n_items, cpus=cpus))
            for _ in range(args.runs)
        ]
        best = statistics.median(r for r, _, _ in runs)
        per_cpu = statistics.median(c for _, c, _ in runs)
        results[name] = (best, per_cpu)
        shown = ", ".join(f"{r:,.0f}" for r, _, _ in runs)
        print(
            f"\n## {name}: sustained {best:,.0f} events/s (runs: {shown}); "
            f"{per_cpu:,.0f} events per worker CPU-second"
        )
        print_profile([p for _, _, p in runs])
        paced = {}
        loads = [] if args.quick else [(f"{s:.0%}", best * s) for s in (0.5, 0.9)]
        if not (args.quick or naive):
            loads += [("fixed", float(rate)) for rate in args.rates]
        if loads:
            print("| load | clicks/s | p50 ms | p95 ms | p99 ms | answers/s |")
            print("| --- | ---: | ---: | ---: | ---: | ---: |")
        for label, rate in loads:
            lat = [
                asyncio.run(latency(settings, model, tmp, naive, rate, args.seconds, n_items, cpus))
                for _ in range(args.runs)
            ]
            p50, p95, p99, achieved = (statistics.median(x[i] for x in lat) for i in range(4))
            if label != "fixed":
                paced[label] = [x.profile for x in lat]
            print(
                f"| {label} | {rate:,.0f} | {p50:.1f} | {p95:.1f} | {p99:.1f} | {achieved:,.0f} |",
                flush=True,
            )
        for label, profiles in paced.items():
            # The same steps with clicks paced, the benchmark's producer and reader
            # running beside the worker (compare with the backlog's profile above).
            print(f"\nsteps at {label} load:")
            print_profile(profiles)
    floor = [
        asyncio.run(throughput(settings, model, tmp, False, args.events, n_items, True, cpus=cpus))
        for _ in range(args.runs)
    ]
    print(
        f"\n## Faust floor (bare agent, same batches, one send per click): "
        f"{statistics.median(r for r, _, _ in floor):,.0f} events/s, "
        f"{statistics.median(c for _, c, _ in floor):,.0f} events per worker CPU-second"
    )
    floor_rate = statistics.median(r for r, _, _ in floor)
    print(f"\nbatched / floor: {results['batched'][0] / floor_rate:.0%} of the floor's events/s")
    if "naive" in results:
        ratio = results["batched"][0] / results["naive"][0]
        ratio_cpu = results["batched"][1] / results["naive"][1]
        print(f"batched / naive: {ratio:.1f}x events/s, {ratio_cpu:.1f}x events per CPU-second")
    return 0


if __name__ == "__main__":
    sys.exit(main())
