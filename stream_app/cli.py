"""`gru4stream worker`: run one streaming recommendation worker.

    gru4stream worker --bootstrap 127.0.0.1:9092 --model path/to/artifact --web-port 6066

The model to start with comes from `--model DIR` (or `--registry ROOT`, which serves its
promoted version, or `--registry ROOT --model v0003|latest|promoted`). After that the
newest announcement on `model-updates` wins, and every later one is applied (hot swap).
Without any model the worker starts anyway: bad events still go to the DLQ, good ones wait
(unacknowledged, so nothing is lost) until a model is announced; /health answers 503 until
then.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import os
import sys
from dataclasses import replace

# One BLAS/OpenMP thread per worker: scale by running workers, not threads. This has to be
# set before numpy is first imported, hence the late imports in worker_main.
_THREAD_ENV = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")

SWITCH_INTERVAL_S = 0.0005

log = logging.getLogger(__name__)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="gru4stream worker",
        description="Answer every click on the clicks topic with the top-K next items.",
    )
    bootstrap = os.environ.get("GRU4STREAM_BOOTSTRAP", "127.0.0.1:9092")
    p.add_argument("--bootstrap", default=bootstrap, help="Kafka HOST:PORT (default %(default)s)")
    p.add_argument("--model", help="artifact directory, or with --registry a version name")
    p.add_argument("--registry", help="model registry root (serves its promoted version)")
    p.add_argument("--k", type=int, default=20, help="items per recommendation")
    p.add_argument("--app-id", default="gru4stream-worker", help="consumer group / app id")
    p.add_argument("--clicks-topic", default="clicks")
    p.add_argument("--recommendations-topic", default="recommendations")
    p.add_argument("--dlq-topic", default="clicks-dlq")
    p.add_argument("--model-updates-topic", default="model-updates")
    p.add_argument("--partitions", type=int, default=4, help="of clicks, when created here")
    p.add_argument("--web-port", type=int, default=6066)
    p.add_argument("--web-bind", default="0.0.0.0")
    p.add_argument("--data-dir", help="RocksDB directory (default ./var/worker/<app-id>)")
    p.add_argument("--session-ttl", default="30m", help="inactivity before a session ends")
    p.add_argument("--cleanup-interval", default="60s", help="how often expired sessions go")
    p.add_argument("--history", type=int, default=50, help="items kept per session")
    p.add_argument("--batch-max", type=int, default=256, help="clicks per micro-batch")
    p.add_argument("--batch-wait", default="10ms", help="longest wait to fill a micro-batch")
    p.add_argument(
        "--keep-seen",
        action="store_true",
        help="allow recommending items already in the session (excluded by default)",
    )
    p.add_argument(
        "--any-key", action="store_true", help="accept clicks whose key is not the session id"
    )
    p.add_argument("--commit-interval", default="2.8s", help="how often offsets are committed")
    p.add_argument("--offset-reset", choices=("earliest", "latest"), default="earliest")
    p.add_argument("--standby-replicas", type=int, default=1)
    p.add_argument(
        "--broker-session-timeout",
        default="30s",
        help="silence after which a worker's partitions move to the others (min 6s)",
    )
    p.add_argument("--exact-max-items", type=int, default=100_000, help="HNSW above this")
    p.add_argument(
        "--naive", action="store_true", help="baseline mode: per click, full scoring (benchmarks)"
    )
    p.add_argument("--loglevel", default="info")
    return p


def config_from_args(args: argparse.Namespace):  # -> WorkerConfig (imported late)
    from stream_app.config import WorkerConfig, parse_duration
    from stream_app.core import CoreConfig

    core = CoreConfig(
        k=args.k,
        history_len=args.history,
        session_ttl_ms=int(parse_duration(args.session_ttl) * 1000),
        exclude_seen=not args.keep_seen,
        require_session_key=not args.any_key,
        exhaustive=args.naive,
    )
    return WorkerConfig(
        app_id=args.app_id,
        bootstrap=args.bootstrap,
        clicks_topic=args.clicks_topic,
        recommendations_topic=args.recommendations_topic,
        dlq_topic=args.dlq_topic,
        model_updates_topic=args.model_updates_topic,
        partitions=args.partitions,
        model=args.model,
        registry=args.registry,
        core=core,
        batch_max=args.batch_max,
        batch_within_s=parse_duration(args.batch_wait),
        naive=args.naive,
        cleanup_interval_s=parse_duration(args.cleanup_interval),
        web_port=args.web_port,
        web_bind=args.web_bind,
        data_dir=args.data_dir,
        offset_reset=args.offset_reset,
        standby_replicas=args.standby_replicas,
        broker_session_timeout_s=parse_duration(args.broker_session_timeout),
        commit_interval_s=parse_duration(args.commit_interval),
        exact_max_items=args.exact_max_items,
        loglevel=args.loglevel,
    )


def initial_model_path(config) -> str | None:
    """The artifact directory to start with, or None (then wait for model-updates)."""
    from schemas.registry import Registry, resolve_model

    if config.registry:
        registry = Registry(config.registry)
        spec = config.model or "promoted"
        if spec == "promoted" and registry.promoted() is None:
            log.warning("registry %s has no promoted version yet", config.registry)
            return None
        return str(resolve_model(spec, registry))
    if config.model:
        return str(resolve_model(config.model))
    return None


def worker_main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    for name in _THREAD_ENV:
        os.environ.setdefault(name, "1")

    from schemas.artifact import ArtifactError
    from schemas.topics import CLICKS, CLICKS_DLQ, MODEL_UPDATES, RECOMMENDATIONS, spec_named
    from stream_app.app import create_app
    from stream_app.model_updates import load_model
    from stream_app.topics import ensure_topics

    try:
        config = config_from_args(args)
    except ValueError as exc:
        print(f"gru4stream worker: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=config.loglevel.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )

    model = None
    try:
        path = initial_model_path(config)
        if path is not None:
            model = load_model(path, **config.serving_options())
    except ArtifactError as exc:
        print(f"gru4stream worker: cannot serve the model given: {exc}", file=sys.stderr)
        return 2

    clicks = replace(spec_named(config.clicks_topic, CLICKS), partitions=config.partitions)
    specs = [
        clicks,
        spec_named(config.recommendations_topic, RECOMMENDATIONS),
        spec_named(config.dlq_topic, CLICKS_DLQ),
        spec_named(config.model_updates_topic, MODEL_UPDATES),
    ]
    try:
        counts = asyncio.run(ensure_topics(config.bootstrap, specs))
    except Exception as exc:  # noqa: BLE001 - any broker failure ends here, with its reason
        print(f"gru4stream worker: Kafka at {config.bootstrap}: {exc}", file=sys.stderr)
        return 1
    config = replace(config, partitions=counts[config.clicks_topic])

    app, runtime = create_app(config)
    if model is not None:
        runtime.holder.swap(model)
    worker = app.Worker(loglevel=config.loglevel)
    # Faust's terminal spinner sets the root logger to DEBUG so that it can spin on every
    # record; then every debug call on the hot path builds a LogRecord (about a fifth of the
    # worker's time at WARNING level). A worker runs headless, so no spinner.
    worker.spinner = None
    # The inference thread holds the GIL between numpy/FAISS calls; with the default 5 ms
    # switch interval, each socket send of the event loop then waits up to 5 ms to get it
    # back (a GIL convoy). A short interval keeps the loop's I/O flowing.
    sys.setswitchinterval(SWITCH_INTERVAL_S)
    # Everything loaded so far (Faust, torch-free numpy/FAISS, the model) lives as long as the
    # process: keep it out of the collector's scans, and collect young objects less often
    # (each answer allocates a few dozen short-lived containers).
    gc.freeze()
    gc.set_threshold(50_000, 20, 20)
    worker.execute_from_commandline()
    return 0
