"""Prometheus metrics of one worker (served at /metrics in the text format).

Each worker gets its own registry, so several apps in one process (tests) do not collide.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from schemas.artifact import REFUSAL_REASONS

_LATENCY_BUCKETS = (0.002, 0.005, 0.01, 0.02, 0.035, 0.05, 0.075, 0.1, 0.2, 0.5, 1, 2, 5, 10)
STAGES = ("decode", "state_read", "core", "state_write", "publish", "release", "waiting")
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048)


@dataclass
class WorkerMetrics:
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        r = self.registry
        self.events_in = Counter("gru4stream_clicks", "Click messages consumed", registry=r)
        self.recommendations = Counter(
            "gru4stream_recommendations", "Recommendations published", registry=r
        )
        self.dead_letters = Counter(
            "gru4stream_dead_letters",
            "Clicks sent to the dead-letter topic, by the field at fault",
            ["field"],
            registry=r,
        )
        self.redelivered = Counter(
            "gru4stream_redelivered_clicks",
            "Clicks seen again after a crash (state not advanced twice)",
            registry=r,
        )
        self.batch_size = Histogram(
            "gru4stream_batch_size", "Clicks per micro-batch", buckets=_BATCH_BUCKETS, registry=r
        )
        self.inference_seconds = Histogram(
            "gru4stream_inference_seconds",
            "Time in the inference core per micro-batch",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.latency_seconds = Histogram(
            "gru4stream_click_to_recommendation_seconds",
            "From the click's Kafka timestamp to its recommendation being sent",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        # Wall time of the agent's loop by step, summed: where a click's time goes
        # (benchmarks/bench_stream.py prints it per click). "waiting" is the time between
        # micro-batches: Faust's consumer and stream, and the event loop's other tasks.
        self.stage_seconds = Counter(
            "gru4stream_stage_seconds",
            "Agent wall time by step (decode, state_read, core, state_write, publish, "
            "release, waiting)",
            ["stage"],
            registry=r,
        )
        self.stage_cpu_seconds = Counter(
            "gru4stream_stage_cpu_seconds",
            "CPU time of the agent's thread by step (as gru4stream_stage_seconds)",
            ["stage"],
            registry=r,
        )
        for stage in STAGES:
            self.stage_seconds.labels(stage=stage)
            self.stage_cpu_seconds.labels(stage=stage)
        self.sessions = Gauge(
            "gru4stream_sessions", "Sessions in this worker's table partitions", registry=r
        )
        self.sessions_expired = Counter(
            "gru4stream_sessions_expired", "Sessions deleted after inactivity", registry=r
        )
        self.session_cache_hits = Counter(
            "gru4stream_session_cache_hits",
            "Sessions a batch found decoded in memory, not read from the table",
            registry=r,
        )
        self.sessions_recomputed = Counter(
            "gru4stream_sessions_recomputed",
            "Session states rebuilt from history (after a model swap)",
            registry=r,
        )
        self.model_swaps = Counter("gru4stream_model_swaps", "Models loaded and served", registry=r)
        self.model_refusals = Counter(
            "gru4stream_model_refusals",
            "Model announcements refused, by reason (corrupt, untrusted, mismatched)",
            ["reason"],
            registry=r,
        )
        for reason in REFUSAL_REASONS:  # every series exists from the start, at 0
            self.model_refusals.labels(reason=reason)
        self.model_loaded_at = Gauge(
            "gru4stream_model_loaded_timestamp_seconds",
            "When the serving model was loaded",
            registry=r,
        )
        self.model_info = Gauge(
            "gru4stream_model_info", "The serving model version (value 1)", ["version"], registry=r
        )

    def set_model(self, version: str, loaded_at: float) -> None:
        self.model_info.clear()
        self.model_info.labels(version=version).set(1)
        self.model_loaded_at.set(loaded_at)
        self.model_swaps.inc()

    def exposition(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class StageClock:
    """Charges the wall and the loop thread's CPU time between `lap`s to the named step.

    CPU time is the event loop thread's own (not that of Faust's consumer thread or of the
    model loader): on a loaded machine it still says what each step costs.
    """

    def __init__(self, wall: Counter, cpu: Counter) -> None:
        self._wall = {stage: wall.labels(stage=stage) for stage in STAGES}
        self._cpu = {stage: cpu.labels(stage=stage) for stage in STAGES}
        self._last: tuple[float, float] | None = None

    def lap(self, stage: str) -> None:
        now = time.perf_counter(), time.thread_time()
        if self._last is not None:
            self._wall[stage].inc(now[0] - self._last[0])
            self._cpu[stage].inc(now[1] - self._last[1])
        self._last = now
