"""`gru4stream worker`: run one streaming recommendation worker.

    gru4stream worker --bootstrap 127.0.0.1:9092 --model path/to/artifact --web-port 6066

The model to start with comes from `--model DIR` (an artifact directory, or a `train --out`
run directory holding one), or `--registry ROOT`, which serves its promoted version, or
`--registry ROOT --model v0003|latest|promoted` (with a registry, only versions it has
promoted at some time load, see stream_app/trust.py). After that the newest
announcement on `model-updates` that passes those checks wins, and every later one is
applied (hot swap).
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

# kafka_io imports aiokafka only (no numpy), so it may come before the thread settings.
from kafka_io.cli import add_kafka_arguments, settings_from_args
from kafka_io.errors import check_connection, explain
from kafka_io.settings import KafkaSettings
from kafka_io.topics import create_topics, resolve_replication

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
    add_kafka_arguments(p)
    p.add_argument(
        "--model",
        help="artifact directory or training run directory (RUN_DIR/model), or with "
        "--registry a version name",
    )
    p.add_argument(
        "--registry",
        help="model registry root: serves its promoted version, and loads only versions it "
        "has promoted (recommended in production)",
    )
    p.add_argument(
        "--model-key-file",
        help="HMAC key file: every model announcement must be signed with this key",
    )
    p.add_argument("--k", type=int, default=20, help="items per recommendation")
    p.add_argument("--app-id", default="gru4stream-worker", help="consumer group / app id")
    p.add_argument("--clicks-topic", default="clicks")
    p.add_argument("--recommendations-topic", default="recommendations")
    p.add_argument("--dlq-topic", default="clicks-dlq")
    p.add_argument("--model-updates-topic", default="model-updates")
    p.add_argument("--partitions", type=int, default=4, help="of clicks, when created here")
    p.add_argument("--web-port", type=int, default=6066)
    p.add_argument(
        "--web-host",
        dest="web_bind",
        default="127.0.0.1",
        help="address the web views listen on (default %(default)s; 0.0.0.0 in a container)",
    )
    p.add_argument("--web-bind", dest="web_bind", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    p.add_argument(
        "--expose-sessions",
        action="store_true",
        help="serve /sessions/{id} (a session's clicks); 404 for every id otherwise",
    )
    p.add_argument("--data-dir", help="RocksDB directory (default ./var/worker/<app-id>)")
    p.add_argument("--session-ttl", default="30m", help="inactivity before a session ends")
    p.add_argument("--cleanup-interval", default="60s", help="how often expired sessions go")
    p.add_argument("--history", type=int, default=50, help="items kept per session")
    p.add_argument(
        "--session-cache",
        type=int,
        default=20_000,
        help="sessions kept decoded in memory in front of the table, ~7 KB each (0: none)",
    )
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
    p.add_argument(
        "--producer-linger",
        default="0ms",
        help="longest wait to fill a produce request (0ms: send what a micro-batch produced)",
    )
    p.add_argument(
        "--max-request-size",
        type=int,
        default=1_000_000,
        help="largest record sent, in bytes (at most the broker's message.max.bytes); a larger "
        "answer or session goes to the DLQ instead",
    )
    p.add_argument(
        "--dlq-prefix-bytes",
        type=int,
        default=8192,
        help="bytes of a rejected value kept in its dead letter (with its length and sha256)",
    )
    p.add_argument("--offset-reset", choices=("earliest", "latest"), default="earliest")
    p.add_argument("--standby-replicas", type=int, default=1)
    p.add_argument(
        "--broker-session-timeout",
        default="6s",
        help="silence after which a worker's partitions move to the others (the broker's "
        "minimum, group.min.session.timeout.ms, is 6s by default)",
    )
    p.add_argument(
        "--heartbeat-interval", default="1s", help="how often the worker tells the group it lives"
    )
    p.add_argument(
        "--group-instance-id",
        help="static group membership: a restart with the same id gets its partitions back "
        "at once, but a stopped worker's wait out the session timeout",
    )
    p.add_argument("--exact-max-items", type=int, default=100_000, help="HNSW above this")
    p.add_argument(
        "--exact-search",
        choices=("blas", "faiss"),
        default="blas",
        help="exact top-K by one BLAS product and a one-pass selection (default; less CPU at "
        "micro-batch sizes), or by FAISS IndexFlatIP (see scoring/search.py)",
    )
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
    session_timeout_s = parse_duration(args.broker_session_timeout)
    heartbeat_s = parse_duration(args.heartbeat_interval)
    if not 0 < heartbeat_s < session_timeout_s:
        raise ValueError("--heartbeat-interval must be shorter than --broker-session-timeout")
    if args.session_cache < 0:
        raise ValueError(f"--session-cache must be >= 0 (0: none), got {args.session_cache}")
    return WorkerConfig(
        app_id=args.app_id,
        kafka=settings_from_args(args),
        clicks_topic=args.clicks_topic,
        recommendations_topic=args.recommendations_topic,
        dlq_topic=args.dlq_topic,
        model_updates_topic=args.model_updates_topic,
        partitions=args.partitions,
        model=args.model,
        registry=args.registry,
        core=core,
        batch_max=args.batch_max,
        session_cache=args.session_cache,
        batch_within_s=parse_duration(args.batch_wait),
        naive=args.naive,
        cleanup_interval_s=parse_duration(args.cleanup_interval),
        web_port=args.web_port,
        web_bind=args.web_bind,
        expose_sessions=args.expose_sessions,
        model_key_file=args.model_key_file,
        data_dir=args.data_dir or os.path.join("var", "worker", args.app_id),
        offset_reset=args.offset_reset,
        standby_replicas=args.standby_replicas,
        broker_session_timeout_s=session_timeout_s,
        heartbeat_interval_s=heartbeat_s,
        group_instance_id=args.group_instance_id,
        commit_interval_s=parse_duration(args.commit_interval),
        producer_linger_s=parse_duration(args.producer_linger, zero_ok=True),
        producer_max_request_size=args.max_request_size,
        dlq_prefix_bytes=args.dlq_prefix_bytes,
        exact_max_items=args.exact_max_items,
        exact_search=args.exact_search,
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


async def _prepare_kafka(kafka: KafkaSettings, specs: list) -> tuple[KafkaSettings, dict[str, int]]:
    """Check the connection (TLS and SASL failures named precisely, before Faust starts),
    create the topics, and fix the changelogs' replication (Faust needs a number)."""
    await check_connection(kafka)
    counts = await create_topics(kafka, specs)
    return await resolve_replication(kafka), counts


def worker_main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    for name in _THREAD_ENV:
        os.environ.setdefault(name, "1")

    from schemas.artifact import ArtifactError
    from schemas.signing import KeyFileError
    from schemas.topics import CLICKS, CLICKS_DLQ, MODEL_UPDATES, RECOMMENDATIONS, spec_named
    from stream_app.app import create_app
    from stream_app.model_updates import load_model
    from stream_app.trust import trust_policy

    try:
        config = config_from_args(args)
    except ValueError as exc:
        print(f"gru4stream worker: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=config.loglevel.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        os.makedirs(config.data_dir, exist_ok=True)  # RocksDB does not create its parents
    except OSError as exc:
        print(f"gru4stream worker: --data-dir {config.data_dir}: {exc}", file=sys.stderr)
        return 2

    model = None
    try:
        trust = trust_policy(config.registry, config.model_key_file)  # fails early on the key
        path = initial_model_path(config)
        if path is not None:
            # With --registry the model to start with passes the same registry checks as an
            # announcement; a directory given alone (--model DIR) is read as it is.
            model = load_model(path, trust=trust, **config.serving_options())
    except KeyFileError as exc:
        print(f"gru4stream worker: {exc}", file=sys.stderr)
        return 2
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
    # aiokafka logs each failed connection attempt; a failure is said once, in the line below.
    aiokafka_log = logging.getLogger("aiokafka")
    level = aiokafka_log.level
    aiokafka_log.setLevel(logging.CRITICAL)
    try:
        kafka, counts = asyncio.run(_prepare_kafka(config.kafka, specs))
    except Exception as exc:  # noqa: BLE001 - any broker failure ends here, with its reason
        print(f"gru4stream worker: {explain(exc, config.kafka)}", file=sys.stderr)
        return 1
    finally:
        aiokafka_log.setLevel(level)
    config = replace(config, kafka=kafka, partitions=counts[config.clicks_topic])

    app, runtime = create_app(config)
    if model is not None:
        runtime.holder.swap(model)
    worker = app.Worker(loglevel=config.loglevel)
    # Faust's terminal spinner sets the root logger to DEBUG so that it can spin on every
    # record; then every debug call on the hot path builds a LogRecord (about a fifth of the
    # worker's time at WARNING level). A worker runs headless, so no spinner.
    worker.spinner = None
    # Other threads (Faust runs aiokafka's consumer in a thread of its own; models load in
    # another) hold the GIL between their calls; with the default 5 ms switch interval the
    # event loop could wait up to 5 ms for it at each release (a GIL convoy).
    sys.setswitchinterval(SWITCH_INTERVAL_S)
    # Everything loaded so far (Faust, torch-free numpy/FAISS, the model) lives as long as the
    # process: keep it out of the collector's scans, and collect young objects less often
    # (each answer allocates a few dozen short-lived containers).
    gc.freeze()
    gc.set_threshold(50_000, 20, 20)
    worker.execute_from_commandline()
    return 0
