"""Which model serves, and the hot swap from the `model-updates` topic.

Every worker reads `model-updates` itself with a plain consumer (no group), from the start of
that compacted single-partition topic. At start it reads up to the end and loads the newest
announcement that verifies (going back to older ones if the newest is refused); after that it
applies every new announcement. Loading (read + verify + FAISS index) runs off the event
loop; the swap itself is one reference assignment, and the agent reads that reference once
per micro-batch, so a batch is always answered by one model and swaps fall between batches.

A refused artifact (checksum, shapes, vocabulary, manifest checksum or version not matching
the announcement) is logged with its reason and counted; the serving model stays.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass
from pathlib import Path

from aiokafka import AIOKafkaConsumer, TopicPartition

from schemas.artifact import ArtifactError, manifest_checksum, read_artifact
from schemas.events import ModelUpdate, ValidationError, decode_model_update
from stream_app.inference import ServingModel

log = logging.getLogger(__name__)


def artifact_path(uri: str) -> Path:
    """A model update's artifact location as a local directory (plain path or file:// URI)."""
    if uri.startswith("file://"):
        return Path(uri[len("file://") :])
    if "://" in uri:
        raise ArtifactError(f"{uri}: only local directories (or file:// URIs) can be loaded")
    return Path(uri)


def load_model(
    path: str | Path, update: ModelUpdate | None = None, **options: object
) -> ServingModel:
    """Read, verify and index an artifact; ArtifactError says what is wrong and where."""
    path = Path(path)
    if update is not None:
        if not (path / "manifest.json").is_file():
            raise ArtifactError(f"{path}: no manifest.json (announced as {update.version})")
        got = manifest_checksum(path)
        if got != update.checksum:
            raise ArtifactError(
                f"{path / 'manifest.json'}: sha256 {got[:12]}... does not match the "
                f"announced checksum {update.checksum[:12]}..."
            )
    artifact = read_artifact(path)
    if update is not None and artifact.manifest.version != update.version:
        raise ArtifactError(
            f"{path / 'manifest.json'}: version {artifact.manifest.version!r}, "
            f"announced as {update.version!r}"
        )
    return ServingModel.from_artifact(artifact, **options)


@dataclass(frozen=True)
class SwapRecord:
    version: str
    at: float  # epoch seconds
    outcome: str  # "loaded" or "refused"
    reason: str = ""


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

    def refuse(self, version: str, reason: str) -> None:
        self._record(SwapRecord(version, time.time(), "refused", reason))
        serving = self.model.version if self.model else "none"
        log.error("model %s refused, still serving %s: %s", version, serving, reason)

    def _record(self, record: SwapRecord) -> None:
        self.history.append(record)
        del self.history[:-50]
        if self._on_event is not None:
            self._on_event(record)


class ModelUpdateFollower:
    """Reads `model-updates` without a consumer group and swaps models into a holder."""

    def __init__(
        self,
        bootstrap: str,
        topic: str,
        holder: ModelHolder,
        executor: Executor,
        serving_options: dict[str, object] | None = None,
    ) -> None:
        self.bootstrap = bootstrap
        self.topic = topic
        self.holder = holder
        self.executor = executor
        self.serving_options = dict(serving_options or {})
        self.caught_up = asyncio.Event()

    async def run(self) -> None:
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap,
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
        )
        await consumer.start()
        try:
            tp = TopicPartition(self.topic, 0)
            consumer.assign([tp])
            await consumer.seek_to_beginning(tp)
            end = (await consumer.end_offsets([tp]))[tp]
            backlog: list[ModelUpdate] = []
            while await consumer.position(tp) < end:
                for record in (await consumer.getmany(tp, timeout_ms=500)).get(tp, []):
                    update = self._parse(record.value, record.offset)
                    if update is not None:
                        backlog.append(update)
            await self._apply_newest(backlog)
            self.caught_up.set()
            while True:
                for record in (await consumer.getmany(tp, timeout_ms=1000)).get(tp, []):
                    update = self._parse(record.value, record.offset)
                    if update is not None:
                        await self.apply(update)
        finally:
            await consumer.stop()

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
        loop = asyncio.get_running_loop()
        try:
            path = artifact_path(update.artifact_uri)
            model = await loop.run_in_executor(
                self.executor, lambda: load_model(path, update, **self.serving_options)
            )
        except (ArtifactError, OSError, ValueError, TypeError) as exc:
            self.holder.refuse(update.version, str(exc))
            return False
        self.holder.swap(model)
        return True
