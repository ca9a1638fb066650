"""A single-node Apache Kafka broker (KRaft, combined broker + controller) for development and CI.

`gru4stream broker start|stop|status|fetch`:

- `fetch` copies the broker jars named by `pom.xml` (next to this file) from Maven Central into
  a cache directory, once per Kafka version (`~/.cache/gru4stream/kafka/<version>/lib`, or
  `$GRU4STREAM_KAFKA_CACHE/<version>/lib`). It needs `mvn` on the PATH.
- `start` fetches if needed, writes `server.properties` into the data directory, formats the
  storage on first use, starts `kafka.Kafka` as a detached process in its own session, writes
  a pid file and waits until the broker answers a metadata request. Starting a broker that is
  already running reports it and succeeds. It needs `java` (17 or newer) on the PATH.
- `stop` sends SIGTERM, waits for a clean shutdown, then SIGKILL; no process is left behind.
- `status` prints whether the broker runs, its pid, address, data directory and log file.
  Exit status 0 when it runs, 3 when it does not.

The data directory defaults to `var/kafka/<port>` in the repository (or in the cache
directory when the package is installed elsewhere), or `$GRU4STREAM_KAFKA_DATA`. It holds
`server.properties`, `broker.pid`, `server.log` (the broker's log), `jvm.out` (the JVM's own
output) and `logs/` (the topic data).

`start --secure` starts the same broker locked down, for trying the real security setup
(`var/kafka/<port>-secure` by default; nothing in the test suite but `tests/test_broker_secure.py`
uses it, the rest runs against the plaintext broker):

- one client listener, SASL_SSL with SCRAM-SHA-512, which is also the inter-broker listener
  (the broker authenticates as `admin`); no plaintext listener at all;
- the controller listener takes TLS with a client certificate only (mutual TLS): its principal
  is the broker certificate's `User:CN=gru4stream-broker`, which only the broker's key proves;
- `StandardAuthorizer`, deny by default, `admin` the only super user besides the broker itself,
  and the ACLs of `PRINCIPAL_ACLS` (one table: principal -> grants) created after each start;
- SCRAM users (`admin` and the principals of `PRINCIPAL_ACLS`) created when the storage is
  formatted, with random passwords kept in `scram-passwords.json` (0600) in the data directory;
- a throwaway CA and a broker certificate (SAN `DNS:localhost,IP:127.0.0.1`) made with
  `openssl` into `tls/` on first start; the CA's key is deleted once it signed, so nobody can
  mint another broker certificate. Clients verify the broker with `tls/ca.pem`;
- one `clients/<principal>.properties` (0600) per principal: address, SASL, password, CA.

Topics are not created automatically (`auto.create.topics.enable=false`): every part creates
the topics it uses from `schemas.topics`, so a misspelt topic name fails instead of silently
creating a new one.
"""

from __future__ import annotations

import argparse
import base64
import json
import logging
import os
import re
import secrets
import shutil
import signal
import socket
import ssl
import struct
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import NamedTuple

log = logging.getLogger(__name__)

KAFKA_VERSION = "4.4.0"
DEFAULT_PORT = 9092
HERE = Path(__file__).resolve().parent
POM = HERE / "pom.xml"
LOG4J_CONFIG = HERE / "log4j2.xml"
MIN_JAVA = 17  # Kafka 4.x brokers run on Java 17 or newer


# --- secure mode: principals and their rights -------------------------------------------------

SCRAM_MECHANISM = "SCRAM-SHA-512"
SUPER_USER = "admin"  # creates topics and ACLs; also the broker's own inter-broker identity
BROKER_CERT_CN = "gru4stream-broker"  # controller-listener principal: User:CN=gru4stream-broker
AUTHORIZER = "org.apache.kafka.metadata.authorizer.StandardAuthorizer"


class Grant(NamedTuple):
    """Operations allowed on every resource of one type whose name starts with `prefix`."""

    resource: str  # "topic", "group" or "cluster" (the cluster ignores the prefix)
    prefix: str
    operations: tuple[str, ...]


_CLUSTER = Grant("cluster", "kafka-cluster", ("IDEMPOTENT_WRITE",))  # idempotent producers

# The one table of who may do what on the secure broker (besides the super user `admin`).
# Prefixes rather than exact names, so tests can use unique topics such as `clicks-3f2a`;
# note that `clicks` therefore also covers `clicks-dlq`.
PRINCIPAL_ACLS: dict[str, tuple[Grant, ...]] = {
    "producer": (
        Grant("topic", "clicks", ("WRITE", "DESCRIBE")),
        _CLUSTER,
    ),
    "worker": (
        Grant("topic", "clicks", ("READ", "DESCRIBE", "DESCRIBE_CONFIGS")),
        Grant("topic", "model-updates", ("READ", "DESCRIBE", "DESCRIBE_CONFIGS")),
        Grant("topic", "recommendations", ("WRITE", "DESCRIBE", "DESCRIBE_CONFIGS")),
        Grant("topic", "clicks-dlq", ("WRITE", "DESCRIBE", "DESCRIBE_CONFIGS")),
        # Faust's own topics: changelogs `<app-id>-<table>-changelog`, the assignor's topic.
        Grant("topic", "gru4stream-worker", ("ALL",)),
        Grant("group", "gru4stream-worker", ("READ",)),  # the app id is the consumer group
        _CLUSTER,
    ),
    "trainer": (
        Grant("topic", "clicks", ("READ", "DESCRIBE")),  # the archive, read without a group
        Grant("topic", "model-updates", ("WRITE", "DESCRIBE", "CREATE")),
        _CLUSTER,
    ),
    # Offline replay reads the archive; live replay runs a worker on its own `replay-*`
    # topics and group, so an analyst never touches the production topics' writers.
    "analyst": (
        Grant("topic", "clicks", ("READ", "DESCRIBE")),
        Grant("topic", "replay-", ("ALL",)),
        Grant("group", "replay-", ("READ",)),
        _CLUSTER,
    ),
}
PRINCIPALS: tuple[str, ...] = (SUPER_USER, *PRINCIPAL_ACLS)


def acl_rows(acls: dict[str, tuple[Grant, ...]] = PRINCIPAL_ACLS) -> list[tuple[str, ...]]:
    """(principal, resource type, name, pattern type, operation) rows, one per ALLOW ACL."""
    rows = []
    for principal, grants in acls.items():
        for grant in grants:
            cluster = grant.resource == "cluster"
            name = "kafka-cluster" if cluster else grant.prefix
            pattern = "LITERAL" if cluster else "PREFIXED"
            rows += [
                (f"User:{principal}", grant.resource.upper(), name, pattern, op)
                for op in grant.operations
            ]
    return rows


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


# --- jars ------------------------------------------------------------------------------------


def ensure_jars(config: BrokerConfig | None = None) -> Path:
    """The directory holding the broker's jars, fetched from Maven Central on first use."""
    config = config or BrokerConfig()
    lib = config.lib_dir
    marker = lib / ".complete"
    if marker.is_file():
        return lib
    mvn = shutil.which("mvn")
    if mvn is None:
        raise BrokerError("`mvn` (Apache Maven) is not on the PATH; it fetches the Kafka jars")
    staging = lib.parent / f"lib.partial-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    cmd = [
        mvn,
        "-q",
        "-B",
        "-f",
        str(POM),
        f"-Dkafka.version={config.version}",
        "dependency:copy-dependencies",
        "-DincludeScope=runtime",
        f"-DoutputDirectory={staging}",
    ]
    log.info("fetching Kafka %s jars into %s", config.version, lib)
    proc = subprocess.run(cmd, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    if proc.returncode != 0 or not any(staging.glob(f"kafka_2.13-{config.version}.jar")):
        shutil.rmtree(staging, ignore_errors=True)
        raise BrokerError(
            f"fetching Kafka {config.version} jars with Maven failed: "
            + _last_error_line(proc.stdout + proc.stderr)
        )
    (staging / ".complete").write_text(config.version + "\n")
    shutil.rmtree(lib, ignore_errors=True)
    staging.rename(lib)
    return lib


def _last_error_line(output: str) -> str:
    lines = [re.sub(r"\x1b\[[0-9;]*m", "", ln).strip() for ln in output.splitlines()]
    errors = [ln for ln in lines if ln.startswith("[ERROR]") and len(ln) > 8]
    picked = errors[0] if errors else next((ln for ln in reversed(lines) if ln), "no output")
    return picked[:300]


# --- java ------------------------------------------------------------------------------------


def _check_java() -> str:
    java = shutil.which("java")
    if java is None:
        raise BrokerError(f"`java` is not on the PATH; the Kafka broker needs Java {MIN_JAVA}+")
    proc = subprocess.run([java, "-version"], capture_output=True, text=True)
    match = re.search(r'version "(\d+)(?:\.(\d+))?', proc.stderr + proc.stdout)
    if match:
        major = int(match.group(1))
        if major == 1 and match.group(2):  # "1.8.0_x" style
            major = int(match.group(2))
        if major < MIN_JAVA:
            raise BrokerError(f"Java {major} found; the Kafka broker needs Java {MIN_JAVA}+")
    return java


# --- network probes --------------------------------------------------------------------------


def port_free(host: str, port: int) -> bool:
    """True when nothing listens on host:port (we could bind it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("connection closed")
        buf += chunk
    return bytes(buf)


def probe(bootstrap: str, timeout: float = 2.0) -> bool:
    """True when a Kafka broker at `host:port` answers a metadata request naming a broker.

    A raw Metadata v4 request (api key 3, non-flexible header): small, synchronous, and
    accepted by Kafka 2.x through 4.x. Anything else on the port (or nothing) gives False.
    """
    host, _, port = bootstrap.rpartition(":")
    client_id = b"gru4stream-probe"
    correlation = 0x6772
    # header: api_key, api_version, correlation_id, client_id; body: topics=null, auto_create=0
    body = struct.pack(">hhih", 3, 4, correlation, len(client_id)) + client_id
    body += struct.pack(">ib", -1, 0)
    try:
        with socket.create_connection((host or "127.0.0.1", int(port)), timeout=timeout) as s:
            s.settimeout(timeout)
            resp = _roundtrip(s, body)
    except (OSError, ConnectionError, ValueError, struct.error):
        return False
    # response: correlation_id, throttle_time_ms, brokers array length, ...
    if len(resp) < 12:
        return False
    corr, _throttle, n_brokers = struct.unpack(">iii", resp[:12])
    return corr == correlation and n_brokers >= 1


def _roundtrip(sock: socket.socket, body: bytes) -> bytes:
    """Send one size-prefixed Kafka request and return the response after its size."""
    sock.sendall(struct.pack(">i", len(body)) + body)
    (size,) = struct.unpack(">i", _recv_exact(sock, 4))
    if not 6 <= size <= 64 * 1024 * 1024:
        raise ValueError(f"implausible response size {size}")
    return _recv_exact(sock, size)


def probe_tls(bootstrap: str, cafile: Path | str, timeout: float = 2.0) -> bool:
    """True when a TLS listener at `host:port`, verified with `cafile`, answers as Kafka.

    A raw ApiVersions v0 request (api key 18): a SASL_SSL listener answers it before any
    authentication, so this needs no password, and the broker accepts connections only once
    it serves. A certificate that `cafile` does not verify gives False.
    """
    host, _, port = bootstrap.rpartition(":")
    host = host or "127.0.0.1"
    client_id = b"gru4stream-probe"
    correlation = 0x6773
    body = struct.pack(">hhih", 18, 0, correlation, len(client_id)) + client_id
    try:
        context = ssl.create_default_context(cafile=str(cafile))
        with (
            socket.create_connection((host, int(port)), timeout=timeout) as raw,
            context.wrap_socket(raw, server_hostname=host) as s,
        ):
            s.settimeout(timeout)
            resp = _roundtrip(s, body)
    except (OSError, ConnectionError, ValueError, struct.error):  # ssl.SSLError is an OSError
        return False
    # response: correlation_id, error_code, api versions array, ...
    corr, error = struct.unpack(">ih", resp[:6])
    return corr == correlation and error == 0


# --- process handling ------------------------------------------------------------------------


def _read_pid(config: BrokerConfig) -> int | None:
    try:
        return int(config.pid_file.read_text().strip())
    except (OSError, ValueError):
        return None


def _is_our_broker(pid: int, config: BrokerConfig) -> bool:
    """The pid is alive (not a zombie) and is `kafka.Kafka` on this config's properties."""
    try:  # reap it if it happens to be our own child
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            return False
    except ChildProcessError:
        pass
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    if stat.rpartition(")")[2].split()[0] in ("Z", "X"):
        return False
    args = [a.decode(errors="replace") for a in cmdline]
    return "kafka.Kafka" in args and str(config.properties_file) in args


def _running_pid(config: BrokerConfig) -> int | None:
    pid = _read_pid(config)
    return pid if pid is not None and _is_our_broker(pid, config) else None


def _cluster_id() -> str:
    # Kafka's own ids: 16 random bytes, url-safe base64 without padding, not starting with "-".
    while True:
        text = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
        if not text.startswith("-"):
            return text


def server_properties(config: BrokerConfig, admin_password: str | None = None) -> str:
    """The broker's `server.properties`; a secure one needs the super user's password."""
    ctl = f"{config.host}:{config.ctl_port}"
    props = {
        "process.roles": "broker,controller",
        "node.id": "1",
        "controller.quorum.voters": f"1@{ctl}",
        "listeners": f"PLAINTEXT://{config.bootstrap},CONTROLLER://{ctl}",
        "advertised.listeners": f"PLAINTEXT://{config.bootstrap}",
        "controller.listener.names": "CONTROLLER",
        "inter.broker.listener.name": "PLAINTEXT",
        "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
        "log.dirs": str(config.log_dirs),
        "num.partitions": "1",
        "num.network.threads": "2",
        "num.io.threads": "4",
        # A single node: internal topics cannot have more than one replica.
        "offsets.topic.replication.factor": "1",
        "offsets.topic.num.partitions": "8",
        "transaction.state.log.replication.factor": "1",
        "transaction.state.log.min.isr": "1",
        "transaction.state.log.num.partitions": "4",
        "share.coordinator.state.topic.replication.factor": "1",
        "share.coordinator.state.topic.min.isr": "1",
        # Tests start and stop consumer groups constantly; do not wait for more members.
        "group.initial.rebalance.delay.ms": "0",
        "auto.create.topics.enable": str(config.auto_create_topics).lower(),
        "delete.topic.enable": "true",
    }
    if config.secure:
        if admin_password is None:
            raise ValueError("a secure broker's properties need the admin password")
        props.update(_secure_properties(config, admin_password))
    props.update(config.extra_properties)
    lines = ["# Written by `gru4stream broker start`; rewritten on every start."]
    lines += [f"{k}={v}" for k, v in props.items()]
    return "\n".join(lines) + "\n"


def _scram_jaas(username: str, password: str) -> str:
    module = "org.apache.kafka.common.security.scram.ScramLoginModule"
    return f'{module} required username="{username}" password="{password}";'


def _secure_properties(config: BrokerConfig, admin_password: str) -> dict[str, str]:
    ctl = f"{config.host}:{config.ctl_port}"
    return {
        # No plaintext listener: every client authenticates and is authorized.
        "listeners": f"CLIENT://{config.bootstrap},CONTROLLER://{ctl}",
        "advertised.listeners": f"CLIENT://{config.bootstrap}",
        "listener.security.protocol.map": "CLIENT:SASL_SSL,CONTROLLER:SSL",
        "sasl.enabled.mechanisms": SCRAM_MECHANISM,
        # One node: the broker only talks to itself (e.g. transaction markers), as the admin.
        "inter.broker.listener.name": "CLIENT",
        "sasl.mechanism.inter.broker.protocol": SCRAM_MECHANISM,
        "listener.name.client.scram-sha-512.sasl.jaas.config": _scram_jaas(
            SUPER_USER, admin_password
        ),
        # The controller listener admits only a certificate our CA signed, i.e. the broker's
        # own (the CA key is gone): never User:ANONYMOUS, which would need super-user rights.
        "listener.name.controller.ssl.client.auth": "required",
        "ssl.keystore.type": "PEM",
        "ssl.keystore.location": str(config.broker_pem),
        "ssl.truststore.type": "PEM",
        "ssl.truststore.location": str(config.ca_file),
        "ssl.endpoint.identification.algorithm": "https",
        "authorizer.class.name": AUTHORIZER,
        "super.users": f"User:{SUPER_USER};User:CN={BROKER_CERT_CN}",
        "allow.everyone.if.no.acl.found": "false",
    }


# --- secure mode: secrets, certificates, client settings, ACLs --------------------------------


def _write_private(path: Path, text: str) -> None:
    """Write a file only its owner can read (it holds a password or a key)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)  # an existing file keeps its old mode through os.open
    with os.fdopen(fd, "w") as f:
        f.write(text)


def _storage_formatted(config: BrokerConfig) -> bool:
    return (config.log_dirs / "meta.properties").is_file()


def _scram_passwords(config: BrokerConfig) -> dict[str, str]:
    """Each principal's SCRAM password: kept in the data directory, made before first format."""
    path = config.passwords_file
    stored: dict[str, str] = json.loads(path.read_text()) if path.is_file() else {}
    missing = [p for p in PRINCIPALS if p not in stored]
    if not missing:
        return stored
    if _storage_formatted(config):  # the users exist only as the format created them
        raise BrokerError(
            f"{path} lacks the passwords of {', '.join(missing)} but {config.log_dirs} is"
            " already formatted; delete the data directory to start afresh"
        )
    stored.update({p: secrets.token_urlsafe(24) for p in missing})
    _write_private(path, json.dumps(stored, indent=2) + "\n")
    return stored


def _openssl(*args: str | Path) -> None:
    openssl = shutil.which("openssl")
    if openssl is None:
        raise BrokerError("`openssl` is not on the PATH; the secure broker's certificates need it")
    proc = subprocess.run([openssl, *map(str, args)], capture_output=True, text=True)
    if proc.returncode != 0:
        lines = (proc.stderr or proc.stdout).strip().splitlines() or ["no output"]
        raise BrokerError(f"openssl {args[0]} failed: {lines[-1][:300]}")


def _ensure_tls(config: BrokerConfig) -> None:
    """A throwaway CA and the broker's key and certificate, made once per data directory."""
    if config.ca_file.is_file() and config.broker_pem.is_file():
        return
    config.tls_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    key = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
    with tempfile.TemporaryDirectory(dir=config.tls_dir) as tmp:
        t = Path(tmp)
        _openssl(
            "req", "-x509", *key, "-keyout", t / "ca.key", "-out", t / "ca.pem",
            "-days", "3650", "-subj", "/CN=gru4stream development CA",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        )  # fmt: skip
        _openssl(
            "req", "-x509", *key, "-keyout", t / "broker.key", "-out", t / "broker.crt",
            "-CA", t / "ca.pem", "-CAkey", t / "ca.key",
            "-days", "825", "-subj", f"/CN={BROKER_CERT_CN}",
            "-addext", "basicConstraints=critical,CA:FALSE",
            "-addext", "keyUsage=critical,digitalSignature",
            # serverAuth for clients, clientAuth for the broker's own controller connection
            "-addext", "extendedKeyUsage=serverAuth,clientAuth",
            "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
        )  # fmt: skip
        ca_pem = (t / "ca.pem").read_text()
        keystore = (t / "broker.key").read_text() + (t / "broker.crt").read_text() + ca_pem
        _write_private(config.broker_pem, keystore)
        config.ca_file.write_text(ca_pem)
    # The CA key leaves with the temporary directory: no other certificate can be signed.


def client_settings(config: BrokerConfig, principal: str, password: str) -> str:
    """A principal's `client.properties` for the secure broker (keys as in the README)."""
    lines = [
        f"bootstrap.servers={config.bootstrap}",
        "security.protocol=SASL_SSL",
        f"sasl.mechanism={SCRAM_MECHANISM}",
        f"sasl.username={principal}",
        f"sasl.password={password}",
        f"ssl.ca.location={config.ca_file.resolve()}",
        "ssl.endpoint.identification.algorithm=https",
    ]
    return "\n".join(lines) + "\n"


def _write_client_settings(config: BrokerConfig, passwords: dict[str, str]) -> None:
    config.clients_dir.mkdir(mode=0o700, exist_ok=True)
    for principal in PRINCIPALS:
        _write_private(
            config.client_properties(principal),
            client_settings(config, principal, passwords[principal]),
        )
    # The Java admin client names the password and the CA differently.
    java_admin = [
        f"bootstrap.servers={config.bootstrap}",
        "security.protocol=SASL_SSL",
        f"sasl.mechanism={SCRAM_MECHANISM}",
        f"sasl.jaas.config={_scram_jaas(SUPER_USER, passwords[SUPER_USER])}",
        "ssl.truststore.type=PEM",
        f"ssl.truststore.location={config.ca_file.resolve()}",
    ]
    _write_private(config.admin_java_properties, "\n".join(java_admin) + "\n")


def _prepare_secure(config: BrokerConfig) -> dict[str, str]:
    """Certificates, passwords and client files for a secure start; returns the passwords."""
    config.data_path.chmod(0o700)  # the data holds keys, passwords and SCRAM hashes
    _ensure_tls(config)
    passwords = _scram_passwords(config)
    _write_client_settings(config, passwords)
    return passwords


# Kafka's Java admin client, run from source (one JVM, no build step): reads the admin's
# properties file (argument) and tab-separated `acl_rows` (stdin), creates them all, then waits
# until the broker's authorizer shows them (CreateAcls returns once the controller committed).
_GRANT_ACLS_JAVA = """\
import java.io.*;
import java.nio.file.*;
import java.util.*;
import org.apache.kafka.clients.admin.Admin;
import org.apache.kafka.common.acl.*;
import org.apache.kafka.common.resource.*;

public class GrantAcls {
    public static void main(String[] args) throws Exception {
        Properties props = new Properties();
        try (InputStream in = Files.newInputStream(Path.of(args[0]))) { props.load(in); }
        List<AclBinding> acls = new ArrayList<>();
        BufferedReader rows = new BufferedReader(new InputStreamReader(System.in));
        for (String line; (line = rows.readLine()) != null; ) {
            if (line.isBlank()) continue;
            String[] f = line.split("\\t");
            acls.add(new AclBinding(
                new ResourcePattern(ResourceType.fromString(f[1]), f[2],
                                    PatternType.fromString(f[3])),
                new AccessControlEntry(f[0], "*", AclOperation.fromString(f[4]),
                                       AclPermissionType.ALLOW)));
        }
        try (Admin admin = Admin.create(props)) {
            admin.createAcls(acls).all().get();
            long deadline = System.currentTimeMillis() + 30_000;
            while (!admin.describeAcls(AclBindingFilter.ANY).values().get().containsAll(acls)) {
                if (System.currentTimeMillis() > deadline)
                    throw new IllegalStateException("the broker does not show the new ACLs");
                Thread.sleep(100);
            }
        }
    }
}
"""


def _grant_acls(config: BrokerConfig, java: str, lib: Path) -> None:
    """Create the ACLs of PRINCIPAL_ACLS as the super user (idempotent; on every start)."""
    source = config.data_path / "GrantAcls.java"
    source.write_text(_GRANT_ACLS_JAVA)
    cmd = [
        java,
        "-Xmx128m",
        *config.jvm_options,
        f"-Dlog4j2.configurationFile={LOG4J_CONFIG}",
        f"-Dgru4stream.kafka.log={config.data_path / 'acls.log'}",
        "-cp",
        f"{lib}/*",
        str(source),
        str(config.admin_java_properties),
    ]
    rows = "".join("\t".join(row) + "\n" for row in acl_rows())
    try:
        proc = subprocess.run(cmd, input=rows, capture_output=True, text=True, timeout=120)
    except subprocess.TimeoutExpired:
        raise BrokerError("creating the ACLs took more than 120 s") from None
    if proc.returncode != 0:
        reason = _java_error(proc.stderr + "\n" + proc.stdout) or "no output"
        raise BrokerError(f"creating the ACLs failed: {reason}")


def _format_storage(
    config: BrokerConfig, java: str, lib: Path, scram_users: dict[str, str] | None = None
) -> None:
    if _storage_formatted(config):
        return
    cmd = [
        java,
        "-Xmx256m",
        *config.jvm_options,
        f"-Dlog4j2.configurationFile={LOG4J_CONFIG}",
        f"-Dgru4stream.kafka.log={config.log_file}",
        "-cp",
        f"{lib}/*",
        "kafka.tools.StorageTool",
        "format",
        "--cluster-id",
        _cluster_id(),
        "--config",
        str(config.properties_file),
        "--ignore-formatted",
    ]
    # SCRAM users exist from the first metadata record on: the broker's own inter-broker
    # login and the admin's first ACL request need them before anyone could create them.
    for name, password in (scram_users or {}).items():
        cmd += ["--add-scram", f"{SCRAM_MECHANISM}=[name={name},password={password}]"]
    proc = subprocess.run(cmd, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    if proc.returncode != 0:
        reason = _java_error(proc.stderr + "\n" + proc.stdout) or "no output"
        raise BrokerError(f"formatting {config.log_dirs} failed: {reason}")


def _launch(config: BrokerConfig, java: str, lib: Path) -> int:
    """Start the JVM detached (own session, parent exits at once) and return its pid."""
    cmd = [
        java,
        *config.heap,
        *config.jvm_options,
        "-XX:+UseG1GC",
        "-XX:MaxGCPauseMillis=20",
        "-XX:+ExitOnOutOfMemoryError",
        "-Djava.awt.headless=true",
        f"-Dlog4j2.configurationFile={LOG4J_CONFIG}",
        f"-Dgru4stream.kafka.log={config.log_file}",
        "-cp",
        f"{lib}/*",
        "kafka.Kafka",
        str(config.properties_file),
    ]
    # A throwaway shell backgrounds the JVM and exits, so the broker is re-parented to init:
    # it outlives this process and never lingers as our zombie.
    script = '"$@" </dev/null >>"$GRU4STREAM_JVM_OUT" 2>&1 & echo $!'
    env = dict(os.environ, GRU4STREAM_JVM_OUT=str(config.jvm_out_file))
    proc = subprocess.run(
        ["sh", "-c", script, "sh", *cmd],
        capture_output=True,
        text=True,
        env=env,
        cwd=config.data_path,
        start_new_session=True,
    )
    try:
        return int(proc.stdout.strip())
    except ValueError:
        raise BrokerError(f"could not launch java: {proc.stderr.strip()[:300]}") from None


_EXCEPTION_LINE = re.compile(r"^(Caused by: )?([\w$]+\.)+[\w$]*(Exception|Error)\b")


def _java_error(text: str) -> str | None:
    """The most telling line of Java output: the last exception message, else an ERROR line."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    lines = [ln.removeprefix('Exception in thread "main" ') for ln in lines]
    exceptions = [ln for ln in lines if _EXCEPTION_LINE.match(ln)]
    if exceptions:
        return exceptions[-1][:300]
    errors = [i for i, ln in enumerate(lines) if " ERROR " in ln or ln.startswith("Error")]
    if not errors:
        return None
    i = errors[-1]
    if lines[i].startswith("Error") and i + 1 < len(lines):  # the JVM's reason is below
        return f"{lines[i]}: {lines[i + 1]}"[:300]
    return lines[i][:300]


def _log_tail_reason(config: BrokerConfig) -> str:
    for path in (config.jvm_out_file, config.log_file):
        try:
            text = "\n".join(path.read_text(errors="replace").splitlines()[-300:])
        except OSError:
            continue
        reason = _java_error(text)
        if reason:
            return f"{reason} (log: {path})"
    return f"see {config.log_file}"


def _describe_port_owner(host: str, port: int) -> str:
    kafka = probe(f"{host}:{port}", timeout=0.5)
    what = " (a Kafka broker not started from this data directory)" if kafka else ""
    return f"port {port} on {host} is already in use by another process{what}"


def start(config: BrokerConfig | None = None) -> BrokerInfo:
    """Start the broker (or find it running) and wait until it answers; raise BrokerError."""
    config = config or BrokerConfig()
    pid = _running_pid(config)
    if pid is not None:
        _wait_ready(config, pid)
        return _info(config, pid, already=True)
    for port in (config.port, config.ctl_port):
        if not port_free(config.host, port):
            raise BrokerError(_describe_port_owner(config.host, port))
    java = _check_java()
    lib = ensure_jars(config)
    config.data_path.mkdir(parents=True, exist_ok=True)
    if config.secure:
        passwords = _prepare_secure(config)
        _write_private(config.properties_file, server_properties(config, passwords[SUPER_USER]))
    else:
        passwords = {}
        config.properties_file.write_text(server_properties(config))
    _format_storage(config, java, lib, passwords)
    pid = _launch(config, java, lib)
    config.pid_file.write_text(f"{pid}\n")
    log.info("Kafka %s started, pid %d, log %s", config.version, pid, config.log_file)
    try:
        _wait_ready(config, pid)
        if config.secure:
            _grant_acls(config, java, lib)
    except BrokerError:
        _terminate(pid, config.stop_timeout_s)
        config.pid_file.unlink(missing_ok=True)
        raise
    return _info(config, pid, already=False)


def _wait_ready(config: BrokerConfig, pid: int) -> None:
    deadline = time.monotonic() + config.start_timeout_s
    while time.monotonic() < deadline:
        if not _is_our_broker(pid, config):
            raise BrokerError(f"the broker exited during startup: {_log_tail_reason(config)}")
        if config.secure:
            ready = probe_tls(config.bootstrap, config.ca_file, timeout=1.0)
        else:
            ready = probe(config.bootstrap, timeout=1.0)
        if ready:
            return
        time.sleep(0.25)
    raise BrokerError(
        f"the broker did not answer on {config.bootstrap} within {config.start_timeout_s:.0f} s"
        f" (log: {config.log_file})"
    )


def _alive(pid: int) -> bool:
    try:
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            return False
    except ChildProcessError:
        pass
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


def _terminate(pid: int, timeout_s: float) -> None:
    """SIGTERM (a clean, controlled shutdown), wait, then SIGKILL the broker's process group."""
    try:
        pgid = os.getpgid(pid)
    except ProcessLookupError:
        return
    for sig, wait_s in ((signal.SIGTERM, timeout_s), (signal.SIGKILL, 10.0)):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            return
        except PermissionError:
            os.kill(pid, sig)
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            if not _alive(pid):
                return
            time.sleep(0.1)
        if sig == signal.SIGTERM:
            log.warning("broker pid %d ignored SIGTERM for %.0f s; killing it", pid, timeout_s)
    if _alive(pid):
        raise BrokerError(f"could not stop broker pid {pid}")


def stop(config: BrokerConfig | None = None) -> bool:
    """Stop the broker started from this data directory. False when it was not running."""
    config = config or BrokerConfig()
    pid = _running_pid(config)
    if pid is None:
        config.pid_file.unlink(missing_ok=True)
        return False
    _terminate(pid, config.stop_timeout_s)
    config.pid_file.unlink(missing_ok=True)
    return True


def _info(config: BrokerConfig, pid: int | None, *, already: bool) -> BrokerInfo:
    return BrokerInfo(
        bootstrap=config.bootstrap,
        pid=pid,
        running=pid is not None,
        already_running=already,
        data_dir=config.data_path,
        log_file=config.log_file,
        version=config.version,
        secure=config.secure,
        ca_file=config.ca_file if config.secure else None,
        client_properties=(
            {p: config.client_properties(p) for p in PRINCIPALS} if config.secure else {}
        ),
    )


def status(config: BrokerConfig | None = None) -> BrokerInfo:
    config = config or BrokerConfig()
    pid = _running_pid(config)
    return _info(config, pid, already=pid is not None)


# --- command line ----------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="gru4stream broker",
        description="Start, stop or inspect the local single-node Kafka broker (KRaft).",
    )
    p.add_argument("action", choices=("start", "stop", "status", "fetch"))
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help="client port (default 9092)")
    p.add_argument("--controller-port", type=int, default=None, help="default: port + 1")
    p.add_argument("--data-dir", type=Path, default=None, help="default: var/kafka/<port>[-secure]")
    p.add_argument("--cache-dir", type=Path, default=None, help="jar cache for this version")
    p.add_argument("--kafka-version", default=KAFKA_VERSION, help=f"default {KAFKA_VERSION}")
    p.add_argument("--auto-create-topics", action="store_true", help="let clients create topics")
    p.add_argument("--timeout", type=float, default=90.0, help="seconds to wait for startup")
    p.add_argument(
        "--secure",
        action="store_true",
        help="SASL_SSL (SCRAM-SHA-512) only, TLS, ACLs; writes clients/<principal>.properties",
    )
    return p


def _print_info(info: BrokerInfo) -> None:
    state = "already running" if info.already_running else "started"
    print(f"Kafka {info.version} {state} on {info.bootstrap} (pid {info.pid})")
    print(f"log: {info.log_file}")
    if info.secure:  # paths only: the passwords stay in the files
        print(f"security: SASL_SSL ({SCRAM_MECHANISM}), ACLs; CA certificate: {info.ca_file}")
        for principal, path in info.client_properties.items():
            print(f"client settings for {principal}: {path}")


def _find_running(config: BrokerConfig, args: argparse.Namespace) -> BrokerConfig:
    """`stop`/`status` without --secure also find a secure broker on that port."""
    if args.secure or args.data_dir is not None or _running_pid(config) is not None:
        return config
    secure = replace(config, secure=True)
    return secure if _running_pid(secure) is not None else config


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    config = BrokerConfig(
        port=args.port,
        controller_port=args.controller_port,
        data_dir=args.data_dir,
        cache_dir=args.cache_dir,
        version=args.kafka_version,
        auto_create_topics=args.auto_create_topics,
        start_timeout_s=args.timeout,
        secure=args.secure,
    )
    if args.action in ("stop", "status"):
        config = _find_running(config, args)
    try:
        if args.action == "fetch":
            print(f"Kafka {config.version} jars in {ensure_jars(config)}")
        elif args.action == "start":
            _print_info(start(config))
        elif args.action == "stop":
            was = stop(config)
            print(f"stopped the broker on {config.bootstrap}" if was else "no broker running")
        else:
            info = status(config)
            print(f"{'running' if info.running else 'not running'}: {info.bootstrap}")
            if info.running:
                print(f"pid: {info.pid}")
            print(f"version: {info.version}")
            if info.secure:
                print(f"security: SASL_SSL ({SCRAM_MECHANISM}), ACLs; CA: {info.ca_file}")
            print(f"data: {info.data_dir}")
            print(f"log: {info.log_file}")
            return 0 if info.running else 3
    except BrokerError as exc:
        print(f"gru4stream broker: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
