"""Announce a model version on `model-updates`, so every running worker swaps to it.

`gru4stream publish MODEL [--registry ROOT [--force]] [--model-key-file FILE]
[--kafka-config FILE] [--bootstrap HOST:PORT] [--topic model-updates]`

MODEL is an artifact directory, or with `--registry` a version name (`v0003`), `latest` or
`promoted`. The artifact is verified (checksums, shapes, vocabulary) before anything is
sent: a corrupt artifact is refused here rather than by every worker. Publishing a registry
version also makes it the promoted one, so publishing an older version is how an operator
rolls back (the compacted topic keeps only the newest announcement for workers that start
later).

A registry version is promoted before it is announced: workers with `--registry` load only
versions the registry has promoted. A candidate the retraining gate rejected is refused
unless `--force` says the operator promotes it on purpose (the decision log records it).
With `--model-key-file` the announcement carries an HMAC signature (schemas/signing.py)
that workers given the same key require.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from kafka_io.cli import add_kafka_arguments, report_failure, run_kafka, settings_from_args
from kafka_io.clients import producer
from kafka_io.errors import KafkaSetupError, check_connection
from kafka_io.settings import KafkaConfigError, KafkaSettings
from kafka_io.topics import create_topics
from schemas.artifact import ArtifactError, read_artifact
from schemas.events import ModelUpdate, encode
from schemas.registry import Registry, resolve_model, version_number
from schemas.signing import KeyFileError, read_key_file, sign_update
from schemas.topics import MODEL_UPDATE_KEY, MODEL_UPDATES, spec_named

log = logging.getLogger(__name__)

PROG = "gru4stream publish"


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
        checksum=artifact.manifest_sha256,  # of the very bytes just verified
        metrics=flat_metrics(manifest.metrics),
        created_at=manifest.created_at or int(time.time() * 1000),
    )


async def publish_update(
    settings: KafkaSettings, update: ModelUpdate, *, topic: str = MODEL_UPDATES.name
) -> None:
    """Send one ModelUpdate (key "model") and wait until the broker has it (acks=all); the
    topic is created with the settings of `model-updates` when it is missing."""
    partitions = (await create_topics(settings, [spec_named(topic, MODEL_UPDATES)]))[topic]
    if partitions != 1:
        # With several partitions "the newest update" has no meaning for a reader.
        raise RuntimeError(
            f"topic {topic!r} has {partitions} partitions; model updates need exactly 1"
        )
    client = producer(settings)
    await client.start()
    try:
        await client.send_and_wait(topic, encode(update), key=MODEL_UPDATE_KEY)
    finally:
        await client.stop()
    log.info("published %s (%s) on %s", update.version, update.artifact_uri, topic)


async def publish_artifact(
    settings: KafkaSettings,
    artifact_dir: str | os.PathLike[str],
    *,
    topic: str = MODEL_UPDATES.name,
    uri: str | None = None,
    key: bytes | None = None,
) -> ModelUpdate:
    """Verify an artifact directory and announce it (signed with `key` if given); returns
    what was sent."""
    update = model_update_for(artifact_dir, uri)
    if key is not None:
        update = sign_update(update, key)
    await publish_update(settings, update, topic=topic)
    return update


def promotion_for_publishing(
    registry: Registry, version: str, *, force: bool = False
) -> tuple[str, dict[str, Any]]:
    """The reason and log details with which a version about to be announced is promoted.

    ArtifactError for a candidate the gate rejected (and never promoted) unless `force`:
    the operator's explicit word is what lets such a version reach the workers.
    """
    gate = registry.gate_decision(version)
    if gate != "rejected" or registry.was_promoted(version):
        return "published", {}
    if not force:
        raise ArtifactError(
            f"{version}: the promotion gate rejected this candidate (see "
            f"{registry.root}/decisions.jsonl); pass --force to promote it on purpose",
            "not_promoted",
        )
    return "forced by operator", {"forced": True, "gate_decision": gate}


def promote_for_publishing(registry: Registry, version: str, *, force: bool = False) -> None:
    """Promote a registry version about to be announced; a rejected candidate needs `force`
    (ArtifactError otherwise, and nothing changes)."""
    reason, details = promotion_for_publishing(registry, version, force=force)
    registry.promote(version, reason, **details)
    if details.get("forced"):
        log.warning("%s: rejected by the promotion gate, promoted by the operator", version)


def is_rollback(registry: Registry, version: str) -> bool:
    """Publishing a version older than the newest one ever promoted moves workers backwards:
    an operator's rollback (marked on the announcement, and it pins the registry)."""
    newest = registry.newest_promoted()
    return newest is not None and version_number(version) < version_number(newest)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gru4stream publish", description="announce a model version on model-updates"
    )
    parser.add_argument(
        "model",
        nargs="?",
        help="artifact directory, or with --registry: a version, 'latest', 'promoted'",
    )
    parser.add_argument("--registry", help="model registry root (makes the version promoted)")
    parser.add_argument("--topic", default=MODEL_UPDATES.name, help="model updates topic")
    parser.add_argument(
        "--force",
        action="store_true",
        help="with --registry: promote a candidate the retraining gate rejected (recorded)",
    )
    parser.add_argument(
        "--pin",
        action="store_true",
        help="with --registry: stop automatic promotion by retrain until --unpin (a rollback "
        "to an older version pins by itself); recorded in decisions.jsonl",
    )
    parser.add_argument(
        "--unpin",
        action="store_true",
        help="with --registry: let retrain promote again (alone, or before publishing MODEL)",
    )
    parser.add_argument(
        "--model-key-file",
        help="sign the announcement with the HMAC key in this file (workers given the same "
        "key require it)",
    )
    parser.add_argument(
        "--uri",
        help="artifact location as the workers see it, when it differs from this machine's "
        "path (another mount point, later an object-store URI)",
    )
    add_kafka_arguments(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if (args.pin or args.unpin) and not args.registry:
        parser.error("--pin and --unpin need --registry")
    if args.pin and args.unpin:
        parser.error("--pin and --unpin exclude each other")
    if args.model is None and not args.unpin:
        parser.error("the following arguments are required: model")
    if args.model is None:
        registry = Registry(args.registry)
        with registry.promotion_lock():
            was = registry.pinned()
            registry.unpin()
        print(f"unpinned {registry.root} (was {was or 'not pinned'}): retrain may promote again")
        return 0
    try:
        settings = settings_from_args(args)
    except KafkaConfigError as exc:
        return report_failure(PROG, exc)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    registry = Registry(args.registry) if args.registry else None
    try:
        key = read_key_file(args.model_key_file) if args.model_key_file else None
    except KeyFileError as exc:
        print(f"gru4stream publish: {exc}", file=sys.stderr)
        return 2
    try:
        path = resolve_model(args.model, registry)
        update = model_update_for(path, args.uri)
        in_registry = registry is not None and path.parent.resolve() == registry.root.resolve()
        if args.force and not in_registry:
            raise ArtifactError(f"{args.model}: --force promotes a version of --registry")
        if in_registry:  # a rejected candidate without --force stops here, before the broker
            promotion_for_publishing(registry, update.version, force=args.force)
        # A broker out of reach (or refusing these credentials) changes nothing in the registry.
        run_kafka(check_connection(settings), settings)
        if not in_registry:
            if key is not None:
                update = sign_update(update, key)
            run_kafka(publish_update(settings, update, topic=args.topic), settings)
        else:
            # One step under the promotion lock, so that a retrain finishing now cannot
            # promote between this rollback/pin and its announcement.
            with registry.promotion_lock():
                if args.unpin:
                    registry.unpin()
                rollback = is_rollback(registry, update.version)
                if rollback or args.pin:  # pinned first: the promote line closes the step
                    why = "rollback by operator" if rollback else "pinned by operator"
                    registry.pin(update.version, why)
                    log.warning("%s: %s; no automatic promotion until --unpin", update.version, why)
                # Before the announcement: a worker checks the registry when it arrives.
                promote_for_publishing(registry, update.version, force=args.force)
                update = replace(update, rollback=rollback)
                if key is not None:
                    update = sign_update(update, key)
                run_kafka(publish_update(settings, update, topic=args.topic), settings)
    except ArtifactError as exc:
        print(f"gru4stream publish: refused: {exc}", file=sys.stderr)
        return 1
    except KafkaSetupError as exc:
        return report_failure(PROG, exc)
    except Exception as exc:  # noqa: BLE001 - broker errors end the command, with the reason
        print(f"gru4stream publish: failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    print(
        f"published {update.version} on {args.topic} via {settings.bootstrap_servers}: "
        f"{update.artifact_uri} (manifest sha256 {update.checksum[:12]})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
