"""Topic administration for the development broker: create topics from `schemas.topics` specs.

`create_topics` is idempotent (a topic that exists is left as it is and reported) and returns
only when every partition of every topic has a leader, so a producer can write at once.
`ensure_topics` is the same for synchronous callers (the CLI, tests outside an event loop).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import for_code

from schemas.topics import TopicSpec

log = logging.getLogger(__name__)

TOPIC_ALREADY_EXISTS = 36


class TopicError(RuntimeError):
    """A topic could not be created or did not become ready."""


async def create_topics(
    bootstrap: str, specs: Iterable[TopicSpec], *, timeout_s: float = 30.0
) -> list[str]:
    """Create the topics that do not exist yet; return the names actually created."""
    specs = list(specs)
    if not specs:
        return []
    admin = AIOKafkaAdminClient(
        bootstrap_servers=bootstrap, request_timeout_ms=int(timeout_s * 1000)
    )
    await admin.start()
    try:
        response = await admin.create_topics(
            [NewTopic(s.name, s.partitions, s.replication, topic_configs=s.config) for s in specs],
            timeout_ms=int(timeout_s * 1000),
        )
        created = []
        for name, code, *rest in response.topic_errors:
            if code == 0:
                created.append(name)
            elif code != TOPIC_ALREADY_EXISTS:
                message = rest[0] if rest and rest[0] else for_code(code).__name__
                raise TopicError(f"creating topic {name!r} failed: {message}")
        await _wait_for_leaders(admin, {s.name: s.partitions for s in specs}, timeout_s)
        if set(created) != {s.name for s in specs}:
            log.info("topics already present: %s", sorted({s.name for s in specs} - set(created)))
        return created
    finally:
        await admin.close()


async def _wait_for_leaders(
    admin: AIOKafkaAdminClient, wanted: dict[str, int], timeout_s: float
) -> None:
    deadline = time.monotonic() + timeout_s
    pending = dict(wanted)
    while True:
        for topic in await admin.describe_topics(list(pending)):
            parts = topic.get("partitions") or []
            ready = topic.get("error_code", 0) == 0 and all(p["leader"] >= 0 for p in parts)
            if ready and parts:
                if len(parts) != pending[topic["topic"]]:
                    log.warning(
                        "topic %s has %d partitions, its spec says %d",
                        topic["topic"],
                        len(parts),
                        pending[topic["topic"]],
                    )
                pending.pop(topic["topic"], None)
        if not pending:
            return
        if time.monotonic() > deadline:
            raise TopicError(f"topics without a leader after {timeout_s:.0f} s: {sorted(pending)}")
        await asyncio.sleep(0.1)


async def delete_topics(bootstrap: str, names: Iterable[str], *, timeout_s: float = 30.0) -> None:
    admin = AIOKafkaAdminClient(
        bootstrap_servers=bootstrap, request_timeout_ms=int(timeout_s * 1000)
    )
    await admin.start()
    try:
        await admin.delete_topics(list(names), timeout_ms=int(timeout_s * 1000))
    finally:
        await admin.close()


def ensure_topics(
    bootstrap: str, specs: Iterable[TopicSpec], *, timeout_s: float = 30.0
) -> list[str]:
    """Synchronous `create_topics`; must not be called from inside a running event loop."""
    return asyncio.run(create_topics(bootstrap, specs, timeout_s=timeout_s))
