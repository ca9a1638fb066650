"""Make sure the worker's topics exist, with the settings from `schemas.topics`."""

from __future__ import annotations

import asyncio
import logging
import time

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

from schemas.topics import TopicSpec

log = logging.getLogger(__name__)

_TOPIC_ALREADY_EXISTS = 36


async def ensure_topics(
    bootstrap: str, specs: list[TopicSpec], timeout_s: float = 30.0
) -> dict[str, int]:
    """Create the missing topics; return every topic's actual partition count.

    An existing topic keeps its settings (its partition count wins over the spec's).
    """
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [s for s in specs if s.name not in existing]
        if missing:
            try:
                response = await admin.create_topics(
                    [
                        NewTopic(s.name, s.partitions, s.replication, topic_configs=s.config)
                        for s in missing
                    ]
                )
            except TopicAlreadyExistsError:  # another worker created it meanwhile
                response = None
            for name, code, *rest in getattr(response, "topic_errors", []):
                if code not in (0, _TOPIC_ALREADY_EXISTS):
                    raise RuntimeError(f"creating topic {name!r} failed: code {code} {rest}")
            log.info("created topics %s", [s.name for s in missing])
        deadline = time.monotonic() + timeout_s
        while True:
            counts: dict[str, int] = {}
            for topic in await admin.describe_topics([s.name for s in specs]):
                parts = topic.get("partitions") or []
                if (
                    topic.get("error_code", 0) == 0
                    and parts
                    and all(p["leader"] >= 0 for p in parts)
                ):
                    counts[topic["topic"]] = len(parts)
            if len(counts) == len(specs):
                return counts
            if time.monotonic() > deadline:
                absent = sorted({s.name for s in specs} - set(counts))
                raise RuntimeError(f"topics not ready after {timeout_s:.0f} s: {absent}")
            await asyncio.sleep(0.2)
    finally:
        await admin.close()
