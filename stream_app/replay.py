"""Replay archived clicks through served models and compare them side by side.

`gru4stream replay --topic clicks [--from T0] [--to T1] --model M[,M...] [--registry ROOT]
[--k 20] [--png PATH] [--json PATH] [--live --rate N]`

Each model is a `ServingModel` (the worker's scoring path: the same GRU step, the same FAISS
top-K with the popularity fallback, the same handling of unknown items, which leave the
session state unchanged). For every click that has a next click in the same session, the
session's state after that click is asked for its top-K, and the next click is the target:
its position in the list is its rank (a target outside the list, or unknown to the model,
is a miss). Recall, MRR and NDCG at the cut-offs up to K follow `schemas.metrics`; because
only the served top-K is known, cut-offs above K cannot be reported. Catalogue coverage is
the fraction of a model's items that appear in at least one top-K list.

Events are read from every partition of the topic, validated with `schemas.events` (invalid
ones are counted and skipped, as the worker would send them to the dead-letter topic), and
kept when their event timestamp lies in [T0, T1). A session's clicks are taken in topic
order, which is the order the worker sees them (the session id is the key, so one session
lives in one partition). Sessions that began before T0 start from an empty state.

Worker rules kept here: the items among the session's last `--history` clicks (the worker's
default, 50) are not recommended again; `--no-exclude-seen` turns that off, which makes the
numbers comparable with the offline full-ranking evaluation, where every item competes. A
click older than its session's newest click is left out (the worker dead-letters it). Not
reproduced: the worker's session expiry, which runs on wall-clock time, not event time.

`--live --rate N` also sends the range, for each model, through a real worker: a worker
process (`python -m stream_app`) serving that model on fresh topics of its own, fed the
range's clicks in time order at N clicks per second (re-stamped with the send time, each
session's order kept). Its answers on `recommendations` are joined with the next clicks for
online Recall/MRR/NDCG@K and the click-to-answer latency. The live metrics equal the offline
ones when the worker follows the same rules (the check `tests/test_replay.py` makes); the
worker and its topics are removed afterwards. It does not tap the production workers: they
read the production topics, where replayed clicks would mix with live traffic.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import orjson
from tqdm import tqdm

from kafka_io.archive import read_range
from kafka_io.cli import add_kafka_arguments, settings_from_args
from kafka_io.clients import admin, consumer
from kafka_io.errors import check_connection, explain
from kafka_io.send import send_messages
from kafka_io.settings import KafkaConfigError, KafkaSettings, write_properties
from schemas.artifact import ArtifactError, read_artifact
from schemas.events import (
    ClickEvent,
    Recommendation,
    ValidationError,
    decode_click,
    decode_recommendation,
    encode_click,
    parse_timestamp,
)
from schemas.metrics import MetricAccumulator
from schemas.registry import Registry, resolve_model
from schemas.topics import CLICKS
from stream_app.core import CoreConfig
from stream_app.harness import free_port
from stream_app.inference import ServingModel

log = logging.getLogger(__name__)

STANDARD_KS = (1, 5, 10, 20)
WORKER_DEFAULTS = CoreConfig()


# --- reading the archive -------------------------------------------------------------------


@dataclass
class ArchiveSlice:
    """The clicks of a time range, and what was skipped on the way."""

    events: list[ClickEvent]
    n_records: int = 0  # records read from the topic
    n_invalid: int = 0  # failed validation (the worker's dead letters)
    n_outside: int = 0  # valid, but outside [start, end)


async def read_clicks(
    kafka: KafkaSettings,
    topic: str,
    *,
    start_ms: int | None = None,
    end_ms: int | None = None,
    progress: bool = True,
) -> ArchiveSlice:
    """Every valid click of `topic` whose own timestamp is in [start_ms, end_ms), per
    partition in offset order; reads up to the end offsets seen when it starts."""
    records = (await read_range(kafka, topic, progress=progress)).records
    out = ArchiveSlice(events=[], n_records=len(records))
    for record in records:
        try:
            event = decode_click(record.value)
        except ValidationError:
            out.n_invalid += 1
            continue
        if (start_ms is not None and event.timestamp < start_ms) or (
            end_ms is not None and event.timestamp >= end_ms
        ):
            out.n_outside += 1
            continue
        out.events.append(event)
    return out


def group_sessions(
    events: Iterable[ClickEvent], out_of_order: list[ClickEvent] | None = None
) -> list[list[str]]:
    """Item sequences per session, in the given (topic) order; sessions by first appearance.

    A click older than its session's newest kept click is left out (the worker sends it to
    the dead-letter topic) and appended to `out_of_order` when given.
    """
    sessions: dict[str, list[str]] = {}
    newest: dict[str, int] = {}
    for event in events:
        sid = event.session_id
        if event.timestamp < newest.get(sid, event.timestamp):
            if out_of_order is not None:
                out_of_order.append(event)
            continue
        newest[sid] = event.timestamp
        sessions.setdefault(sid, []).append(event.item_id)
    return list(sessions.values())


# --- replaying one model -------------------------------------------------------------------


@dataclass
class ReplayResult:
    version: str
    source: str
    k: int
    metrics: dict[str, float]
    coverage: float  # fraction of the model's items recommended at least once
    n_examples: int  # clicks that had a next click
    n_unknown_targets: int  # next clicks on items the model does not know (always misses)
    n_unknown_inputs: int  # clicks on unknown items (the state is left unchanged)
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "source": self.source,
            "k": self.k,
            "metrics": self.metrics,
            "coverage": self.coverage,
            "n_examples": self.n_examples,
            "n_unknown_targets": self.n_unknown_targets,
            "n_unknown_inputs": self.n_unknown_inputs,
        }


def cutoffs(k: int) -> tuple[int, ...]:
    return tuple(sorted({c for c in STANDARD_KS if c < k} | {k}))


def replay_model(
    model: ServingModel,
    sessions: Sequence[Sequence[str]],
    *,
    k: int = 20,
    exclude_seen: bool = True,
    history: int = WORKER_DEFAULTS.history_len,
    batch_size: int = 256,
    source: str = "",
    progress: bool = True,
) -> ReplayResult:
    """Next-click metrics of one served model over whole sessions (see the module doc)."""
    if k < 1 or history < 1:
        raise ValueError(f"k and history must be positive, got {k}, {history}")
    acc = MetricAccumulator(cutoffs(k))
    recommended = np.zeros(model.n_items, dtype=bool)
    n_unknown_targets = n_unknown_inputs = 0
    # Long sessions together, so a batch's lanes end at similar steps.
    order = sorted(range(len(sessions)), key=lambda s: -len(sessions[s]))
    n_examples = sum(max(len(s) - 1, 0) for s in sessions)
    bar = tqdm(total=n_examples, desc=f"replay {model.version}", unit="ex", disable=not progress)
    for first in range(0, len(order), batch_size):
        chunk = [sessions[s] for s in order[first : first + batch_size]]
        lengths = np.array([len(s) for s in chunk], dtype=np.int64)
        items = np.full((len(chunk), int(lengths.max())), -1, dtype=np.int64)  # (b, T)
        for row, seq in enumerate(chunk):
            items[row, : len(seq)] = model.index_of(seq)
        in_session = np.arange(items.shape[1]) < lengths[:, None]  # (b, T)
        n_unknown_inputs += int(((items < 0) & in_session).sum())
        state = model.initial_state(len(chunk))
        for t in range(items.shape[1] - 1):
            rows = np.flatnonzero(lengths > t + 1)  # lanes with a next click
            state[rows] = model.step(state[rows], items[rows, t])
            # The session's last `history` items, as the worker keeps them; -1 (unknown or
            # padding) matches no item: (r, <= history).
            exclude = items[rows, max(t + 1 - history, 0) : t + 1] if exclude_seen else None
            top, _ = model.recommend(state[rows], k, exclude)  # (r, k)
            targets = items[rows, t + 1]
            hit = (top == targets[:, None]) & (targets[:, None] >= 0)
            ranks = np.where(hit.any(axis=1), hit.argmax(axis=1) + 1, k + 1)
            acc.add(ranks)
            n_unknown_targets += int((targets < 0).sum())
            recommended[top[top >= 0]] = True
            bar.update(rows.size)
    bar.close()
    metrics = acc.result()
    return ReplayResult(
        version=model.version,
        source=source,
        k=k,
        metrics=metrics,
        coverage=float(recommended.mean()),
        n_examples=int(metrics["n_examples"]),
        n_unknown_targets=n_unknown_targets,
        n_unknown_inputs=n_unknown_inputs,
    )


# --- live replay through a worker ------------------------------------------------------------


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


class WorkerProcess:
    """A worker (`python -m stream_app ARGS`) as a subprocess, its output in a log file."""

    def __init__(self, args: Sequence[str], log_path: Path, web_port: int) -> None:
        self.log_path = log_path
        self.url = f"http://127.0.0.1:{web_port}"
        root = Path(__file__).resolve().parents[1]  # holds stream_app/ and schemas/
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(root), env.get("PYTHONPATH")) if p)
        self._log = open(log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "stream_app", *args, "--web-port", str(web_port)],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            cwd=root,
            env=env,
            start_new_session=True,  # its own process group: stop() ends it and its children
        )

    def get(self, path: str) -> tuple[int, dict[str, Any]]:
        try:
            with urllib.request.urlopen(self.url + path, timeout=2) as response:
                return response.status, orjson.loads(response.read())
        except urllib.error.HTTPError as exc:
            return exc.code, orjson.loads(exc.read() or b"{}")

    def wait_until(
        self, what: str, ready: Any, timeout_s: float, path: str = "/model"
    ) -> dict[str, Any]:
        """Poll `path` until `ready(status, body)`; RuntimeError with the log tail otherwise."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the worker exited ({self.proc.returncode}):\n{self.tail()}")
            with contextlib.suppress(OSError, ValueError):
                status, body = self.get(path)
                if ready(status, body):
                    return body
            time.sleep(0.5)
        raise RuntimeError(f"the worker did not {what} within {timeout_s:.0f} s:\n{self.tail()}")

    def wait_ready(self, timeout_s: float = 180.0) -> dict[str, Any]:
        """Until the worker serves a model AND holds its partitions (clicks sent before the
        group has settled would wait, and their latency would measure the start-up)."""
        return self.wait_until(
            "get ready",
            lambda status, body: status == 200 and bool(body.get("partitions")),
            timeout_s,
            path="/health",
        )

    def tail(self, lines: int = 15) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return "(no log)"

    def stop(self, timeout_s: float = 30.0) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self._log.close()


async def delete_topics_with_prefix(kafka: KafkaSettings, prefix: str) -> None:
    """Remove a run's topics, the worker's changelog topics (same prefix) included."""
    client = admin(kafka)
    await client.start()
    try:
        names = [t for t in await client.list_topics() if t.startswith(prefix)]
        if names:
            await client.delete_topics(names)
    finally:
        await client.close()


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
        port = free_port()
        # The worker connects as this process does (credentials in a 0600 file, not argv).
        properties = write_properties(kafka, Path(tmp) / "client.properties")
        args = [
            "--kafka-config", str(properties), "--model", str(model_path), "--app-id", run,
            "--clicks-topic", f"{run}-clicks", "--recommendations-topic", f"{run}-recs",
            "--dlq-topic", f"{run}-dlq", "--model-updates-topic", f"{run}-updates",
            "--data-dir", str(Path(tmp) / "data"), "--web-bind", "127.0.0.1",
            "--k", str(k), "--history", str(history), "--loglevel", "warning",
        ]  # fmt: skip
        if not exclude_seen:
            args.append("--keep-seen")
        worker = WorkerProcess(args, Path(tmp) / "worker.log", port)
        try:
            worker.wait_ready()
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


def format_live_table(results: Sequence[LiveResult], k: int) -> str:
    head = (
        f"{'model':<10}{'answers':>9}{f'recall@{k}':>11}{f'mrr@{k}':>9}{f'ndcg@{k}':>9}"
        f"{'p50 ms':>8}{'p95 ms':>8}{'max ms':>8}"
    )
    lines = [head]
    for result in results:
        for version, s in result.stats.items():
            m = s.metrics
            lines.append(
                f"{version:<10}{s.answers:>9}{m[f'recall@{k}']:>11.4f}{m[f'mrr@{k}']:>9.4f}"
                f"{m[f'ndcg@{k}']:>9.4f}{s.latency(50):>8.0f}{s.latency(95):>8.0f}"
                f"{max(s.latencies_ms, default=0):>8.0f}"
            )
        if result.answered < result.sent:
            lines.append(f"  ({result.sent - result.answered} clicks unanswered in time)")
    return "\n".join(lines)


# --- reporting -----------------------------------------------------------------------------


def format_table(results: Sequence[ReplayResult]) -> str:
    """Models as columns, metrics as rows."""
    if not results:
        return "(no models)"
    names = [f"recall@{c}" for c in cutoffs(results[0].k)]
    names += [f"mrr@{c}" for c in cutoffs(results[0].k)]
    names += [f"ndcg@{c}" for c in cutoffs(results[0].k)]
    width = max(12, *(len(r.version) + 2 for r in results))
    lines = ["metric".ljust(14) + "".join(r.version.rjust(width) for r in results)]
    for name in names:
        lines.append(
            name.ljust(14) + "".join(f"{r.metrics[name]:.4f}".rjust(width) for r in results)
        )
    rows = [
        ("coverage", lambda r: f"{r.coverage:.4f}"),
        ("examples", lambda r: str(r.n_examples)),
        ("unknown tgt", lambda r: str(r.n_unknown_targets)),
    ]
    for label, cell in rows:
        lines.append(label.ljust(14) + "".join(cell(r).rjust(width) for r in results))
    return "\n".join(lines)


def write_png(results: Sequence[ReplayResult], path: str | os.PathLike[str], title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    k = results[0].k
    names = [f"recall@{k}", f"mrr@{k}", f"ndcg@{k}", "coverage"]
    x = np.arange(len(names))
    width = 0.8 / len(results)
    fig, ax = plt.subplots(figsize=(2 + 1.6 * len(names), 4))
    for i, r in enumerate(results):
        values = [r.metrics[n] for n in names[:-1]] + [r.coverage]
        bars = ax.bar(x + i * width - 0.4 + width / 2, values, width, label=r.version)
        ax.bar_label(bars, fmt="%.3f", fontsize=7)
    ax.set_xticks(x, names)
    ax.set_ylim(0, 1.05)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


# --- command line --------------------------------------------------------------------------


def parse_time(text: str) -> int:
    """Epoch milliseconds or ISO 8601 (naive = UTC) -> epoch ms."""
    value: Any = int(text) if text.lstrip("-").isdigit() else text
    try:
        return parse_timestamp(value)
    except ValidationError as exc:
        raise argparse.ArgumentTypeError(f"{text!r}: {exc.reason}") from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gru4stream replay",
        description="replay archived clicks through served models; next-click metrics",
    )
    parser.add_argument("--topic", default=CLICKS.name, help="archive topic (default clicks)")
    add_kafka_arguments(parser)
    parser.add_argument("--from", dest="start", type=parse_time, help="epoch ms or ISO 8601")
    parser.add_argument("--to", dest="end", type=parse_time, help="exclusive; epoch ms or ISO")
    parser.add_argument(
        "--model",
        required=True,
        help="comma-separated artifact directories or registry versions (latest, promoted)",
    )
    parser.add_argument("--registry", help="model registry root, for version names")
    parser.add_argument("--k", type=int, default=20, help="list length (default 20)")
    parser.add_argument(
        "--exclude-seen",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="never recommend items already in the session (the worker's default)",
    )
    parser.add_argument(
        "--history",
        type=int,
        default=WORKER_DEFAULTS.history_len,
        help="items of the session that are excluded, the newest first (the worker's "
        "--history, default %(default)s)",
    )
    parser.add_argument("--batch-size", type=int, default=256, help="sessions per batch")
    parser.add_argument("--png", help="write a bar chart of the metrics here")
    parser.add_argument("--json", help="write the results as JSON here")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    live = parser.add_argument_group("live replay through a worker")
    live.add_argument(
        "--live", action="store_true", help="also send the range through a worker per model"
    )
    live.add_argument("--rate", type=float, default=200.0, help="clicks per second (--live)")
    live.add_argument(
        "--answer-timeout",
        type=float,
        default=120.0,
        help="seconds to wait for the last answers (--live)",
    )
    return parser


def load_models(specs: str, registry: Registry | None) -> list[tuple[str, ServingModel]]:
    out = []
    for spec in (s.strip() for s in specs.split(",")):
        if not spec:
            continue
        path = resolve_model(spec, registry)
        out.append((str(path), ServingModel.from_artifact(read_artifact(path))))
    if not out:
        raise ArtifactError("--model: no model given")
    return out


def _range_text(start: int | None, end: int | None) -> str:
    def show(ms: int | None) -> str:
        if ms is None:
            return "..."
        return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="seconds")

    return f"[{show(start)}, {show(end)})"


async def _read_archive(kafka: KafkaSettings, args: argparse.Namespace) -> ArchiveSlice:
    await check_connection(kafka)
    return await read_clicks(
        kafka, args.topic, start_ms=args.start, end_ms=args.end, progress=not args.no_progress
    )


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.live and args.rate <= 0:
        parser.error("--rate must be positive")
    if args.k < 1 or args.history < 1:
        parser.error("--k and --history must be positive")
    if args.start is not None and args.end is not None and args.start >= args.end:
        parser.error("--from must be before --to")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    registry = Registry(args.registry) if args.registry else None
    try:
        kafka = settings_from_args(args)
    except KafkaConfigError as exc:
        print(f"gru4stream replay: {exc}", file=sys.stderr)
        return 2
    try:
        models = load_models(args.model, registry)
    except (ArtifactError, ValueError) as exc:
        print(f"gru4stream replay: {exc}", file=sys.stderr)
        return 1
    try:
        archive = asyncio.run(_read_archive(kafka, args))
    except Exception as exc:  # noqa: BLE001 - any broker failure ends here, in one line
        print(f"gru4stream replay: {explain(exc, kafka)}", file=sys.stderr)
        return 1
    late: list[ClickEvent] = []
    sessions = group_sessions(archive.events, late)
    span = _range_text(args.start, args.end)
    print(
        f"{args.topic} {span}: {len(archive.events) - len(late)} clicks in {len(sessions)} "
        f"sessions ({archive.n_invalid} invalid, {len(late)} out of order, "
        f"{archive.n_outside} outside the range)"
    )
    results = [
        replay_model(
            model,
            sessions,
            k=args.k,
            exclude_seen=args.exclude_seen,
            history=args.history,
            batch_size=args.batch_size,
            source=source,
            progress=not args.no_progress,
        )
        for source, model in models
    ]
    print(format_table(results))
    live_results = []
    if args.live:
        for source, _ in models:
            try:
                live_results.append(
                    replay_live(
                        kafka,
                        source,
                        archive.events,
                        k=args.k,
                        rate=args.rate,
                        exclude_seen=args.exclude_seen,
                        history=args.history,
                        answer_timeout_s=args.answer_timeout,
                        progress=not args.no_progress,
                    )
                )
            except RuntimeError as exc:  # the worker did not start or died: its log tail
                print(f"gru4stream replay: live replay of {source} failed: {exc}", file=sys.stderr)
                return 1
        print(f"\nlive, through a worker at {args.rate:g} clicks/s:")
        print(format_live_table(live_results, args.k))
    if args.json:
        report = {
            "topic": args.topic,
            "from": args.start,
            "to": args.end,
            "n_events": len(archive.events) - len(late),
            "n_sessions": len(sessions),
            "n_invalid": archive.n_invalid,
            "n_out_of_order": len(late),
            "exclude_seen": args.exclude_seen,
            "history": args.history,
            "models": [r.to_dict() for r in results],
            "live": [
                {
                    "source": r.source,
                    "sent": r.sent,
                    "answered": r.answered,
                    "rate": args.rate,
                    "versions": {
                        v: {
                            "answers": s.answers,
                            "metrics": s.metrics,
                            "latency_ms": {"p50": s.latency(50), "p95": s.latency(95)},
                        }
                        for v, s in r.stats.items()
                    },
                }
                for r in live_results
            ],
        }
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2))
    if args.png:
        write_png(results, args.png, f"replay of {args.topic} {span}, K={args.k}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
