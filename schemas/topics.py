"""Topic names and settings. Every part creates or reads topics through these specs."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class TopicSpec:
    name: str
    partitions: int
    config: dict[str, str] = field(default_factory=dict)
    replication: int = 1  # the development broker is a single node


# `clicks` is the archive that training and replay read, so it keeps everything.
CLICKS = TopicSpec("clicks", 4, {"retention.ms": "-1", "retention.bytes": "-1"})
RECOMMENDATIONS = TopicSpec("recommendations", 4, {"retention.ms": str(7 * 86_400_000)})
CLICKS_DLQ = TopicSpec("clicks-dlq", 1, {"retention.ms": str(30 * 86_400_000)})
# One partition, compacted on key "model": every worker reads it whole, without a group.
MODEL_UPDATES = TopicSpec(
    "model-updates", 1, {"cleanup.policy": "compact", "min.compaction.lag.ms": "0"}
)
MODEL_UPDATE_KEY = b"model"

ALL_TOPICS = (CLICKS, RECOMMENDATIONS, CLICKS_DLQ, MODEL_UPDATES)


def spec_named(name: str, like: TopicSpec) -> TopicSpec:
    """A topic with another name but the settings of `like` (tests, replay targets)."""
    return TopicSpec(name, like.partitions, dict(like.config), like.replication)
