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

`start --secure` starts the same broker locked down: SASL_SSL with SCRAM users, TLS from a
throwaway CA, and deny-by-default ACLs from one table (`deploy.kafka.secure`, whose docstring
has the details; `var/kafka/<port>-secure` by default).

Topics are not created automatically (`auto.create.topics.enable=false`): every part creates
the topics it uses from `schemas.topics`, so a misspelt topic name fails instead of silently
creating a new one.

The parts: `config` (BrokerConfig, paths), `java` (jars, the java binary), `probe` (ports,
raw Kafka requests), `process` (the JVM process), `secure` (certificates, SCRAM, ACLs); this
module writes `server.properties`, formats the storage, and starts, stops and inspects.
"""

from __future__ import annotations

import argparse
import base64
import logging
import subprocess
import sys
import time
import uuid
from dataclasses import replace
from pathlib import Path

from deploy.kafka.config import (
    DEFAULT_PORT,
    KAFKA_VERSION,
    LOG4J_CONFIG,
    BrokerConfig,
    BrokerError,
    BrokerInfo,
    default_cache_dir,
    default_data_dir,
    storage_formatted,
)
from deploy.kafka.java import check_java, ensure_jars, java_error
from deploy.kafka.probe import free_port, port_free, probe, probe_tls
from deploy.kafka.process import is_our_broker, launch, running_pid, terminate
from deploy.kafka.secure import (
    PRINCIPAL_ACLS,
    PRINCIPALS,
    SCRAM_MECHANISM,
    SUPER_USER,
    Grant,
    acl_rows,
    client_settings,
    grant_acls,
    prepare_secure,
    secure_properties,
    write_private,
)

__all__ = [
    "DEFAULT_PORT",
    "KAFKA_VERSION",
    "PRINCIPALS",
    "PRINCIPAL_ACLS",
    "SCRAM_MECHANISM",
    "SUPER_USER",
    "BrokerConfig",
    "BrokerError",
    "BrokerInfo",
    "Grant",
    "acl_rows",
    "client_settings",
    "default_cache_dir",
    "default_data_dir",
    "ensure_jars",
    "free_port",
    "main",
    "port_free",
    "probe",
    "probe_tls",
    "server_properties",
    "start",
    "status",
    "stop",
]

log = logging.getLogger(__name__)


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
        props.update(secure_properties(config, admin_password))
    props.update(config.extra_properties)
    lines = ["# Written by `gru4stream broker start`; rewritten on every start."]
    lines += [f"{k}={v}" for k, v in props.items()]
    return "\n".join(lines) + "\n"


def _format_storage(
    config: BrokerConfig, java: str, lib: Path, scram_users: dict[str, str] | None = None
) -> None:
    if storage_formatted(config):
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
        reason = java_error(proc.stderr + "\n" + proc.stdout) or "no output"
        raise BrokerError(f"formatting {config.log_dirs} failed: {reason}")


def _log_tail_reason(config: BrokerConfig) -> str:
    for path in (config.jvm_out_file, config.log_file):
        try:
            text = "\n".join(path.read_text(errors="replace").splitlines()[-300:])
        except OSError:
            continue
        reason = java_error(text)
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
    pid = running_pid(config)
    if pid is not None:
        _wait_ready(config, pid)
        return _info(config, pid, already=True)
    for port in (config.port, config.ctl_port):
        if not port_free(config.host, port):
            raise BrokerError(_describe_port_owner(config.host, port))
    java = check_java()
    lib = ensure_jars(config)
    config.data_path.mkdir(parents=True, exist_ok=True)
    if config.secure:
        passwords = prepare_secure(config)
        write_private(config.properties_file, server_properties(config, passwords[SUPER_USER]))
    else:
        passwords = {}
        config.properties_file.write_text(server_properties(config))
    _format_storage(config, java, lib, passwords)
    pid = launch(config, java, lib)
    config.pid_file.write_text(f"{pid}\n")
    log.info("Kafka %s started, pid %d, log %s", config.version, pid, config.log_file)
    try:
        _wait_ready(config, pid)
        if config.secure:
            grant_acls(config, java, lib)
    except BrokerError:
        terminate(pid, config.stop_timeout_s)
        config.pid_file.unlink(missing_ok=True)
        raise
    return _info(config, pid, already=False)


def _wait_ready(config: BrokerConfig, pid: int) -> None:
    deadline = time.monotonic() + config.start_timeout_s
    while time.monotonic() < deadline:
        if not is_our_broker(pid, config):
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


def stop(config: BrokerConfig | None = None) -> bool:
    """Stop the broker started from this data directory. False when it was not running."""
    config = config or BrokerConfig()
    pid = running_pid(config)
    if pid is None:
        config.pid_file.unlink(missing_ok=True)
        return False
    terminate(pid, config.stop_timeout_s)
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
    pid = running_pid(config)
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
    if args.secure or args.data_dir is not None or running_pid(config) is not None:
        return config
    secure = replace(config, secure=True)
    return secure if running_pid(secure) is not None else config


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
