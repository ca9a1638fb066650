"""Live replay: clicks through a real worker, its answers joined with the next clicks.

`--live --rate N` also sends the range, for each model, through a real worker: a worker
process (`python -m stream_app`) serving that model on fresh topics of its own, fed the
range's clicks in time order at N clicks per second (re-stamped with the send time, each
session's order kept). Its answers on `recommendations` are joined with the next clicks for
online Recall/MRR/NDCG@K and the click-to-answer latency. The live metrics equal the offline
ones when the worker follows the same rules (the check `tests/test_replay.py` makes); the
worker and its topics are removed afterwards. It does not tap the production workers: they
read the production topics, where replayed clicks would mix with live traffic.

The demo streams through the same functions (send_clicks, read_answers, live_metrics).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import tempfile
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from kafka_io.clients import consumer
from kafka_io.send import send_messages
from kafka_io.settings import KafkaSettings, write_properties
from kafka_io.topics import delete_topics_with_prefix
from schemas.events import ClickEvent, Recommendation, decode_recommendation, encode_click
from schemas.metrics import MetricAccumulator
from stream_app.harness import WorkerProcess
from stream_app.replay_offline import WORKER_DEFAULTS, cutoffs, group_sessions


def live_order(events: Sequence[ClickEvent]) -> list[ClickEvent]:
    """The clicks a worker would accept, in time order (stable: topic order on ties)."""
    late: list[ClickEvent] = []
    group_sessions(events, late)
    dropped = {id(e) for e in late}
    return sorted((e for e in events if id(e) not in dropped), key=lambda e: e.timestamp)


@dataclass(frozen=True)
class SentClick:
    session_id: str
    item_id: str
    timestamp: int  # when it was handed to the producer (epoch ms)
    partition: int
    offset: int


async def send_clicks(
    kafka: KafkaSettings,
    topic: str,
    clicks: Sequence[tuple[str, str]],
    rate: float,
    *,
    desc: str = "sending",
    progress: bool = True,
) -> list[SentClick]:
    """Send (session, item) clicks at `rate` per second, keyed by session, each stamped with
    the time it is sent, so answer time minus click time is the click-to-answer latency."""
    events: list[ClickEvent] = []

    def stamped():  # pulled by the sender when each click's turn comes
        for session_id, item_id in clicks:
            event = ClickEvent(session_id, item_id, int(time.time() * 1000))
            events.append(event)
            yield session_id.encode(), encode_click(event), event.timestamp

    results = await send_messages(
        kafka, topic, stamped(), rate=rate, total=len(clicks), desc=desc, progress=progress,
        linger_ms=0,
    )  # fmt: skip
    sent = []
    for event, meta in zip(events, results, strict=True):
        if isinstance(meta, BaseException):
            raise meta
        sent.append(
            SentClick(event.session_id, event.item_id, event.timestamp, meta.partition, meta.offset)
        )
    return sent


async def read_answers(
    kafka: KafkaSettings, topic: str, expected: int, timeout_s: float
) -> list[Recommendation]:
    """Recommendations on `topic` until `expected` distinct clicks are answered or time is up.

    At least once: a click answered twice (after a worker restart) counts once, the first.
    """
    client = consumer(kafka, topic, group_id=None)
    await client.start()
    answers: dict[tuple[int | None, int | None], Recommendation] = {}
    try:
        deadline = time.monotonic() + timeout_s
        while len(answers) < expected and time.monotonic() < deadline:
            batch = await client.getmany(timeout_ms=500)
            for records in batch.values():
                for record in records:
                    rec = decode_recommendation(record.value)
                    answers.setdefault((rec.click_partition, rec.click_offset), rec)
    finally:
        await client.stop()
    return list(answers.values())


@dataclass
class LiveStats:
    """Online metrics of one model version: answers joined with the next clicks."""

    k: int
    answers: int = 0
    latencies_ms: list[int] = field(default_factory=list)
    accumulator: MetricAccumulator | None = None

    def __post_init__(self) -> None:
        self.accumulator = MetricAccumulator(cutoffs(self.k))

    @property
    def metrics(self) -> dict[str, float]:
        assert self.accumulator is not None
        return self.accumulator.result()

    def latency(self, q: float) -> float:
        return float(np.percentile(self.latencies_ms, q)) if self.latencies_ms else float("nan")


def live_metrics(
    sent: Sequence[SentClick], answers: Sequence[Recommendation], k: int
) -> dict[str, LiveStats]:
    """Join each answer with the next click of its session; metrics per model version.

    The rank is the next item's position in the answer (a miss beyond k), so the numbers
    follow schemas.metrics exactly like the offline replay.
    """
    index = {(c.partition, c.offset): i for i, c in enumerate(sent)}
    next_item: dict[int, str] = {}
    last: dict[str, int] = {}
    for i, click in enumerate(sent):
        if click.session_id in last:
            next_item[last[click.session_id]] = click.item_id
        last[click.session_id] = i
    stats: dict[str, LiveStats] = {}
    for rec in answers:
        i = index.get((rec.click_partition, rec.click_offset))
        if i is None:
            continue
        s = stats.setdefault(rec.model_version, LiveStats(k))
        s.answers += 1
        s.latencies_ms.append(rec.produced_at - sent[i].timestamp)
        target = next_item.get(i)
        if target is not None:
            items = [x.item_id for x in rec.items[:k]]
            rank = items.index(target) + 1 if target in items else k + 1
            assert s.accumulator is not None
            s.accumulator.add([rank])
    return dict(sorted(stats.items()))


@dataclass
class LiveResult:
    source: str
    stats: dict[str, LiveStats]
    sent: int
    answered: int


def replay_live(
    kafka: KafkaSettings,
    model_path: str | os.PathLike[str],
    events: Sequence[ClickEvent],
    *,
    k: int = 20,
    rate: float = 200.0,
    exclude_seen: bool = True,
    history: int = WORKER_DEFAULTS.history_len,
    workdir: str | os.PathLike[str] | None = None,
    answer_timeout_s: float = 120.0,
    progress: bool = True,
) -> LiveResult:
    """Replay clicks through a real worker serving `model_path`, on fresh topics.

    The clicks go out in time order at `rate` per second, re-stamped with the send time
    (sessions and their order are kept); the answers are joined with the next clicks. The
    worker and the topics of the run are removed afterwards.
    """
    run = f"replay-{uuid.uuid4().hex[:8]}"
    ordered = live_order(events)
    with tempfile.TemporaryDirectory(prefix=f"{run}-", dir=workdir) as tmp:
        # The worker connects as this process does (credentials in a 0600 file, not argv).
        properties = write_properties(kafka, Path(tmp) / "client.properties")
        args = [
            "--kafka-config", str(properties), "--model", str(Path(model_path).resolve()),
            "--app-id", run,
            "--clicks-topic", f"{run}-clicks", "--recommendations-topic", f"{run}-recs",
            "--dlq-topic", f"{run}-dlq", "--model-updates-topic", f"{run}-updates",
            "--data-dir", str(Path(tmp) / "data"), "--web-bind", "127.0.0.1",
            "--k", str(k), "--history", str(history), "--loglevel", "warning",
        ]  # fmt: skip
        if not exclude_seen:
            args.append("--keep-seen")
        worker = WorkerProcess(args, Path(tmp) / "worker.log", own_group=True)
        try:
            worker.start()
            # Serving AND holding its partitions: clicks sent before the group has settled
            # would wait, and their latency would measure the start-up.
            worker.wait_ready(timeout=180)
            sent = asyncio.run(
                send_clicks(
                    kafka,
                    f"{run}-clicks",
                    [(e.session_id, e.item_id) for e in ordered],
                    rate,
                    desc="live replay",
                    progress=progress,
                )
            )
            answers = asyncio.run(read_answers(kafka, f"{run}-recs", len(sent), answer_timeout_s))
        finally:
            worker.stop()
            with contextlib.suppress(Exception):
                asyncio.run(delete_topics_with_prefix(kafka, run))
    return LiveResult(str(model_path), live_metrics(sent, answers, k), len(sent), len(answers))
