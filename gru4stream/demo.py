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
import logging
import os
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, replace
from pathlib import Path

from aiokafka.errors import KafkaError

from gru4stream.demo_kafka import DemoTopics, create_topics, delete_topics, kafka_broker, say
from gru4stream.demo_stream import DATASET, held_out_sessions, interleave, sample_lines
from kafka_io.cli import add_kafka_arguments, report_failure, settings_from_args
from kafka_io.errors import KafkaSetupError
from kafka_io.settings import KafkaConfigError, KafkaSettings, write_properties
from kafka_io.topics import TopicError
from schemas.registry import Registry
from stream_app.harness import WorkerProcess, free_port
from stream_app.replay_live import LiveResult, live_metrics, read_answers, send_clicks
from stream_app.replay_report import format_live_table

log = logging.getLogger(__name__)

PROG = "gru4stream demo"


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


# --- training ---------------------------------------------------------------------------------


def train_version(
    registry: Registry, config: DemoConfig, *, users: int, epochs: int, progress: bool
) -> tuple[str, dict[str, float], float]:
    """Train on the first `users` users, store as the next version; (version, metrics, s)."""
    import torch

    from batch_training.config import load_preset
    from batch_training.pipeline import PipelineOptions, run_pipeline
    from batch_training.splits import load_split

    started = time.perf_counter()
    torch.set_num_threads(max(1, min(4, os.cpu_count() or 1)))
    split = load_split(DATASET, max_sessions=users, n_negatives=0)
    train_config = load_preset(config.preset).replace(
        n_epochs=epochs, max_history=config.max_history
    )
    # The shared recipe (batch_training.pipeline), no validation set. Leave-one-out on the
    # same users: each one's last item, after the rest of the history.
    trained, name, _ = run_pipeline(
        split,
        train_config,
        PipelineOptions(progress=progress, eval_progress=False),
        registry.new_version_dir,
        training_data={"dataset": DATASET, "users": users, **split.time_range},
        metrics=lambda trained: {"test": trained.test.metrics["full"]},
    )
    metrics = trained.test.metrics["full"]
    return name, metrics, time.perf_counter() - started


def publish(settings: KafkaSettings, registry: Registry, version: str, topic: str) -> None:
    from batch_training.publish import publish_artifact

    # Promoted first: the worker (--registry) refuses an announced version not promoted.
    registry.promote(version, "demo")
    asyncio.run(publish_artifact(settings, registry.path(version), topic=topic))


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
                web_port=port,
                own_group=True,
            ).start()
            worker.wait_ready(timeout=180)
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
