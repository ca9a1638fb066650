"""Training clicks read from the archive topic by time or offset range, invalid ones counted."""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Iterable
from typing import Any

from kafka_io.settings import KafkaSettings
from schemas.events import (
    DEFAULT_LIMITS,
    ClickEvent,
    ValidationError,
    ValidationLimits,
    decode_click,
)

log = logging.getLogger(__name__)


class TopicEvents(list):
    """Clicks read from a topic (a plain list), with what was skipped and where it was read."""

    def __init__(
        self,
        events: Iterable[ClickEvent] = (),
        *,
        n_invalid: int = 0,
        invalid_reasons: Counter | None = None,
        offsets: dict[int, tuple[int, int]] | None = None,
    ) -> None:
        super().__init__(events)
        self.n_invalid = n_invalid
        self.invalid_reasons = invalid_reasons or Counter()
        self.offsets = offsets or {}  # partition -> (first offset read, stop offset)


def read_topic_events(settings: KafkaSettings, topic: str, **options: Any) -> TopicEvents:
    """Clicks of `topic` in a time range [start_ms, end_ms) or offset range, by timestamp.

    Times are the records' Kafka timestamps (the producer sets them to the click time); each
    partition is read from `offsets_for_times(start_ms)` up to the smaller of
    `offsets_for_times(end_ms)` and its end offset when the read began, so clicks arriving
    meanwhile are not included (`kafka_io.archive.read_range`). Messages that fail
    `decode_click` are counted, not raised; `kafka_io.topics.TopicError` when the topic does
    not exist. `options` are those of `aread_topic_events`. Do not call from a running event
    loop; use `aread_topic_events` there.
    """
    return asyncio.run(aread_topic_events(settings, topic, **options))


async def aread_topic_events(
    settings: KafkaSettings,
    topic: str,
    *,
    start_ms: int | None = None,
    end_ms: int | None = None,
    start_offsets: dict[int, int] | None = None,
    end_offsets: dict[int, int] | None = None,
    limits: ValidationLimits = DEFAULT_LIMITS,
    progress: bool = True,
    timeout_s: float = 60.0,
) -> TopicEvents:
    """`read_topic_events` inside a running event loop (every bound optional)."""
    from kafka_io.archive import read_range  # aiokafka only when the archive is read

    archive = await read_range(
        settings,
        topic,
        start_ms=start_ms,
        end_ms=end_ms,
        start_offsets=start_offsets,
        end_offsets=end_offsets,
        progress=progress,
        timeout_s=timeout_s,
    )
    events: list[tuple[int, int, int, ClickEvent]] = []
    reasons: Counter = Counter()
    for r in archive.records:
        try:
            click = decode_click(r.value, limits=limits)
        except ValidationError as exc:
            reasons[exc.field] += 1
            continue
        events.append((click.timestamp, r.partition, r.offset, click))
    n_invalid = sum(reasons.values())
    if n_invalid:
        log.warning("%s: skipped %d invalid message(s): %s", topic, n_invalid, dict(reasons))
    events.sort(key=lambda t: t[:3])
    return TopicEvents(
        (e for *_, e in events),
        n_invalid=n_invalid,
        invalid_reasons=reasons,
        offsets=archive.offsets,
    )
