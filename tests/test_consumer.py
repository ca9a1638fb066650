"""stream_app/consumer.py: the eager `wait_first` gives the results Faust's would.

The worker tests (tests/test_worker.py, test_faults.py, test_failover.py) run every click
through this consumer against a real broker; these check the method itself, and that Faust
still builds its consumer and calls it the way the module relies on.
"""

from __future__ import annotations

import asyncio
import inspect

import faust
import pytest
from faust.transport.consumer import Consumer as FaustConsumer

from stream_app.consumer import (
    FETCH_MAX_WAIT_MS,
    FETCH_MIN_BYTES,
    EagerDeliveryConsumer,
    ShortFetchConsumerThread,
    use_eager_delivery,
)


def consumer(tmp_path) -> EagerDeliveryConsumer:
    """A Faust app's consumer, not started; call inside the test's event loop (mode's
    events bind to the loop they are made in, as in a worker)."""
    app = faust.App("eager-test", broker="kafka://127.0.0.1:1", datadir=str(tmp_path))
    use_eager_delivery(app)
    built = app.consumer
    assert type(built) is EagerDeliveryConsumer
    with pytest.raises(RuntimeError, match="exists already"):
        use_eager_delivery(app)
    return built


def test_a_delivery_that_does_not_wait_finishes_without_the_race(tmp_path):

    async def deliver() -> str:
        return "delivered"

    async def run():
        c = consumer(tmp_path)
        other = asyncio.Event().wait()
        results = await c.wait_first(deliver(), other)
        assert inspect.getcoroutinestate(other) == inspect.CORO_CLOSED  # no "never awaited"
        return results

    results = asyncio.run(run())
    assert (results.results, results.stopped) == (["delivered"], False)


def test_a_delivery_that_waits_is_finished_by_the_race(tmp_path):
    steps = []

    async def deliver() -> int:
        steps.append("first step")
        await asyncio.sleep(0.01)
        steps.append("second step")
        return 7

    async def run():
        c = consumer(tmp_path)
        return await c.wait_first(deliver(), asyncio.Event().wait())

    results = asyncio.run(run())
    assert results.results == [7]
    assert steps == ["first step", "second step"]


def test_a_suspension_cancels_a_delivery_that_waits(tmp_path):
    seen = []

    async def deliver() -> None:
        try:
            await asyncio.Event().wait()  # a full queue that never drains
        except asyncio.CancelledError:
            seen.append("cancelled")
            raise

    async def run():
        c = consumer(tmp_path)
        suspend = asyncio.Event()
        asyncio.get_running_loop().call_later(0.01, suspend.set)
        return await c.wait_first(deliver(), suspend.wait())

    results = asyncio.run(run())
    assert results.results == [True]  # the suspension's result: Event.wait() -> True
    assert seen == ["cancelled"]


def test_errors_of_the_first_step_reach_the_caller(tmp_path):

    async def deliver() -> None:
        raise ValueError("bad message")

    async def run():
        c = consumer(tmp_path)
        other = asyncio.Event().wait()
        with pytest.raises(ValueError, match="bad message"):
            await c.wait_first(deliver(), other)
        assert inspect.getcoroutinestate(other) == inspect.CORO_CLOSED

    asyncio.run(run())


def test_a_stopped_consumer_reports_stopped(tmp_path):

    async def deliver() -> str:
        return "delivered"

    async def run():
        c = consumer(tmp_path)
        c._stopped.set()
        return await c.wait_first(deliver(), timeout=1)

    assert asyncio.run(run()).stopped is True


def test_fausts_fetch_loop_races_the_delivery_first():
    """What the module relies on: the fetch loop's call, with the delivery first."""
    source = " ".join(inspect.getsource(FaustConsumer._drain_messages).split())
    assert "await self.wait_first( callback(message), self.suspend_flow.wait() )" in source


def test_the_worker_consumers_fetches_wait_briefly(tmp_path, kafka_bootstrap):
    """The aiokafka consumer Faust's thread builds asks the broker to hold a fetch until
    FETCH_MIN_BYTES came or FETCH_MAX_WAIT_MS passed, and aiokafka's fetcher, made at start,
    uses those."""

    async def run() -> tuple[tuple[int, int], tuple[int, int]]:
        app = faust.App(
            "short-fetch-test", broker=f"kafka://{kafka_bootstrap}", datadir=str(tmp_path)
        )
        use_eager_delivery(app)
        thread = app.consumer._thread
        assert isinstance(thread, ShortFetchConsumerThread)
        client = thread._create_worker_consumer(app.transport)
        built = client._fetch_max_wait_ms, client._fetch_min_bytes
        await client.start()
        try:
            return built, (client._fetcher._fetch_max_wait_ms, client._fetcher._fetch_min_bytes)
        finally:
            await client.stop()

    wanted = (FETCH_MAX_WAIT_MS, FETCH_MIN_BYTES)
    assert asyncio.run(run()) == (wanted, wanted)
    assert FETCH_MAX_WAIT_MS < 1_500  # Faust's own: the reason for the subclass


def test_faust_builds_its_thread_and_aiokafka_consumer_where_the_module_hooks_in():
    from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread, ThreadDelegateConsumer

    source = " ".join(inspect.getsource(AIOKafkaConsumerThread._create_consumer).split())
    assert "return self._create_worker_consumer(transport)" in source
    assert "fetch_max_wait_ms=1500" in inspect.getsource(
        AIOKafkaConsumerThread._create_worker_consumer
    )
    assert "self._new_consumer_thread()" in inspect.getsource(ThreadDelegateConsumer.__init__)
