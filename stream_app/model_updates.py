"""Which model serves, and the hot swap from the `model-updates` topic.

Every worker reads `model-updates` itself with a plain consumer (no group), from the start of
that compacted single-partition topic. At start it reads up to the end and loads the newest
announcement that verifies (going back to older ones if the newest is refused); after that it
applies every new announcement that moves the version forward (or is marked as an
operator's rollback); an older one is refused as "stale". Loading (read + verify + FAISS
index) runs off the event loop; the swap itself is one reference assignment, and the agent
reads that reference once per micro-batch, so a batch is always answered by one model and
swaps fall between batches.

A refused artifact (checksum, shapes, vocabulary, manifest checksum or version not matching
the announcement; and what stream_app/trust.py refuses: outside the registry, never
promoted, symlinks, a bad signature) is logged with its reason and counted by kind; the
serving model stays.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass
from pathlib import Path

from aiokafka import TopicPartition

from kafka_io.clients import consumer
from kafka_io.settings import KafkaSettings
from schemas.artifact import MANIFEST, ArtifactError, read_artifact
from schemas.events import ModelUpdate, ValidationError, decode_model_update
from schemas.registry import is_version_name, version_number
from scoring import ServingModel
from stream_app.trust import TrustPolicy

log = logging.getLogger(__name__)


def artifact_path(uri: str) -> Path:
    """A model update's artifact location as a local directory (plain path or file:// URI)."""
    if uri.startswith("file://"):
        return Path(uri[len("file://") :])
    if "://" in uri:
        raise ArtifactError(f"{uri}: only local directories (or file:// URIs) can be loaded")
    return Path(uri)


def load_model(
    path: str | Path,
    update: ModelUpdate | None = None,
    *,
    trust: TrustPolicy | None = None,
    **options: object,
) -> ServingModel:
    """Read, verify and index an artifact; ArtifactError says what is wrong and where (and
    its `reason`, the kind of refusal).

    An announced artifact (`update`) is read without following symlinks, and its manifest
    must hash to the announced checksum. `trust` adds the signature check and, with a
    registry, confines loading to promoted versions of it (also for the model given at
    start); without a registry and an update, a directory is read as it is.
    """
    path = Path(path)
    version = None if update is None else update.version
    in_registry = trust is not None and trust.registry is not None
    if trust is not None and update is not None:
        trust.check_signature(update)
    if trust is not None and trust.registry is not None:
        path, version = trust.registry_dir(path, version)
    artifact = read_artifact(
        path,
        manifest_sha256=None if update is None else update.checksum,
        follow_symlinks=update is None and not in_registry,
    )
    if version is not None and artifact.manifest.version != version:
        said = "announced as" if update is not None else "stored as"
        raise ArtifactError(
            f"{path / MANIFEST}: version {artifact.manifest.version!r}, {said} {version!r}"
        )
    return ServingModel.from_artifact(artifact, **options)


@dataclass(frozen=True)
class SwapRecord:
    version: str
    at: float  # epoch seconds
    outcome: str  # "loaded" or "refused"
    reason: str = ""
    code: str = ""  # a refusal's kind, one of schemas.artifact.REFUSAL_REASONS


class ModelHolder:
    """The serving model reference; `ready` is set once there is one."""

    def __init__(self, on_event: Callable[[SwapRecord], None] | None = None) -> None:
        self.model: ServingModel | None = None
        self.ready = asyncio.Event()
        self.history: list[SwapRecord] = []
        self._on_event = on_event

    def swap(self, model: ServingModel) -> None:
        previous = self.model
        self.model = model
        self.ready.set()
        self._record(SwapRecord(model.version, time.time(), "loaded"))
        log.info(
            "serving model %s (%d items)%s",
            model.version,
            model.n_items,
            f", replacing {previous.version}" if previous else "",
        )

    def refuse(self, version: str, reason: str, code: str = "invalid") -> None:
        self._record(SwapRecord(version, time.time(), "refused", reason, code))
        serving = self.model.version if self.model else "none"
        log.error("model %s refused (%s), still serving %s: %s", version, code, serving, reason)

    def _record(self, record: SwapRecord) -> None:
        self.history.append(record)
        del self.history[:-50]
        if self._on_event is not None:
            self._on_event(record)


def is_stale(update: ModelUpdate, serving: str) -> bool:
    """An announcement that would move registry versions backwards without `rollback`.
    Names outside the registry scheme (v0001, ...) have no order and are never stale."""
    if update.rollback or not (is_version_name(update.version) and is_version_name(serving)):
        return False
    return version_number(update.version) < version_number(serving)


class ModelUpdateFollower:
    """Reads `model-updates` without a consumer group and swaps models into a holder."""

    def __init__(
        self,
        kafka: KafkaSettings,
        topic: str,
        holder: ModelHolder,
        executor: Executor,
        serving_options: dict[str, object] | None = None,
    ) -> None:
        self.kafka = kafka
        self.topic = topic
        self.holder = holder
        self.executor = executor
        self.serving_options = dict(serving_options or {})
        self.caught_up = asyncio.Event()
        # What announcements must satisfy (registry, signature); the runtime sets it from
        # the worker's options. The default checks symlinks and checksums only.
        self.trust = TrustPolicy()

    async def run(self) -> None:
        client = consumer(self.kafka, group_id=None)
        await client.start()
        try:
            tp = TopicPartition(self.topic, 0)
            client.assign([tp])
            await client.seek_to_beginning(tp)
            end = (await client.end_offsets([tp]))[tp]
            backlog: list[ModelUpdate] = []
            while await client.position(tp) < end:
                for record in (await client.getmany(tp, timeout_ms=500)).get(tp, []):
                    update = self._parse(record.value, record.offset)
                    if update is not None:
                        backlog.append(update)
            await self._apply_newest(backlog)
            self.caught_up.set()
            while True:
                for record in (await client.getmany(tp, timeout_ms=1000)).get(tp, []):
                    update = self._parse(record.value, record.offset)
                    if update is not None:
                        await self.apply(update)
        finally:
            await client.stop()

    def _parse(self, raw: bytes | None, offset: int) -> ModelUpdate | None:
        if raw is None:  # a compaction tombstone
            return None
        try:
            return decode_model_update(raw)
        except ValidationError as exc:
            self.holder.refuse(f"<offset {offset}>", f"{self.topic}@{offset}: {exc}")
            return None

    async def _apply_newest(self, backlog: list[ModelUpdate]) -> None:
        """At start: the newest announcement that loads; older ones only as fallbacks."""
        current = self.holder.model
        for update in reversed(backlog):
            if current is not None and current.version == update.version:
                return  # the model given at start is already the newest
            if await self.apply(update):
                return

    async def apply(self, update: ModelUpdate) -> bool:
        current = self.holder.model
        if current is not None and current.version == update.version:
            log.info("model %s announced again; already serving it", update.version)
            return True
        if current is not None and is_stale(update, current.version):
            # Announcements can arrive out of order (two publishers, a replayed topic): only
            # an operator's marked rollback may move the served version backwards.
            self.holder.refuse(
                update.version,
                f"older than the serving {current.version} and not marked as a rollback",
                "stale",
            )
            return False
        loop = asyncio.get_running_loop()
        trust = self.trust
        try:
            trust.check_signature(update)  # before the URI is even looked at
            path = artifact_path(update.artifact_uri)
            model = await loop.run_in_executor(
                self.executor,
                lambda: load_model(path, update, trust=trust, **self.serving_options),
            )
        except ArtifactError as exc:
            self.holder.refuse(update.version, str(exc), exc.reason)
            return False
        except (OSError, ValueError, TypeError) as exc:
            self.holder.refuse(update.version, str(exc))
            return False
        self.holder.swap(model)
        return True
