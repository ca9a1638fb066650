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

Topics are not created automatically (`auto.create.topics.enable=false`): every part creates
the topics it uses from `schemas.topics`, so a misspelt topic name fails instead of silently
creating a new one.
"""

from __future__ import annotations

import argparse
import base64
import logging
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

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


def default_data_dir(port: int = DEFAULT_PORT) -> Path:
    env = os.environ.get("GRU4STREAM_KAFKA_DATA")
    if env:
        return Path(env)
    repo = _repo_root()
    base = repo / "var" / "kafka" if repo else default_cache_dir().parent / "data"
    return base / str(port)


@dataclass(frozen=True)
class BrokerConfig:
    """Where and how the development broker runs. Paths default from the port and version."""

    port: int = DEFAULT_PORT
    controller_port: int | None = None  # None: port + 1
    host: str = "127.0.0.1"  # loopback only: this broker has no authentication
    data_dir: Path | None = None  # None: default_data_dir(port)
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

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def ctl_port(self) -> int:
        return self.controller_port if self.controller_port is not None else self.port + 1

    @property
    def data_path(self) -> Path:
        return Path(self.data_dir) if self.data_dir is not None else default_data_dir(self.port)

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


@dataclass(frozen=True)
class BrokerInfo:
    bootstrap: str
    pid: int | None
    running: bool
    already_running: bool
    data_dir: Path
    log_file: Path
    version: str


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
            s.sendall(struct.pack(">i", len(body)) + body)
            (size,) = struct.unpack(">i", _recv_exact(s, 4))
            if not 8 <= size <= 64 * 1024 * 1024:
                return False
            resp = _recv_exact(s, size)
    except (OSError, ConnectionError, ValueError, struct.error):
        return False
    # response: correlation_id, throttle_time_ms, brokers array length, ...
    if len(resp) < 12:
        return False
    corr, _throttle, n_brokers = struct.unpack(">iii", resp[:12])
    return corr == correlation and n_brokers >= 1


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


def server_properties(config: BrokerConfig) -> str:
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
    props.update(config.extra_properties)
    lines = ["# Written by `gru4stream broker start`; rewritten on every start."]
    lines += [f"{k}={v}" for k, v in props.items()]
    return "\n".join(lines) + "\n"


def _format_storage(config: BrokerConfig, java: str, lib: Path) -> None:
    if (config.log_dirs / "meta.properties").is_file():
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
    config.properties_file.write_text(server_properties(config))
    _format_storage(config, java, lib)
    pid = _launch(config, java, lib)
    config.pid_file.write_text(f"{pid}\n")
    log.info("Kafka %s started, pid %d, log %s", config.version, pid, config.log_file)
    try:
        _wait_ready(config, pid)
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
        if probe(config.bootstrap, timeout=1.0):
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
    p.add_argument("--data-dir", type=Path, default=None, help="default: var/kafka/<port>")
    p.add_argument("--cache-dir", type=Path, default=None, help="jar cache for this version")
    p.add_argument("--kafka-version", default=KAFKA_VERSION, help=f"default {KAFKA_VERSION}")
    p.add_argument("--auto-create-topics", action="store_true", help="let clients create topics")
    p.add_argument("--timeout", type=float, default=90.0, help="seconds to wait for startup")
    return p


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
    )
    try:
        if args.action == "fetch":
            print(f"Kafka {config.version} jars in {ensure_jars(config)}")
        elif args.action == "start":
            info = start(config)
            state = "already running" if info.already_running else "started"
            print(f"Kafka {info.version} {state} on {info.bootstrap} (pid {info.pid})")
            print(f"log: {info.log_file}")
        elif args.action == "stop":
            was = stop(config)
            print(f"stopped the broker on {config.bootstrap}" if was else "no broker running")
        else:
            info = status(config)
            print(f"{'running' if info.running else 'not running'}: {info.bootstrap}")
            if info.running:
                print(f"pid: {info.pid}")
            print(f"version: {info.version}")
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
