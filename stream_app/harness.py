"""Run workers as child processes and talk to their web views (tests, benchmarks, demos)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from kafka_io.send import send_messages
from kafka_io.settings import KafkaSettings, load_settings

ROOT = Path(__file__).resolve().parents[1]  # holds stream_app/, schemas/, ...


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class WorkerProcess:
    """`python -m stream_app ARGS` with its own web port, data dir and log file."""

    args: list[str]
    log_path: Path
    web_port: int = field(default_factory=free_port)
    env: dict[str, str] | None = None
    proc: subprocess.Popen | None = None
    module: str = "stream_app"  # `python -m MODULE ARGS` (tests run patched workers too)
    code_root: Path = ROOT  # the checkout whose packages it runs (benchmarks compare two)
    # In a process group of its own: a Ctrl-C meant for the parent does not reach it, and
    # stop() ends it with its children (replay and the demo, which stop it themselves).
    own_group: bool = False

    def start(self) -> WorkerProcess:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, **(self.env or {})}
        # This checkout's packages (or code_root's), whatever the working directory: -P keeps
        # `-m` from putting the working directory first on the path, where it would shadow
        # code_root's packages with the ones of the checkout it was started from.
        paths = (str(self.code_root), env.get("PYTHONPATH"))
        env["PYTHONPATH"] = os.pathsep.join(p for p in paths if p)
        log = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child process
        argv = ["-P", "-m", self.module, *self.args, "--web-port", str(self.web_port)]
        self.proc = subprocess.Popen(
            [sys.executable, *argv],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=self.own_group,
        )
        log.close()
        return self

    def get(self, path: str, timeout: float = 5.0) -> tuple[int, Any]:
        url = f"http://127.0.0.1:{self.web_port}{path}"
        try:
            with urllib.request.urlopen(url, timeout=timeout) as response:
                body = response.read()
                status = response.status
        except urllib.error.HTTPError as exc:
            body, status = exc.read(), exc.code
        try:
            return status, json.loads(body)
        except ValueError:
            return status, body.decode("utf-8", "replace")

    def health(self) -> dict[str, Any] | None:
        try:
            status, body = self.get("/health", timeout=2.0)
        except OSError:
            return None
        return body if isinstance(body, dict) else None

    def wait_ready(self, timeout: float = 60.0, *, partitions: bool = True) -> dict[str, Any]:
        """Until /health says ok (and, by default, the worker holds some partitions)."""
        deadline = time.monotonic() + timeout
        last: dict[str, Any] | None = None
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"worker exited with {self.proc.returncode}: {self.tail()}")
            last = self.health()
            if last and last.get("status") == "ok" and (not partitions or last.get("partitions")):
                return last
            time.sleep(0.25)
        raise TimeoutError(f"worker not ready after {timeout:.0f} s ({last}): {self.tail()}")

    def wait_until(
        self, what: str, ready: Callable[[int, Any], bool], timeout: float, path: str = "/model"
    ) -> Any:
        """Poll `path` until `ready(status, body)`; its body, or TimeoutError with the log tail
        (RuntimeError if the worker exits first)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"worker exited with {self.proc.returncode}: {self.tail()}")
            try:
                status, body = self.get(path, timeout=2.0)
            except OSError:
                status, body = 0, None
            if isinstance(body, dict) and ready(status, body):
                return body
            time.sleep(0.25)
        raise TimeoutError(f"the worker did not {what} within {timeout:.0f} s: {self.tail()}")

    def metric(self, name: str) -> float:
        """Sum of a Prometheus sample family's values (labels ignored); 0 if absent."""
        _, text = self.get("/metrics")
        total = 0.0
        for line in str(text).splitlines():
            if line.startswith(name) and not line.startswith("#"):
                head, _, value = line.rpartition(" ")
                if head == name or head.startswith(name + "{"):
                    total += float(value)
        return total

    def stop(self, timeout: float = 30.0) -> int | None:
        """SIGTERM (a clean Faust shutdown: commit, flush), then SIGKILL if it hangs."""
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        self._signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self._signal(signal.SIGKILL)
            return self.proc.wait(10)

    def _signal(self, sig: int) -> None:
        assert self.proc is not None
        if self.own_group:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, sig)  # the worker and its children
        else:
            self.proc.send_signal(sig)

    def kill(self) -> None:
        """SIGKILL: no shutdown, no last commit (the crash case)."""
        if self.proc is not None and self.proc.poll() is None:
            self._signal(signal.SIGKILL)
            self.proc.wait(10)

    def tail(self, n: int = 40) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(lines[-n:])


def click_message(session_id: str, item_id: str, timestamp: int) -> tuple[bytes, bytes]:
    """A well-formed click as (key, value), keyed by its session id."""
    value = orjson.dumps({"session_id": session_id, "item_id": item_id, "timestamp": timestamp})
    return session_id.encode(), value


def kafka_settings(kafka: KafkaSettings | str) -> KafkaSettings:
    """Settings as given, or those of a plaintext broker at a bare HOST:PORT."""
    if isinstance(kafka, KafkaSettings):
        return kafka
    return load_settings(overrides={"bootstrap.servers": kafka}, environ={})


async def produce_clicks(
    kafka: KafkaSettings | str,
    topic: str,
    messages: Sequence[tuple[bytes | None, bytes | None]],
    *,
    rate: float | None = None,
) -> list[tuple[int, int]]:
    """Publish (key, value) pairs in order, at `rate` per second if given; (partition, offset).
    A failed delivery raises."""
    results = await send_messages(
        kafka_settings(kafka), topic, messages, rate=rate, linger_ms=2, max_request_size=2**21
    )
    for result in results:
        if isinstance(result, BaseException):
            raise result
    return [(m.partition, m.offset) for m in results]


class BackgroundProducer(threading.Thread):
    """`produce_clicks` in a thread of its own; `join()` then read `.positions`."""

    def __init__(
        self, kafka: KafkaSettings | str, topic: str, messages, *, rate: float | None = None
    ):
        super().__init__(daemon=True)
        self.args = (kafka, topic, list(messages))
        self.rate = rate
        self.positions: list[tuple[int, int]] = []
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.positions = asyncio.run(produce_clicks(*self.args, rate=self.rate))
        except BaseException as exc:  # noqa: BLE001 - handed to the joining thread
            self.error = exc

    def result(self, timeout: float = 120.0) -> list[tuple[int, int]]:
        self.join(timeout)
        if self.is_alive():
            raise TimeoutError("producer still running")
        if self.error is not None:
            raise self.error
        return self.positions
