"""The demo's Kafka: the cluster to use (or the local broker, started and stopped), and its
own fresh topics."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, replace

from kafka_io.errors import check_connection
from kafka_io.settings import KafkaSettings
from kafka_io.topics import delete_topics_with_prefix

LOCAL_HOSTS = ("127.0.0.1", "localhost")


def say(text: str = "") -> None:
    """The demo's output: a line, at once."""
    print(text, flush=True)


@contextlib.contextmanager
def kafka_broker(settings: KafkaSettings) -> Iterator[KafkaSettings]:
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
