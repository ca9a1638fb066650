"""Topics from `schemas.topics` specs: create the missing ones, describe, delete.

Creation is idempotent (an existing topic keeps its settings and its partition count wins)
and returns only when every partition has a leader, so a producer can write at once. The
replication factor and `min.insync.replicas` come from the settings; unset, the broker's
defaults apply (replication factor -1 in the CreateTopics request).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable
from dataclasses import replace

from aiokafka.admin import NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import KafkaError, for_code

from kafka_io.clients import admin
from kafka_io.settings import KafkaSettings
from schemas.topics import TopicSpec

log = logging.getLogger(__name__)

TOPIC_ALREADY_EXISTS = 36
TOPIC_AUTHORIZATION_FAILED = 29
BROKER_DEFAULT = -1


class TopicError(RuntimeError):
    """A topic could not be created, found or made ready."""


def new_topic(spec: TopicSpec, settings: KafkaSettings) -> NewTopic:
    config = dict(spec.config)
    if settings.min_insync_replicas:
        config["min.insync.replicas"] = str(settings.min_insync_replicas)
    if settings.replication_factor:
        return NewTopic(
            spec.name, spec.partitions, settings.replication_factor, topic_configs=config
        )
    # aiokafka accepts -1 ("the broker's default") only next to an (empty) assignment.
    return NewTopic(spec.name, spec.partitions, BROKER_DEFAULT, {}, topic_configs=config)


async def create_topics(
    settings: KafkaSettings, specs: Iterable[TopicSpec], *, timeout_s: float = 30.0
) -> dict[str, int]:
    """Create the topics that do not exist yet; return every topic's actual partition count."""
    specs = list(specs)
    if not specs:
        return {}
    client = admin(settings, request_timeout_ms=int(timeout_s * 1000))
    await client.start()
    try:
        existing = set(await client.list_topics())
        missing = [s for s in specs if s.name not in existing]
        if missing:
            response = await client.create_topics(
                [new_topic(s, settings) for s in missing], timeout_ms=int(timeout_s * 1000)
            )
            created = []
            for name, code, *rest in response.topic_errors:
                if code == 0:
                    created.append(name)
                elif code != TOPIC_ALREADY_EXISTS:  # another process created it meanwhile
                    message = rest[0] if rest and rest[0] else for_code(code).__name__
                    if code == TOPIC_AUTHORIZATION_FAILED:  # name who lacks which ACL
                        message = f"{_principal(settings)} is not allowed to CREATE it (ACL denied)"
                    raise TopicError(f"creating topic {name!r} failed: {message}")
            if created:
                log.info("created topics %s", created)
        return await _wait_for_leaders(client, [s.name for s in specs], timeout_s)
    finally:
        await client.close()


def _principal(settings: KafkaSettings) -> str:
    return f"principal User:{settings.sasl_username}" if settings.uses_sasl else "this client"


async def _wait_for_leaders(client, names: list[str], timeout_s: float) -> dict[str, int]:
    deadline = time.monotonic() + timeout_s
    counts: dict[str, int] = {}
    while True:
        for topic in await client.describe_topics([n for n in names if n not in counts]):
            parts = topic.get("partitions") or []
            if topic.get("error_code", 0) == 0 and parts and all(p["leader"] >= 0 for p in parts):
                counts[topic["topic"]] = len(parts)
        if len(counts) == len(names):
            return counts
        if time.monotonic() > deadline:
            absent = sorted(set(names) - set(counts))
            raise TopicError(f"topics without a leader after {timeout_s:.0f} s: {absent}")
        await asyncio.sleep(0.1)


def ensure_topics(
    settings: KafkaSettings, specs: Iterable[TopicSpec], *, timeout_s: float = 30.0
) -> dict[str, int]:
    """Synchronous `create_topics`; must not be called from inside a running event loop."""
    return asyncio.run(create_topics(settings, specs, timeout_s=timeout_s))


async def topic_partitions(settings: KafkaSettings, topic: str) -> list[int]:
    """The partition numbers of a topic; TopicError when it does not exist."""
    client = admin(settings)
    await client.start()
    try:
        (described,) = await client.describe_topics([topic])
    finally:
        await client.close()
    if described["error_code"] != 0 or not described["partitions"]:
        reason = for_code(described["error_code"]).__name__ if described["error_code"] else ""
        raise TopicError(
            f"topic {topic!r} does not exist on {settings.bootstrap_servers}"
            + (f" ({reason})" if reason else "")
        )
    return sorted(p["partition"] for p in described["partitions"])


async def resolve_replication(settings: KafkaSettings) -> KafkaSettings:
    """These settings with `replication_factor` set: as given, else the broker's
    `default.replication.factor` (for clients such as Faust that cannot ask for "default").

    Reading a broker's configuration needs DESCRIBE_CONFIGS on the cluster; a principal
    without it gets min(3, brokers) and a warning to set replication.factor.
    """
    if settings.replication_factor:
        return settings
    client = admin(settings)
    await client.start()
    try:
        cluster = await client.describe_cluster()
        node = str(cluster["controller_id"])
        wanted = {"default.replication.factor": None}
        try:
            (response,) = await client.describe_configs(
                [ConfigResource(ConfigResourceType.BROKER, node, wanted)]
            )
            found = [
                int(entry[1])
                for resource in response.resources
                if resource[0] == 0  # error code
                for entry in resource[4]  # (name, value, read_only, ...)
                if entry[0] == "default.replication.factor"
            ]
        except KafkaError:
            found = []
    finally:
        await client.close()
    if not found:
        found = [min(3, len(cluster["brokers"]))]
        log.warning(
            "cannot read the brokers' default.replication.factor; changelogs get %d replicas "
            "(set replication.factor to choose)",
            found[0],
        )
    return replace(settings, replication_factor=found[0])


async def delete_topics(
    settings: KafkaSettings, names: Iterable[str], *, timeout_s: float = 30.0
) -> None:
    client = admin(settings, request_timeout_ms=int(timeout_s * 1000))
    await client.start()
    try:
        await client.delete_topics(list(names), timeout_ms=int(timeout_s * 1000))
    finally:
        await client.close()


async def list_topics(settings: KafkaSettings) -> list[str]:
    client = admin(settings)
    await client.start()
    try:
        return list(await client.list_topics())
    finally:
        await client.close()


async def delete_topics_with_prefix(settings: KafkaSettings, prefix: str) -> list[str]:
    """Delete every topic whose name starts with `prefix`; the names deleted.

    A run's own topics and the ones its workers made (Faust's changelog and assignor topics
    carry the app id as their prefix).
    """
    names = [t for t in await list_topics(settings) if t.startswith(prefix)]
    if names:
        await delete_topics(settings, names)
    return names
