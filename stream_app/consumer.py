"""Faust's Kafka consumer without four asyncio tasks per fetched message.

Faust 0.15.3's fetch loop (`Consumer._drain_messages`) hands every message to the conductor
with `await self.wait_first(callback(message), self.suspend_flow.wait())`, so that a
rebalance, which sets `suspend_flow`, can abandon a delivery stuck on a full stream queue.
`Service.wait_first` wraps each awaitable in a task (the delivery, the suspension, and the
service's own `stopped` and `crashed` events), waits for the first and cancels the rest: four
tasks and an `asyncio.wait` per message, a few per cent of a worker's event loop at a few
thousand clicks/s beside the delivery itself (py-spy profile of `benchmarks/bench_stream.py`).

The delivery itself rarely waits: it puts the message's event in the stream's queue. So
`wait_first` here runs the first awaitable's first step at once. If that finishes it, the
result is the one Faust's race would give (a task runs its first step before anything it
races against can cancel it) and no task is made; the other awaitables, unstarted coroutines,
are closed. If it suspends (a full queue, flow control during a rebalance), the rest of it
races the others through Faust's own `wait_first`, as before.

Its fetches wait at most `FETCH_MAX_WAIT_MS` at the broker, not the 1,500 ms Faust fixes.
aiokafka keeps one fetch request in flight per broker, and leaves out of it every partition
whose last records are still buffered, unread by Faust. After any pause of the fetch loop
(a large fetch to deliver, a busy host), the next request may hold none of the clicks
partitions, only quiet ones (the model updates, the table's changelog, which Faust never
reads after recovery): the broker then holds it for the whole wait while the clicks pile up,
and answers came up to 1.5 s late in `benchmarks/bench_stream.py` at half load.

They are answered at the first record (`FETCH_MIN_BYTES`, aiokafka's default, set here so
that the choice is visible and tested). Waiting for 32 KiB instead (or the 10 ms) saves each
fetch's request, hand-over from Faust's consumer thread and wake-up of the loop, but the
clicks then reach the worker later. `benchmarks/bench_stream.py --quick --runs 4 --events
20000 --seconds 20 --compare DIR --compare-rates 2500,8500`, DIR a copy with 32 KiB, medians
of 4 interleaved runs: p50 / p99 15 / 28 ms against 22 / 39 at 2,500 clicks/s, and 35 / 65
against 46 / 82 at 8,500, for 8% and 4% more worker CPU a click.

What this relies on (tests/test_consumer.py fails if it changes): the fetch loop calls
`self.wait_first` with the delivery coroutine first, `Transport.create_consumer` builds
the consumer from the transport's `Consumer` attribute, the consumer its thread with
`_new_consumer_thread`, the thread its aiokafka consumer with `_create_worker_consumer`, and
aiokafka's consumer hands `_fetch_max_wait_ms` and `_fetch_min_bytes` to the fetcher it
makes when it starts.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Coroutine, Generator
from typing import Any

import aiokafka
import faust
from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread
from faust.transport.drivers.aiokafka import Consumer as AIOKafkaConsumer
from mode.services import WaitResults

# Longest a fetch request waits at the broker for records (Kafka's fetch.max.wait.ms), and
# how much it waits for before that (fetch.min.bytes: the first record).
FETCH_MAX_WAIT_MS = 10
FETCH_MIN_BYTES = 1


class _Resumed:
    """Awaits the rest of a coroutine that already ran its first step up to `pending`."""

    __slots__ = ("_coro", "_pending")

    def __init__(self, coro: Coroutine[Any, Any, Any], pending: Any) -> None:
        self._coro = coro
        self._pending = pending

    def __await__(self) -> Generator[Any, Any, Any]:
        coro, pending = self._coro, self._pending
        while True:
            # Hand what the coroutine waits on to the task driving us, and the task's answer
            # (a value, or an exception such as a cancellation) back to the coroutine.
            try:
                sent = yield pending
            except BaseException as exc:  # noqa: BLE001 - passed on, not handled
                try:
                    pending = coro.throw(exc)
                except StopIteration as done:
                    return done.value
            else:
                try:
                    pending = coro.send(sent)
                except StopIteration as done:
                    return done.value


class ShortFetchConsumerThread(AIOKafkaConsumerThread):
    """Faust's consumer thread; its aiokafka consumer's fetches wait for `FETCH_MIN_BYTES`
    (the first record) or `FETCH_MAX_WAIT_MS`, whichever comes first."""

    def _create_worker_consumer(self, transport: Any) -> aiokafka.AIOKafkaConsumer:
        consumer = super()._create_worker_consumer(transport)
        # Both read when the consumer starts.
        consumer._fetch_max_wait_ms = FETCH_MAX_WAIT_MS
        consumer._fetch_min_bytes = FETCH_MIN_BYTES
        return consumer


class EagerDeliveryConsumer(AIOKafkaConsumer):
    """Faust's aiokafka consumer; `wait_first` finishes at once what does not wait."""

    def _new_consumer_thread(self) -> AIOKafkaConsumerThread:
        return ShortFetchConsumerThread(self, loop=self.loop, beacon=self.beacon)

    async def wait_first(self, *coros: Any, timeout: Any = None) -> WaitResults:
        first, rest = (coros[0], coros[1:]) if coros else (None, ())
        if not asyncio.iscoroutine(first) or self._stopped.is_set() or self._crashed.is_set():
            return await super().wait_first(*coros, timeout=timeout)
        try:
            pending = first.send(None)
        except StopIteration as done:
            _close(rest)
            if self._stopped.is_set() or self._crashed.is_set():
                return WaitResults([], [], True)
            return WaitResults([first], [done.value], False)
        except BaseException:
            _close(rest)
            raise
        resumed: Awaitable[Any] = _Resumed(first, pending)
        return await super().wait_first(resumed, *rest, timeout=timeout)


def _close(awaitables: tuple[Any, ...]) -> None:
    """Close unstarted coroutines (an unawaited one warns when collected)."""
    for item in awaitables:
        if asyncio.iscoroutine(item):
            item.close()


def use_eager_delivery(app: faust.App) -> None:
    """Make `app` build its consumer as an `EagerDeliveryConsumer` (call before it starts)."""
    if app._consumer is not None:
        raise RuntimeError("the app's consumer exists already")
    app.transport.Consumer = EagerDeliveryConsumer
