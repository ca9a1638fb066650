"""Failover: how soon a killed worker's partitions are answered again, and their backlog.

    gru4stream broker start                     # or any cluster: --kafka-config FILE, --bootstrap
    python benchmarks/bench_recovery.py --runs 3
    python benchmarks/bench_recovery.py --runs 1 --session-timeout 30s    # the old default

Clicks stream at --rate per second (each stamped with its send time) from --sessions
sessions while a worker is killed with SIGKILL (no shutdown, no last commit):
  survivor  two workers in one group share the 4 partitions; one is killed, the other takes
            its partitions over (standby replicas: the worker's default, 1)
  restart   one worker; it is killed and the same command is started again at once (same
            data directory, as a process supervisor would)
  static    with --static: `restart` with --group-instance-id (static group membership)
Times from the kill, from the answers' own `produced_at` (same machine clock):
  first answer  the first answer to a click of the killed worker's partitions
  caught up     every click of those partitions sent before that first answer is answered
Every figure is the median over --runs runs (fresh topics, group and data directories).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shlex
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from uuid import uuid4

import numpy as np
import orjson
from aiokafka import TopicPartition

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kafka_io.cli import (  # noqa: E402
    add_kafka_arguments,
    redact_argv,
    report_failure,
    run_kafka,
    settings_from_args,
)
from kafka_io.clients import consumer, producer  # noqa: E402
from kafka_io.errors import KafkaSetupError, check_connection  # noqa: E402
from kafka_io.settings import KafkaConfigError, KafkaSettings, write_properties  # noqa: E402
from kafka_io.topics import delete_topics_with_prefix  # noqa: E402
from stream_app.harness import WorkerProcess  # noqa: E402
from stream_app.synthetic import write_random_artifact  # noqa: E402

N_ITEMS = 3_706  # the MovieLens-1M catalogue size
PARTITIONS = 4
PROG = "bench_recovery"


@dataclass
class Traffic:
    """What was sent and what was answered during one run."""

    sent: list[tuple[int, int, int]] = field(default_factory=list)  # partition, offset, ts
    # (partition, offset) -> produced_at (ms) of its first answer
    answered: dict[tuple[int, int], int] = field(default_factory=dict)
    answers: list[tuple[int, int]] = field(default_factory=list)  # partition, produced_at


async def produce(
    settings: KafkaSettings, topic: str, rate: float, sessions: int, stop, out: Traffic
):
    """Clicks stamped with their send time, at `rate` per second, until `stop` is set."""
    rng = np.random.default_rng()
    prefix = uuid4().hex[:6]
    client = producer(settings, linger_ms=1)
    await client.start()
    pending = []
    try:
        started, sent = time.monotonic(), 0
        while not stop.is_set():
            due = int((time.monotonic() - started) * rate) + 1
            while sent < due:
                sid = f"{prefix}-{rng.integers(sessions)}"
                ts = int(time.time() * 1000)
                value = orjson.dumps(
                    {"session_id": sid, "item_id": f"i{rng.integers(N_ITEMS)}", "timestamp": ts}
                )
                pending.append((await client.send(topic, value, key=sid.encode()), ts))
                sent += 1
            await asyncio.sleep(0.005)
        for future, ts in pending:
            meta = await future
            out.sent.append((meta.partition, meta.offset, ts))
    finally:
        await client.stop()


async def read_answers(settings: KafkaSettings, topic: str, stop, out: Traffic) -> None:
    client = consumer(settings, group_id=None, fetch_max_wait_ms=50)
    await client.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(PARTITIONS)]
        client.assign(tps)
        await client.seek_to_beginning(*tps)
        while not stop.is_set():
            batch = await client.getmany(*tps, timeout_ms=100)
            for records in batch.values():
                for r in records:
                    rec = orjson.loads(r.value)
                    key = (rec["click"]["partition"], rec["click"]["offset"])
                    out.answered.setdefault(key, rec["produced_at"])
                    out.answers.append((key[0], rec["produced_at"]))
    finally:
        await client.stop()


def worker(args: list[str], tmp: Path, tag: str, like: WorkerProcess | None = None):
    """A worker process; `like`: on the same web port (its URL is part of its identity)."""
    if like is not None:
        return WorkerProcess(args, tmp / f"{tag}.log", web_port=like.web_port).start()
    return WorkerProcess(args, tmp / f"{tag}.log").start()


def settled(workers: list[WorkerProcess], timeout: float = 90.0) -> list[set[int]]:
    """Each worker's share once they hold disjoint shares of all the partitions."""
    deadline = time.monotonic() + timeout
    while True:
        shares = [set(w.wait_ready(timeout=timeout)["partitions"]) for w in workers]
        together = set().union(*shares)
        if together == set(range(PARTITIONS)) and sum(map(len, shares)) == PARTITIONS:
            return shares
        if time.monotonic() > deadline:
            raise TimeoutError(f"the group never settled: {shares}")
        time.sleep(0.25)


async def one_run(opts: argparse.Namespace, model: Path, tmp: Path, scenario: str):
    """(first answer s, caught up s) after the kill."""
    tag = f"bench-rec-{scenario}-{uuid4().hex[:8]}"
    clicks, recs = f"{tag}-clicks", f"{tag}-recs"
    # The workers connect as this process does (credentials in a 0600 file, not argv).
    properties = write_properties(opts.kafka, tmp / "client.properties")
    args = [
        "--kafka-config", str(properties),
        "--app-id", tag,
        "--clicks-topic", clicks,
        "--recommendations-topic", recs,
        "--dlq-topic", f"{tag}-dlq",
        "--model-updates-topic", f"{tag}-updates",
        "--model", str(model),
        "--broker-session-timeout", opts.session_timeout,
        "--loglevel", "warning",
    ]  # fmt: skip
    (tmp / tag).mkdir()
    data = ["--data-dir", str(tmp / tag / "a")]
    if scenario == "static":
        data += ["--group-instance-id", f"{tag}-a"]
    victim = worker([*args, *data], tmp, f"{tag}-a")
    others = []
    if scenario == "survivor":
        others = [worker([*args, "--data-dir", str(tmp / tag / "b")], tmp, f"{tag}-b")]
    traffic, stop_producer, stop_reader = Traffic(), asyncio.Event(), asyncio.Event()
    try:
        shares = await asyncio.to_thread(settled, [victim, *others])
        killed = shares[0]
        reader = asyncio.create_task(read_answers(opts.kafka, recs, stop_reader, traffic))
        sender = asyncio.create_task(
            produce(opts.kafka, clicks, opts.rate, opts.sessions, stop_producer, traffic)
        )
        await asyncio.sleep(opts.warmup)
        kill_ms = int(time.time() * 1000)
        victim.kill()
        if scenario != "survivor":
            victim = worker([*args, *data], tmp, f"{tag}-a2", like=victim)
        # Until an answer on the killed partitions comes, then long enough to catch up.
        deadline = time.monotonic() + opts.timeout
        while not any(p in killed and at > kill_ms for p, at in traffic.answers):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{scenario}: no answer {opts.timeout:.0f} s after the kill")
            await asyncio.sleep(0.1)
        await asyncio.sleep(opts.after)
        stop_producer.set()
        await sender
        deadline = time.monotonic() + opts.timeout
        while not all((p, o) in traffic.answered for p, o, _ in traffic.sent):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{scenario}: clicks unanswered {opts.timeout:.0f} s on")
            await asyncio.sleep(0.2)
        stop_reader.set()
        await reader
    except BaseException:
        for w in [victim, *others]:
            print(f"--- {w.log_path.name}:\n{w.tail(80)}", file=sys.stderr)
        raise
    finally:
        stop_producer.set()
        stop_reader.set()
        for w in [victim, *others]:
            w.stop()
        await delete_topics_with_prefix(opts.kafka, tag)  # see bench_stream.py
    first = min(at for p, at in traffic.answers if p in killed and at > kill_ms)
    backlog = [(p, o) for p, o, ts in traffic.sent if p in killed and ts <= first]
    caught_up = max(traffic.answered[c] for c in backlog)
    return (first - kill_ms) / 1000, (caught_up - kill_ms) / 1000


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_kafka_arguments(parser)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--rate", type=float, default=200.0, help="clicks per second")
    parser.add_argument("--sessions", type=int, default=2_000)
    parser.add_argument("--warmup", type=float, default=5.0, help="seconds before the kill")
    parser.add_argument("--after", type=float, default=5.0, help="seconds after first answer")
    parser.add_argument("--timeout", type=float, default=90.0)
    parser.add_argument("--session-timeout", default="6s", help="the workers' option")
    parser.add_argument("--static", action="store_true", help="also restart with static ids")
    opts = parser.parse_args(argv)
    try:
        opts.kafka = settings_from_args(opts)
        run_kafka(check_connection(opts.kafka), opts.kafka)
    except (KafkaConfigError, KafkaSetupError) as exc:
        return report_failure(PROG, exc)

    scenarios = ["survivor", "restart"] + (["static"] if opts.static else [])
    print(f"# {shlex.join([sys.executable, *redact_argv(sys.argv)])}")
    print(
        f"# recovery after SIGKILL, {opts.rate:.0f} clicks/s, {opts.sessions:,} sessions, "
        f"{N_ITEMS:,} items; session timeout {opts.session_timeout}; median of {opts.runs} "
        f"runs; load average at start {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs"
    )
    print("| scenario | first answer s | caught up s | runs (first / caught up) |")
    print("| --- | ---: | ---: | --- |")
    with tempfile.TemporaryDirectory(prefix="bench-recovery-") as tmpdir:
        tmp = Path(tmpdir)
        model = write_random_artifact(tmp / "model", version="bench", n_items=N_ITEMS)
        for scenario in scenarios:
            runs = [asyncio.run(one_run(opts, model, tmp, scenario)) for _ in range(opts.runs)]
            first = statistics.median(f for f, _ in runs)
            caught = statistics.median(c for _, c in runs)
            shown = ", ".join(f"{f:.1f} / {c:.1f}" for f, c in runs)
            print(f"| {scenario} | {first:.1f} | {caught:.1f} | {shown} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
