"""The worker's configuration: plain typed values, set from the command line."""

from __future__ import annotations

from dataclasses import dataclass, field

from kafka_io.settings import KafkaSettings
from schemas.durations import parse_duration_ms
from stream_app.core import CoreConfig


@dataclass(frozen=True)
class WorkerConfig:
    app_id: str = "gru4stream-worker"  # also the consumer group and the changelog prefix
    kafka: KafkaSettings = field(default_factory=KafkaSettings)  # brokers, TLS, SASL
    clicks_topic: str = "clicks"
    recommendations_topic: str = "recommendations"
    dlq_topic: str = "clicks-dlq"
    model_updates_topic: str = "model-updates"
    partitions: int = 4  # of `clicks` (and so of the sessions changelog), if created here
    model: str | None = None  # artifact dir, or a version / "promoted" / "latest" with registry
    registry: str | None = None  # then only its promoted versions load (stream_app/trust.py)
    model_key_file: str | None = None  # HMAC key announcements must be signed with (a path)
    core: CoreConfig = field(default_factory=CoreConfig)
    # Micro-batches: up to batch_max clicks, or whatever arrived within batch_within_s.
    batch_max: int = 256
    batch_within_s: float = 0.01
    # The naive baseline for benchmarks: one click at a time, full scoring.
    naive: bool = False
    cleanup_interval_s: float = 60.0  # how often expired sessions are deleted
    # Sessions kept decoded in memory (stream_app/session_cache.py): ~7 KB each with a full
    # 50-item history, so ~140 MB at most.
    session_cache: int = 20_000
    web_port: int = 6066
    web_bind: str = "127.0.0.1"  # --web-host: private unless told (0.0.0.0 in containers)
    web_host: str = "127.0.0.1"  # Faust's name for its own URL, not the bind address
    expose_sessions: bool = False  # /sessions/{id} shows a user's clicks: off by default
    data_dir: str | None = None  # RocksDB files; default var/worker/<app_id> (working dir)
    offset_reset: str = "earliest"  # where a new consumer group starts on `clicks`
    standby_replicas: int = 1
    # Failover: a killed worker's partitions move once the group has not heard from it for
    # the session timeout (Faust's default: 60 s; the broker's minimum, 6 s by default). A
    # live worker that cannot heartbeat for that long (a stalled process, a network blip)
    # loses its partitions too, and they are restored elsewhere: see README, The worker.
    broker_session_timeout_s: float = 6.0
    heartbeat_interval_s: float = 1.0  # the survivors learn of a rebalance this fast
    # Static membership (Kafka's group.instance.id): a restart under the same id takes its
    # partitions back at once, with no rebalance; but a stopped or killed worker's partitions
    # then wait out the whole session timeout, even after a clean stop.
    group_instance_id: str | None = None
    commit_interval_s: float = 2.8  # offsets are committed this often (after a flush)
    producer_batch_kb: int = 512  # per partition (Faust's default: 16 KiB)
    # No wait to fill produce requests: a micro-batch appends all its records at once
    # (kafka_io/bulk_send.py), so lingering only delays its answers; under load the records
    # of later micro-batches still join the batch waiting behind a partition's request.
    producer_linger_s: float = 0.0
    # Largest record the worker sends (Faust's producer_max_request_size, below the broker's
    # default message.max.bytes of 1 MiB). Every answer, dead letter and session value is
    # sized against it first; one that cannot fit becomes a dead letter instead of an error.
    producer_max_request_size: int = 1_000_000
    dlq_prefix_bytes: int = 8 * 1024  # of a rejected value kept in its dead letter
    # RocksDB sized for a small machine (Faust's defaults: 2 GiB cache, 3 x 64 MiB buffers
    # per partition); the sessions table is small and mostly read back from memory anyway.
    rocksdb_block_cache_mb: int = 16
    rocksdb_write_buffer_mb: int = 4
    rocksdb_max_write_buffers: int = 2
    exact_max_items: int = 100_000  # exact search up to this many items, FAISS HNSW above
    # How: one BLAS product and a top-k pass ("blas"), or FAISS's IndexFlatIP ("faiss"); see
    # scoring.search.ServingOptions.
    exact_search: str = "blas"
    hnsw_ef_search: int = 128
    loglevel: str = "info"

    def serving_options(self) -> dict[str, object]:
        return {
            "exact_max_items": self.exact_max_items,
            "exact_search": self.exact_search,
            "hnsw_ef_search": self.hnsw_ef_search,
        }

    def rocksdb_options(self) -> dict[str, int]:
        mib = 1024 * 1024
        return {
            "block_cache_size": self.rocksdb_block_cache_mb * mib,
            "block_cache_compressed_size": self.rocksdb_block_cache_mb * mib,
            "write_buffer_size": self.rocksdb_write_buffer_mb * mib,
            "max_write_buffer_number": self.rocksdb_max_write_buffers,
            "target_file_size_base": 8 * mib,
            "max_open_files": 256,
        }


def parse_duration(text: str, *, zero_ok: bool = False) -> float:
    """ "30m", "90s", "1.5h", "250ms", or plain seconds -> seconds."""
    return parse_duration_ms(text, bare_unit="s", zero_ok=zero_ok) / 1000
