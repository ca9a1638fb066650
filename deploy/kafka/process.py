"""The broker's JVM process: launch it detached, find it by its pid file, terminate it."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import time
from pathlib import Path

from deploy.kafka.config import LOG4J_CONFIG, BrokerConfig, BrokerError

log = logging.getLogger(__name__)


def _read_pid(config: BrokerConfig) -> int | None:
    try:
        return int(config.pid_file.read_text().strip())
    except (OSError, ValueError):
        return None


def is_our_broker(pid: int, config: BrokerConfig) -> bool:
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


def running_pid(config: BrokerConfig) -> int | None:
    pid = _read_pid(config)
    return pid if pid is not None and is_our_broker(pid, config) else None


def launch(config: BrokerConfig, java: str, lib: Path) -> int:
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


def terminate(pid: int, timeout_s: float) -> None:
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
