"""`gru4stream demo [--quick]`: the whole loop on one machine, end to end.

1. Kafka: uses the cluster the Kafka settings name (`--kafka-config FILE`, `--bootstrap`,
   `$GRU4STREAM_KAFKA_*`), or, when they name a local plaintext broker that does not answer,
   starts the local development broker (and stops it at the end; a broker that was already
   running is left alone).
2. Trains GRU4Rec v0001 on the first users of MovieLens-1M, writes it to a model registry,
   promotes and publishes it on a model-updates topic.
3. Starts a worker (`python -m stream_app`, which is `gru4stream worker`, as a subprocess)
   on the demo's own topics, and waits until it serves v0001 and holds its partitions.
4. Streams held-out users' histories as live sessions, interleaved (users neither model was
   trained on; each click stamped with the time it is sent).
5. Halfway through, trains v0002 on more users and epochs and publishes it: the worker
   swaps models mid-stream, and sessions carry on under v0002 (their state is recomputed
   from their history).
6. Reads the answers back from `recommendations`, joins each with the next click of its
   session and prints hit rate, MRR, NDCG and click-to-answer latency per model version
   (the join of `gru4stream replay --live`), and a few recommendations with movie titles.
7. Stops the worker (and the broker if it started it) and deletes the demo's topics.

Every run uses fresh topic names (`demo-<id>-clicks`, ...), so runs do not mix. `--quick`
is a smaller configuration that finishes in a few minutes on two cores.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gzip
import logging
import os
import sys
import tempfile
import time
import uuid
from collections import defaultdict
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from aiokafka.errors import KafkaError

from deploy.kafka.broker import free_port
from kafka_io.cli import add_kafka_arguments, report_failure, settings_from_args
from kafka_io.errors import KafkaSetupError, check_connection
from kafka_io.settings import KafkaConfigError, KafkaSettings, write_properties
from kafka_io.topics import TopicError
from schemas.registry import Registry
from stream_app.replay import (
    LiveResult,
    SentClick,
    WorkerProcess,
    delete_topics_with_prefix,
    format_live_table,
    live_metrics,
    read_answers,
    send_clicks,
)

log = logging.getLogger(__name__)

DATASET = "movielens-1m"
PROG = "gru4stream demo"
LOCAL_HOSTS = ("127.0.0.1", "localhost")


@dataclass(frozen=True)
class DemoConfig:
    """How much data, training and streaming one demo run does."""

    v1_users: int  # MovieLens-1M users v0001 is trained on (the first ones)
    v1_epochs: int
    v2_users: int  # v0002: more users...
    v2_epochs: int  # ...and more epochs
    stream_users: int  # held-out users (the last ones) streamed as live sessions
    session_clicks: int  # at most this many clicks per streamed session
    rate: float  # clicks per second sent to Kafka
    k: int = 20
    preset: str = "quick"  # training hyperparameters (batch_training/presets)
    # MovieLens users have long histories (165 clicks on average, some thousands): training
    # on windows of at most this many items keeps all session-parallel lanes busy.
    max_history: int = 50


FULL = DemoConfig(
    v1_users=500, v1_epochs=1, v2_users=1500, v2_epochs=2, stream_users=200, session_clicks=30,
    rate=200.0,
)  # fmt: skip
QUICK = DemoConfig(
    v1_users=150, v1_epochs=1, v2_users=300, v2_epochs=2, stream_users=60, session_clicks=20,
    rate=100.0,
)  # fmt: skip


def say(text: str = "") -> None:
    print(text, flush=True)


# --- Kafka -----------------------------------------------------------------------------------


@contextlib.contextmanager
def kafka_broker(settings: KafkaSettings):
    """Yield the settings to use: those given when their cluster answers (KafkaSetupError,
    one line, when it does not or refuses them), or, when they name a local plaintext broker
    that does not answer, those of the development broker started here."""
    from deploy.kafka.broker import BrokerConfig, probe, start, stop

    hosts = settings.hosts
    local = (
        settings.security_protocol == "PLAINTEXT" and len(hosts) == 1 and hosts[0][0] in LOCAL_HOSTS
    )
    if not local or probe(settings.bootstrap_servers):
        asyncio.run(check_connection(settings))  # names a wrong address, CA file or password
        say(f"Kafka: using {settings.describe()}")
        yield settings
        return
    config = BrokerConfig(port=hosts[0][1])
    say(
        f"Kafka: no broker at {settings.bootstrap_servers}; starting the local one "
        "(first start fetches jars)"
    )
    info = start(config)
    say(f"Kafka: started {info.version} on {info.bootstrap} (pid {info.pid})")
    try:
        yield replace(settings, bootstrap_servers=info.bootstrap)
    finally:
        stop(config)
        say("Kafka: stopped the broker this demo started")


@dataclass(frozen=True)
class DemoTopics:
    clicks: str
    recommendations: str
    dlq: str
    model_updates: str

    @classmethod
    def fresh(cls, run_id: str) -> DemoTopics:
        base = f"demo-{run_id}"
        return cls(f"{base}-clicks", f"{base}-recommendations", f"{base}-dlq", f"{base}-updates")


def create_topics(settings: KafkaSettings, topics: DemoTopics) -> None:
    from kafka_io.topics import create_topics as create
    from schemas.topics import CLICKS, CLICKS_DLQ, MODEL_UPDATES, RECOMMENDATIONS, spec_named

    specs = [
        spec_named(topics.clicks, CLICKS),
        spec_named(topics.recommendations, RECOMMENDATIONS),
        spec_named(topics.dlq, CLICKS_DLQ),
        spec_named(topics.model_updates, MODEL_UPDATES),
    ]
    asyncio.run(create(settings, specs))


def delete_topics(settings: KafkaSettings, prefix: str) -> None:
    """Delete the demo's topics, the worker's changelog topics included (same prefix)."""
    try:
        asyncio.run(delete_topics_with_prefix(settings, prefix))
    except Exception as exc:  # noqa: BLE001 - leftovers are harmless, say so and go on
        say(f"(could not delete the demo topics: {exc})")


# --- training ---------------------------------------------------------------------------------


def train_version(
    registry: Registry, config: DemoConfig, *, users: int, epochs: int, progress: bool
) -> tuple[str, dict[str, float], float]:
    """Train on the first `users` users, store as the next version; (version, metrics, s)."""
    import torch

    from batch_training.config import load_preset
    from batch_training.data import load_split
    from batch_training.evaluate import GRU4RecScorer, evaluate_full
    from batch_training.export import export_artifact
    from batch_training.train import train

    started = time.perf_counter()
    torch.set_num_threads(max(1, min(4, os.cpu_count() or 1)))
    split = load_split(DATASET, max_sessions=users, n_negatives=0)
    train_config = load_preset(config.preset).replace(
        n_epochs=epochs, max_history=config.max_history
    )
    support = split.item_support
    result = train(
        split.train,
        train_config,
        n_items=len(split.vocab.ids),
        item_support=support,
        progress=progress,
    )
    # Leave-one-out on the same users: each one's last item, after the rest of the history.
    metrics = evaluate_full(GRU4RecScorer(result.model), split.test, progress=False)
    name, path = registry.new_version_dir()
    export_artifact(
        result,
        split.vocab,
        path,
        version=name,
        item_support=support,
        training_data={"dataset": DATASET, "users": users, **split.time_range},
        metrics={"test": metrics},
    )
    return name, metrics, time.perf_counter() - started


def publish(settings: KafkaSettings, registry: Registry, version: str, topic: str) -> None:
    from batch_training.publish import publish_artifact

    # Promoted first: the worker (--registry) refuses an announced version not promoted.
    registry.promote(version, "demo")
    asyncio.run(publish_artifact(settings, registry.path(version), topic=topic))


# --- streaming ---------------------------------------------------------------------------------


def held_out_sessions(n_users: int, max_clicks: int, skip_users: int) -> list[tuple[str, list]]:
    """The last `n_users` users of the dataset (never trained on), first clicks of each."""
    from schemas.datasets import read_user_sequences

    seqs = read_user_sequences(DATASET)
    first = max(len(seqs) - n_users, skip_users)
    if first >= len(seqs):
        raise ValueError(f"no users left to stream after the {skip_users} trained on")
    return [
        (f"user-{seqs.session_ids[s]}", [str(i) for i in seqs.items_of(s)[:max_clicks]])
        for s in range(first, len(seqs))
    ]


def interleave(sessions: list[tuple[str, list[str]]], seed: int = 0) -> list[tuple[str, str]]:
    """One click stream from many sessions: at each step a random open session clicks next,
    so sessions overlap in time as live ones do; each session keeps its own order."""
    rng = np.random.default_rng(seed)
    remaining = [len(items) for _, items in sessions]
    position = [0] * len(sessions)
    stream = []
    open_ = [s for s, n in enumerate(remaining) if n]
    weights = np.array(remaining, dtype=np.float64)
    while open_:
        s = int(rng.choice(open_, p=weights[open_] / weights[open_].sum()))
        stream.append((sessions[s][0], sessions[s][1][position[s]]))
        position[s] += 1
        if position[s] == len(sessions[s][1]):
            open_.remove(s)
    return stream


# --- output -------------------------------------------------------------------------------------


def movie_titles() -> dict[str, str]:
    from schemas.datasets import datasets_root

    path = datasets_root() / DATASET / "movies.dat.gz"
    titles = {}
    with contextlib.suppress(OSError), gzip.open(path, "rt", encoding="latin-1") as f:
        for line in f:
            movie_id, title, _ = line.rstrip("\n").split("::", 2)
            titles[movie_id] = title
    return titles


def sample_lines(sent: list[SentClick], answers: list, k: int, n: int = 2) -> list[str]:
    """A few answers, per version, whose next click was among the top 5, with titles."""
    titles = movie_titles()
    name = titles.get
    by_click = {(c.partition, c.offset): i for i, c in enumerate(sent)}
    history: dict[str, list[str]] = defaultdict(list)
    seen_at: list[list[str]] = []
    for click in sent:
        history[click.session_id].append(click.item_id)
        seen_at.append(list(history[click.session_id]))
    nxt: dict[int, str] = {}
    last: dict[str, int] = {}
    for i, click in enumerate(sent):
        if click.session_id in last:
            nxt[last[click.session_id]] = click.item_id
        last[click.session_id] = i
    shown: dict[str, int] = defaultdict(int)
    lines = []
    for rec in sorted(answers, key=lambda r: (r.model_version, r.click_offset)):
        i = by_click.get((rec.click_partition, rec.click_offset))
        top = [x.item_id for x in rec.items[:5]]
        if i is None or nxt.get(i) not in top or shown[rec.model_version] >= n:
            continue
        shown[rec.model_version] += 1
        recent = " | ".join(name(m, m) for m in seen_at[i][-3:])
        lines.append(f"  {rec.session_id} ({rec.model_version}) just watched: {recent}")
        for rank, item in enumerate(top, 1):
            mark = "  <- watched next" if item == nxt[i] else ""
            lines.append(f"      {rank}. {name(item, item)}{mark}")
    return lines


# --- the run -----------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gru4stream demo",
        description="broker + training + worker + live stream + hot swap, end to end",
    )
    parser.add_argument("--quick", action="store_true", help="a smaller run (a few minutes)")
    parser.add_argument("--workdir", type=Path, help="registry and worker data (default: temp)")
    parser.add_argument("--keep-topics", action="store_true", help="do not delete demo topics")
    sizes = parser.add_argument_group("sizes (override the --quick or full configuration)")
    for field_name, kind in (
        ("v1_users", int), ("v1_epochs", int), ("v2_users", int), ("v2_epochs", int),
        ("stream_users", int), ("session_clicks", int), ("rate", float), ("k", int),
        ("max_history", int),
    ):  # fmt: skip
        sizes.add_argument("--" + field_name.replace("_", "-"), type=kind, default=None)
    sizes.add_argument("--preset", default=None, help="training preset (default quick)")
    add_kafka_arguments(parser)  # a local plaintext address that does not answer: started here
    return parser


def config_from_args(args: argparse.Namespace) -> DemoConfig:
    config = QUICK if args.quick else FULL
    changes = {
        name: getattr(args, name)
        for name in DemoConfig.__dataclass_fields__
        if getattr(args, name, None) is not None
    }
    config = replace(config, **changes)
    for name in ("v1_users", "v1_epochs", "v2_users", "v2_epochs", "stream_users", "k"):
        if getattr(config, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1")
    if config.session_clicks < 2 or config.rate <= 0:
        raise ValueError("--session-clicks must be >= 2 and --rate > 0")
    if config.max_history != 0 and config.max_history < 2:
        raise ValueError("--max-history must be 0 (whole histories) or >= 2")
    return config


def run(config: DemoConfig, settings: KafkaSettings, workdir: Path, keep_topics: bool) -> int:
    run_id = uuid.uuid4().hex[:8]
    topics = DemoTopics.fresh(run_id)
    registry = Registry(workdir / "models")
    progress = sys.stderr.isatty()
    t_start = time.perf_counter()
    say(f"gru4stream demo {run_id}: work directory {workdir}")
    with kafka_broker(settings) as settings:
        create_topics(settings, topics)
        worker = None
        ok = False
        try:
            say(f"\n[1/6] Training v0001: {config.v1_users} MovieLens-1M users, "
                f"{config.v1_epochs} epoch(s), preset {config.preset}, "
                f"windows of {config.max_history} items")  # fmt: skip
            v1, m1, s1 = train_version(
                registry,
                config,
                users=config.v1_users,
                epochs=config.v1_epochs,
                progress=progress,
            )
            publish(settings, registry, v1, topics.model_updates)
            say(f"      {v1}: offline recall@20 {m1['recall@20']:.3f}, MRR@20 {m1['mrr@20']:.3f} "
                f"(each user's last item), {s1:.0f} s; promoted and published")  # fmt: skip

            port = free_port()
            say(
                f"\n[2/6] Starting a worker (web http://127.0.0.1:{port}, log {workdir}/worker.log)"
            )
            # The worker connects as the demo does (credentials in a 0600 file, not argv).
            properties = write_properties(settings, workdir / "worker-client.properties")
            worker = WorkerProcess(
                [
                    "--kafka-config",
                    str(properties),
                    "--registry",
                    str(registry.root),
                    "--app-id",
                    f"demo-{run_id}",
                    "--clicks-topic",
                    topics.clicks,
                    "--recommendations-topic",
                    topics.recommendations,
                    "--dlq-topic",
                    topics.dlq,
                    "--model-updates-topic",
                    topics.model_updates,
                    "--data-dir",
                    str(workdir / "worker-data"),
                    "--web-bind",
                    "127.0.0.1",
                    "--k",
                    str(config.k),
                    "--loglevel",
                    "warning",
                ],  # fmt: skip
                workdir / "worker.log",
                port,
            )
            worker.wait_ready()
            _, body = worker.get("/model")
            say(f"      serving {body['version']} ({body['n_items']} items, {body['search']})")

            sessions = held_out_sessions(
                config.stream_users, config.session_clicks, skip_users=config.v2_users
            )
            stream = interleave(sessions)
            half = len(stream) // 2
            say(f"\n[3/6] Streaming {len(sessions)} held-out users as live sessions: "
                f"{len(stream)} clicks at {config.rate:g}/s, first half")  # fmt: skip
            sent = asyncio.run(
                send_clicks(
                    settings,
                    topics.clicks,
                    stream[:half],
                    config.rate,
                    desc="first half",
                    progress=progress,
                )
            )

            say(f"\n[4/6] Retraining v0002: {config.v2_users} users, {config.v2_epochs} "
                "epoch(s); the stream pauses, its sessions stay open")  # fmt: skip
            v2, m2, s2 = train_version(
                registry,
                config,
                users=config.v2_users,
                epochs=config.v2_epochs,
                progress=progress,
            )
            published_at = time.monotonic()
            publish(settings, registry, v2, topics.model_updates)
            worker.wait_until("swap to " + v2, lambda status, b: b.get("version") == v2, 120)
            say(f"      {v2}: offline recall@20 {m2['recall@20']:.3f}, MRR@20 {m2['mrr@20']:.3f}, "
                f"{s2:.0f} s; published, worker swapped in "
                f"{time.monotonic() - published_at:.1f} s")  # fmt: skip

            say(f"\n[5/6] Streaming the second half ({len(stream) - half} clicks)")
            sent += asyncio.run(
                send_clicks(
                    settings,
                    topics.clicks,
                    stream[half:],
                    config.rate,
                    desc="second half",
                    progress=progress,
                )
            )
            answers = asyncio.run(
                read_answers(settings, topics.recommendations, len(sent), timeout_s=120)
            )

            say(f"\n[6/6] Results: {len(answers)} answers to {len(sent)} clicks")
            say("\nSample recommendations (top 5):")
            for line in sample_lines(sent, answers, config.k):
                say(line)
            stats = live_metrics(sent, answers, config.k)
            say("\nLive metrics per model version (each answer joined with the next click of")
            say(f"its session: recall@{config.k} is the hit rate; latency = answer - click):")
            result = LiveResult("demo", stats, len(sent), len(answers))
            say(format_live_table([result], config.k))
            missing = len(sent) - len(answers)
            if missing:
                say(f"\n{missing} clicks got no answer within the wait; see {worker.log_path}")
            say(f"\nRegistry: {registry.root} ({', '.join(registry.versions())}, "
                f"promoted {registry.promoted()})")  # fmt: skip
            ok = not missing and v1 in stats and v2 in stats
        finally:
            if worker is not None:
                worker.stop()
                say("Worker stopped.")
            (workdir / "worker-client.properties").unlink(missing_ok=True)
            if not keep_topics:
                delete_topics(settings, f"demo-{run_id}")
    say(f"Done in {time.perf_counter() - t_start:.0f} s.")
    return 0 if ok else 1


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        config = config_from_args(args)
    except ValueError as exc:
        parser.error(str(exc))
    try:
        settings = settings_from_args(args)
    except KafkaConfigError as exc:
        return report_failure(PROG, exc)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="gru4stream-demo-"))
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        return run(config, settings, workdir, args.keep_topics)
    except KeyboardInterrupt:
        say("\ninterrupted; everything the demo started is stopped")
        return 130
    except (KafkaSetupError, TopicError, KafkaError) as exc:  # the cluster, in one line
        return report_failure(PROG, exc, settings)
    except Exception as exc:  # the demo is the first command people run: say what failed
        log.debug("demo failed", exc_info=True)
        print(f"gru4stream demo: failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
