"""A CPU of its own for the worker under test; the broker and the load generator on the rest.

On a small machine everything shares the CPUs: the local broker, the benchmark's click
generator and answer reader, and the worker. The scheduler then moves the worker between
CPUs and runs the broker's JVM threads beside it, and its latency measures that contention
as much as the worker. A deployment gives a worker a core of its own and the broker a
machine of its own; `CpuPlan` comes closer: each worker the benchmark starts runs on the
last CPU, while the benchmark itself and the local development broker (found by its pid
file, `deploy/kafka`) keep to the others until the benchmark ends, when the broker gets
all CPUs back. Measured with clicks paced at 7,100/s on 2 CPUs, three runs each, interleaved:
p99 93-107 ms with the plan against 111-274 ms without, p50 57-61 against 64-68.

Linux only (`os.sched_setaffinity`); with fewer than 2 CPUs there is nothing to split.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass


@dataclass(frozen=True)
class CpuPlan:
    worker: frozenset[int]  # the worker under test
    others: frozenset[int]  # the benchmark and the local broker

    @classmethod
    def choose(cls) -> CpuPlan | None:
        """The last usable CPU for the worker, the rest for the others; None if impossible."""
        if not hasattr(os, "sched_setaffinity"):
            return None
        cpus = sorted(os.sched_getaffinity(0))
        if len(cpus) < 2:
            return None
        return cls(frozenset(cpus[-1:]), frozenset(cpus[:-1]))

    def describe(self) -> str:
        worker, others = _cpus(self.worker), _cpus(self.others)
        return f"workers on CPU {worker}, the benchmark and the broker on {others}"

    def pin_worker(self, pid: int) -> None:
        pin(pid, self.worker)

    @contextlib.contextmanager
    def applied(self, broker_pid: int | None) -> Iterator[None]:
        """Keep this process (and the broker, if local) off the worker's CPU meanwhile."""
        own = os.sched_getaffinity(0)
        broker_cpus = _affinity(broker_pid) if broker_pid is not None else None
        os.sched_setaffinity(0, self.others)  # threads started from here on inherit it
        if broker_pid is not None:
            pin(broker_pid, self.others)
        try:
            yield
        finally:
            os.sched_setaffinity(0, own)
            if broker_pid is not None and broker_cpus is not None:
                pin(broker_pid, broker_cpus)


def pin(pid: int, cpus: frozenset[int] | set[int]) -> None:
    """Every thread of process `pid` onto `cpus` (threads it starts later inherit it)."""
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except FileNotFoundError:
        return  # gone already
    for task in tasks:
        with contextlib.suppress(ProcessLookupError):  # a thread that ended meanwhile
            os.sched_setaffinity(int(task), cpus)


def local_broker_pid(bootstrap: str) -> int | None:
    """The pid of the development broker (`gru4stream broker start`) serving `bootstrap`."""
    from deploy.kafka.config import BrokerConfig
    from deploy.kafka.process import running_pid

    host, _, port = bootstrap.split(",")[0].rpartition(":")
    if host not in ("127.0.0.1", "localhost") or not port.isdigit():
        return None
    return running_pid(BrokerConfig(port=int(port)))


def _affinity(pid: int) -> set[int] | None:
    try:
        return os.sched_getaffinity(pid)
    except ProcessLookupError:
        return None


def _cpus(cpus: frozenset[int]) -> str:
    return ",".join(str(c) for c in sorted(cpus))
