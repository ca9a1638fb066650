"""The development broker's settings: where it runs, its files, what `start` reports."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

KAFKA_VERSION = "4.4.0"
DEFAULT_PORT = 9092
HERE = Path(__file__).resolve().parent
POM = HERE / "pom.xml"
LOG4J_CONFIG = HERE / "log4j2.xml"
MIN_JAVA = 17  # Kafka 4.x brokers run on Java 17 or newer


class BrokerError(RuntimeError):
    """Starting, stopping or fetching the broker failed; the message is one line for the user."""


def _repo_root() -> Path | None:
    root = HERE.parents[1]
    return root if (root / "pyproject.toml").is_file() else None


def default_cache_dir(version: str = KAFKA_VERSION) -> Path:
    base = os.environ.get("GRU4STREAM_KAFKA_CACHE")
    root = Path(base) if base else Path.home() / ".cache" / "gru4stream" / "kafka"
    return root / version


def default_data_dir(port: int = DEFAULT_PORT, secure: bool = False) -> Path:
    env = os.environ.get("GRU4STREAM_KAFKA_DATA")
    if env:
        return Path(env)
    repo = _repo_root()
    base = repo / "var" / "kafka" if repo else default_cache_dir().parent / "data"
    # Separate directories: a secure broker's storage holds SCRAM users a plain one lacks.
    return base / (f"{port}-secure" if secure else str(port))


@dataclass(frozen=True)
class BrokerConfig:
    """Where and how the development broker runs. Paths default from the port and version."""

    port: int = DEFAULT_PORT
    controller_port: int | None = None  # None: port + 1
    host: str = "127.0.0.1"  # loopback only: this broker has no authentication
    data_dir: Path | None = None  # None: default_data_dir(port, secure)
    cache_dir: Path | None = None  # None: default_cache_dir(version)
    version: str = KAFKA_VERSION
    heap: tuple[str, ...] = ("-Xmx512m", "-Xms256m")
    # C1 only: on a busy 2-core machine the broker starts in about half the time, and a
    # development broker's load never needs the C2 compiler's peak speed.
    jvm_options: tuple[str, ...] = ("-XX:TieredStopAtLevel=1",)
    auto_create_topics: bool = False
    start_timeout_s: float = 90.0
    stop_timeout_s: float = 30.0
    extra_properties: dict[str, str] = field(default_factory=dict)
    secure: bool = False  # SASL_SSL + SCRAM, TLS, ACLs (see the module's docstring)

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def ctl_port(self) -> int:
        return self.controller_port if self.controller_port is not None else self.port + 1

    @property
    def data_path(self) -> Path:
        if self.data_dir is not None:
            return Path(self.data_dir)
        return default_data_dir(self.port, self.secure)

    @property
    def lib_dir(self) -> Path:
        cache = Path(self.cache_dir) if self.cache_dir else default_cache_dir(self.version)
        return cache / "lib"

    @property
    def pid_file(self) -> Path:
        return self.data_path / "broker.pid"

    @property
    def log_file(self) -> Path:
        return self.data_path / "server.log"

    @property
    def jvm_out_file(self) -> Path:
        return self.data_path / "jvm.out"

    @property
    def properties_file(self) -> Path:
        return self.data_path / "server.properties"

    @property
    def log_dirs(self) -> Path:
        return self.data_path / "logs"

    # secure mode only
    @property
    def tls_dir(self) -> Path:
        return self.data_path / "tls"

    @property
    def ca_file(self) -> Path:
        """The CA certificate (PEM) that clients verify the broker with."""
        return self.tls_dir / "ca.pem"

    @property
    def broker_pem(self) -> Path:
        """The broker's private key, certificate and CA: its PEM keystore."""
        return self.tls_dir / "broker.pem"

    @property
    def passwords_file(self) -> Path:
        return self.data_path / "scram-passwords.json"

    @property
    def clients_dir(self) -> Path:
        return self.data_path / "clients"

    def client_properties(self, principal: str) -> Path:
        """`clients/<principal>.properties`: how `principal` connects (secure mode)."""
        return self.clients_dir / f"{principal}.properties"

    @property
    def admin_java_properties(self) -> Path:
        """The super user's settings for the Java admin client (the ACL tool)."""
        return self.data_path / "admin-java.properties"


@dataclass(frozen=True)
class BrokerInfo:
    bootstrap: str
    pid: int | None
    running: bool
    already_running: bool
    data_dir: Path
    log_file: Path
    version: str
    secure: bool = False
    ca_file: Path | None = None  # secure: the CA certificate clients verify the broker with
    client_properties: dict[str, Path] = field(default_factory=dict)  # secure: per principal


def storage_formatted(config: BrokerConfig) -> bool:
    """True once `kafka.tools.StorageTool format` ran on the data directory."""
    return (config.log_dirs / "meta.properties").is_file()
