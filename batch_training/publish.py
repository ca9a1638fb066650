"""Announce a model version on `model-updates`, so every running worker swaps to it.

`gru4stream publish MODEL [--registry ROOT] [--bootstrap HOST:PORT] [--topic model-updates]`

MODEL is an artifact directory, or with `--registry` a version name (`v0003`), `latest` or
`promoted`. The artifact is verified (checksums, shapes, vocabulary) before anything is
sent: a corrupt artifact is refused here rather than by every worker. Publishing a registry
version also makes it the promoted one, so publishing an older version is how an operator
rolls back (the compacted topic keeps only the newest announcement for workers that start
later).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

from schemas.artifact import ArtifactError, manifest_checksum, read_artifact
from schemas.events import ModelUpdate, encode
from schemas.registry import Registry, resolve_model
from schemas.topics import MODEL_UPDATE_KEY, MODEL_UPDATES, TopicSpec, spec_named

log = logging.getLogger(__name__)

DEFAULT_BOOTSTRAP = "127.0.0.1:9092"


def default_bootstrap() -> str:
    return os.environ.get("GRU4STREAM_BOOTSTRAP", DEFAULT_BOOTSTRAP)


def flat_metrics(metrics: dict[str, Any], prefix: str = "") -> dict[str, float]:
    """Nested manifest metrics -> {"test.recall@20": 0.31, ...}, numbers only."""
    out: dict[str, float] = {}
    for key, value in metrics.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flat_metrics(value, f"{name}."))
        elif isinstance(value, int | float) and not isinstance(value, bool):
            out[name] = float(value)
    return out


def model_update_for(artifact_dir: str | os.PathLike[str], uri: str | None = None) -> ModelUpdate:
    """Verify an artifact and describe it as a ModelUpdate (ArtifactError if it is bad)."""
    artifact = read_artifact(artifact_dir)
    manifest = artifact.manifest
    return ModelUpdate(
        version=manifest.version,
        artifact_uri=uri or str(Path(artifact_dir).resolve()),
        checksum=manifest_checksum(artifact_dir),
        metrics=flat_metrics(manifest.metrics),
        created_at=manifest.created_at or int(time.time() * 1000),
    )


async def ensure_topic(bootstrap: str, spec: TopicSpec) -> bool:
    """Create the topic with its settings if it is missing; True when it was created."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        topic = NewTopic(spec.name, spec.partitions, spec.replication, topic_configs=spec.config)
        try:
            await admin.create_topics([topic])
        except TopicAlreadyExistsError:
            return False
        return True
    finally:
        await admin.close()


async def publish_update(
    bootstrap: str, update: ModelUpdate, *, topic: str = MODEL_UPDATES.name
) -> None:
    """Send one ModelUpdate (key "model") and wait until the broker has it (acks=all)."""
    await ensure_topic(bootstrap, spec_named(topic, MODEL_UPDATES))
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True)
    await producer.start()
    try:
        partitions = await producer.partitions_for(topic)
        if partitions is not None and len(partitions) != 1:
            # With several partitions "the newest update" has no meaning for a reader.
            raise RuntimeError(
                f"topic {topic!r} has {len(partitions)} partitions; model updates need exactly 1"
            )
        await producer.send_and_wait(topic, encode(update), key=MODEL_UPDATE_KEY)
    finally:
        await producer.stop()
    log.info("published %s (%s) on %s", update.version, update.artifact_uri, topic)


async def publish_artifact(
    bootstrap: str,
    artifact_dir: str | os.PathLike[str],
    *,
    topic: str = MODEL_UPDATES.name,
    uri: str | None = None,
) -> ModelUpdate:
    """Verify an artifact directory and announce it; returns what was sent."""
    update = model_update_for(artifact_dir, uri)
    await publish_update(bootstrap, update, topic=topic)
    return update


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gru4stream publish", description="announce a model version on model-updates"
    )
    parser.add_argument(
        "model", help="artifact directory, or with --registry: a version, 'latest', 'promoted'"
    )
    parser.add_argument("--registry", help="model registry root (makes the version promoted)")
    parser.add_argument(
        "--bootstrap", default=default_bootstrap(), help="Kafka bootstrap servers (host:port)"
    )
    parser.add_argument("--topic", default=MODEL_UPDATES.name, help="model updates topic")
    parser.add_argument(
        "--uri",
        help="artifact location as the workers see it, when it differs from this machine's "
        "path (another mount point, later an object-store URI)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    import asyncio

    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    registry = Registry(args.registry) if args.registry else None
    try:
        path = resolve_model(args.model, registry)
        update = model_update_for(path, args.uri)
        asyncio.run(publish_update(args.bootstrap, update, topic=args.topic))
        if registry is not None and path.parent.resolve() == registry.root.resolve():
            registry.promote(update.version, "published")
    except ArtifactError as exc:
        print(f"gru4stream publish: refused: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:  # noqa: BLE001 - broker errors end the command, with the reason
        print(f"gru4stream publish: failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    print(
        f"published {update.version} on {args.topic} via {args.bootstrap}: "
        f"{update.artifact_uri} (manifest sha256 {update.checksum[:12]})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
