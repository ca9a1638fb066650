"""The benchmarks' CPU plan: a worker on a CPU of its own, the others kept off it, and the
broker given back every CPU it had afterwards (no broker or Kafka needed: a child process
stands in for both)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from benchmarks.cpu_plan import CpuPlan, local_broker_pid, pin

pytestmark = pytest.mark.skipif(
    not hasattr(os, "sched_setaffinity") or len(os.sched_getaffinity(0)) < 2,
    reason="needs Linux and 2 or more CPUs",
)

# A process with two threads, standing in for a worker or the broker.
THREADS = (
    "import threading, time; "
    "threading.Thread(target=time.sleep, args=(30,)).start(); time.sleep(30)"
)


@pytest.fixture
def child():
    proc = subprocess.Popen([sys.executable, "-c", THREADS])
    yield proc
    proc.kill()
    proc.wait()


def affinities(pid: int) -> list[set[int]]:
    return [os.sched_getaffinity(int(t)) for t in os.listdir(f"/proc/{pid}/task")]


def test_the_worker_gets_the_last_cpu_and_the_rest_stay_off_it(child):
    plan = CpuPlan.choose()
    cpus = os.sched_getaffinity(0)
    assert plan.worker == {max(cpus)} and plan.others == cpus - {max(cpus)}
    before = os.sched_getaffinity(0)
    with plan.applied(broker_pid=child.pid):
        assert os.sched_getaffinity(0) == plan.others
        assert all(a == plan.others for a in affinities(child.pid))
    assert os.sched_getaffinity(0) == before
    assert all(a == before for a in affinities(child.pid))  # every thread given back


def test_pin_moves_every_thread_of_a_process(child):
    plan = CpuPlan.choose()
    pin(child.pid, plan.worker)
    assert len(affinities(child.pid)) >= 1
    assert all(a == plan.worker for a in affinities(child.pid))
    pin(2**22 + 7, plan.worker)  # a process that is gone: nothing to do, no error


def test_only_a_local_development_broker_is_found():
    assert local_broker_pid("kafka.example.com:9092") is None
    assert local_broker_pid("127.0.0.1:1") is None  # no broker started on that port
