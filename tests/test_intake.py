"""stream_app/intake.py: batches taken from the agent's queue as Faust's stream would take them.

The worker tests (tests/test_worker.py, test_faults.py, test_failover.py) run every click
through `take_batches` against a real broker; these check its batching, tracking and acking
with a real Faust app's stream, channel and consumer, events put on the queue by hand.
"""

from __future__ import annotations

import asyncio

import faust
import pytest
from faust.types import TP
from faust.types.tuples import ConsumerMessage

from stream_app.intake import take_batches

TOPIC = "intake-clicks"


class Harness:
    """A Faust app (not started), a stream on a topic, and events for its queue."""

    def __init__(self, tmp_path) -> None:
        self.app = faust.App("intake-test", broker="kafka://127.0.0.1:1", datadir=str(tmp_path))
        self.app.flow_control.resume()  # as after a partition assignment
        self.topic = self.app.topic(TOPIC, key_serializer="raw", value_serializer="raw")
        self.stream = self.app.stream(self.topic)

    def event(self, offset: int, generation: int | None = None) -> faust.EventT:
        if generation is None:
            generation = self.app.consumer_generation_id
        message = ConsumerMessage(
            TOPIC, 0, offset, 0.0, 0, {}, b"k", b"v", None, tp=TP(TOPIC, 0),
            generation_id=generation,
        )  # fmt: skip
        message.incref()  # the conductor's reference for the one channel it delivers to
        return faust.Event(self.app, b"k", b"v", {}, message)

    async def start(self, gen) -> asyncio.Future:
        """Start `gen`'s first batch; once it subscribed, index topics as the conductor does
        when the worker subscribes (which topics ack their events)."""
        first = asyncio.ensure_future(gen.__anext__())
        await asyncio.sleep(0)
        await self.app.topics._update_indices()
        return first

    def channel(self):
        """The channel `take_batches` subscribed to the conductor."""
        (channel,) = [t for t in self.app.topics if t.get_topic_name() == TOPIC]
        return channel


async def batches_of(h: Harness, events: list, max_: int, within: float, n: int) -> list:
    """Run take_batches until n batches; return [(offsets, acked before, acked after)]."""
    seen = []
    gen = take_batches(h.stream, max_, within)
    first = await h.start(gen)
    for event in events:
        h.channel().queue.put_nowait(event)
    batch = await first
    while True:
        before = [e.message.acked for e in batch]
        seen.append(([e.message.offset for e in batch], before, batch))
        if len(seen) == n:
            break
        batch = await gen.__anext__()
    await gen.aclose()
    return [(offsets, before, [e.message.acked for e in b]) for offsets, before, b in seen]


def test_queued_events_come_in_order_in_batches_of_at_most_max(tmp_path):
    async def run():
        h = Harness(tmp_path)
        return await batches_of(h, [h.event(i) for i in range(7)], max_=3, within=0.0, n=3)

    got = asyncio.run(run())
    assert [offsets for offsets, _, _ in got] == [[0, 1, 2], [3, 4, 5], [6]]
    # Acked when the loop body is done with a batch, not before.
    assert all(not any(before) and all(after) for _, before, after in got)


def test_events_arriving_within_the_wait_join_the_batch(tmp_path):
    async def run():
        h = Harness(tmp_path)
        gen = take_batches(h.stream, 2, 30.0)  # full at 2: no 30 s wait
        first = await h.start(gen)
        queue = h.channel().queue
        queue.put_nowait(h.event(0))
        asyncio.get_running_loop().call_later(0.02, queue.put_nowait, h.event(1))
        batch = await first
        await gen.aclose()
        return [e.message.offset for e in batch]

    assert asyncio.run(run()) == [0, 1]


def test_events_are_tracked_as_pending_until_acked(tmp_path):
    async def run():
        h = Harness(tmp_path)
        gen = take_batches(h.stream, 10, 0.0)
        first = await h.start(gen)
        h.channel().queue.put_nowait(h.event(5))
        (event,) = await first
        pending = event.message in h.app.consumer.unacked and event.message.tracked
        await gen.aclose()  # acks the batch, as leaving the loop body would
        return pending, event.message in h.app.consumer.unacked, event.message.acked

    assert asyncio.run(run()) == (True, False, True)


def test_an_event_from_before_a_rebalance_is_dropped_unacked(tmp_path):
    async def run():
        h = Harness(tmp_path)
        stale = h.event(0, generation=h.app.consumer_generation_id + 1)
        got = await batches_of(h, [stale, h.event(1)], max_=10, within=0.0, n=1)
        return got, stale.message.acked, stale.message.tracked

    got, stale_acked, stale_tracked = asyncio.run(run())
    assert [offsets for offsets, _, _ in got] == [[1]]
    assert (stale_acked, stale_tracked) == (False, False)  # read again after the seek


def test_a_batch_whose_body_raised_is_still_acked(tmp_path):
    async def run():
        h = Harness(tmp_path)
        events = [h.event(0), h.event(1)]
        with pytest.raises(RuntimeError, match="body failed"):
            gen = take_batches(h.stream, 10, 0.0)
            first = await h.start(gen)
            for event in events:
                h.channel().queue.put_nowait(event)
            async with _closing(gen):
                await first
                raise RuntimeError("body failed")
        return [e.message.acked for e in events]

    # As with take_events: the worker's AckGate holds its own reference (delivery.py).
    assert asyncio.run(run()) == [True, True]


class _closing:
    """`async for`'s cleanup of a generator left by an exception: aclose()."""

    def __init__(self, gen) -> None:
        self.gen = gen

    async def __aenter__(self):
        return self.gen

    async def __aexit__(self, *exc) -> None:
        await self.gen.aclose()


def test_it_subscribes_the_streams_topic_and_a_cancelled_wait_ends_it(tmp_path):
    async def run():
        h = Harness(tmp_path)
        gen = take_batches(h.stream, 10, 0.0)
        first = await h.start(gen)
        subscribed = [t.get_topic_name() for t in h.app.topics]
        first.cancel()
        with pytest.raises(asyncio.CancelledError):
            await first
        return subscribed

    assert asyncio.run(run()) == [TOPIC]
