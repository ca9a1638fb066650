"""`gru4stream topics create`: create the project's topics (`schemas.topics`) on a cluster.

    gru4stream topics create --kafka-config admin.properties [--replication-factor 3]

It connects like every other command (`--kafka-config`, `GRU4STREAM_KAFKA_*`, TLS and SASL),
so deployments create their topics on a secured cluster, where `kafka-topics.sh` has no
credentials. Idempotent: a topic that exists keeps its settings (a partition count other
than the spec's is reported). The replication factor and `min.insync.replicas` come from
the settings (`replication.factor`, `min.insync.replicas`); unset, the brokers' defaults.
"""

from __future__ import annotations

import argparse
import sys

from kafka_io.cli import add_kafka_arguments, report_failure, run_kafka, settings_from_args
from kafka_io.errors import KafkaSetupError, check_connection
from kafka_io.settings import KafkaConfigError, KafkaSettings
from kafka_io.topics import create_topics
from schemas.topics import CLICKS, CLICKS_DLQ, MODEL_UPDATES, RECOMMENDATIONS, TopicSpec, spec_named

PROG = "gru4stream topics"
# (option, the spec whose settings the topic gets); the defaults are schemas.topics.ALL_TOPICS.
TOPIC_OPTIONS = (
    ("clicks_topic", CLICKS),
    ("recommendations_topic", RECOMMENDATIONS),
    ("dlq_topic", CLICKS_DLQ),
    ("model_updates_topic", MODEL_UPDATES),
)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Create the topics of schemas/topics.py that do not exist yet.",
    )
    p.add_argument("action", choices=("create",), help="create the missing topics")
    p.add_argument("--clicks-topic", default=CLICKS.name)
    p.add_argument("--recommendations-topic", default=RECOMMENDATIONS.name)
    p.add_argument("--dlq-topic", default=CLICKS_DLQ.name)
    p.add_argument("--model-updates-topic", default=MODEL_UPDATES.name)
    p.add_argument(
        "--replication-factor",
        type=int,
        help="replicas per partition (the same as --kafka-set replication.factor=N; default: "
        "the setting, else the brokers' default.replication.factor)",
    )
    p.add_argument(
        "--timeout", type=float, default=30.0, help="seconds to wait for the partition leaders"
    )
    add_kafka_arguments(p)
    return p


def topic_specs(args: argparse.Namespace) -> list[TopicSpec]:
    """The topics to create: the specs of schemas.topics under the names given."""
    return [spec_named(getattr(args, option), spec) for option, spec in TOPIC_OPTIONS]


async def _create(settings: KafkaSettings, specs: list[TopicSpec], timeout_s: float):
    await check_connection(settings)  # a wrong CA or password is named before anything else
    return await create_topics(settings, specs, timeout_s=timeout_s)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.replication_factor is not None:
        args.kafka_set.append(f"replication.factor={args.replication_factor}")
    try:
        settings = settings_from_args(args)
    except KafkaConfigError as exc:
        return report_failure(PROG, exc)
    specs = topic_specs(args)
    try:
        counts = run_kafka(_create(settings, specs, args.timeout), settings)
    except KafkaSetupError as exc:
        return report_failure(PROG, exc)
    for spec in specs:
        found = counts[spec.name]
        note = "" if found == spec.partitions else f" (schemas.topics says {spec.partitions})"
        print(f"{spec.name}: {found} partition{'s' * (found != 1)}{note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
