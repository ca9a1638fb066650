"""Micro-batches taken from the agent's queue in one go, instead of one event per loop turn.

Faust 0.15.3's stream iterator hands out one event per event-loop turn (it awaits `sleep(0)`,
then every processor, for each event), and `Stream.take_events` builds its batches from that.
The fetch loop, meanwhile, puts up to 100 events in the same queue per turn. After any hiccup
(a collection, a busy host) the fetched records pile up in the queue while the stream takes
one per turn: `benchmarks/bench_stream.py` at half load showed ~300 events queued while
batches of 5-30 were taken, so a hiccup of tens of milliseconds grew into answers late by
hundreds. `take_batches` empties the queue into the batch at once.

It reads the queue the stream would read, and does per event what Faust's iterator does
(faust/_cython/streams.pyx, `StreamIterator._prepare_event` and `after`):
- an event fetched before the last rebalance (its message's `generation_id` is not the
  consumer's), or while flow is suspended, is dropped unacked: Faust seeks back to the
  committed offset and reads it again;
- the message is tracked as pending (`Consumer.track_message`), so a clean stop waits for it;
- every event of a batch is acked with `Stream.ack` when the loop body is done with the batch,
  or when the generator is closed after the body raised, as `take_events` does (the worker's
  `AckGate` holds its own reference until delivery, see stream_app/delivery.py).

What it relies on (tests/test_intake.py fails if it changes): `aiter(stream.channel)` adds a
topic channel to the app's conductor and returns it, the conductor puts `Event`s on that
channel's `queue`, and those calls and attributes keep their names and meaning.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import faust

# While a batch waits for more events, the queue is looked at this often.
POLL_S = 0.002


async def take_batches(
    stream: faust.StreamT, max_: int, within: float
) -> AsyncIterator[list[faust.EventT]]:
    """Batches of up to `max_` events: all that are queued, or whatever came `within` s."""
    channel = aiter(stream.channel)  # subscribes, as iterating the stream would
    queue = channel.queue
    app = stream.app
    consumer = app.consumer
    flow = app.flow_control
    acks_enabled_for = app.topics.acks_enabled_for
    loop = asyncio.get_running_loop()

    def admit(event: faust.EventT, batch: list[faust.EventT]) -> None:
        message = event.message
        if not flow.is_active() or message.generation_id != app.consumer_generation_id:
            return  # read again after the rebalance's seek
        if not message.tracked and acks_enabled_for(message.topic):
            message.tracked = True
            consumer.track_message(message)
        batch.append(event)

    try:
        while not stream.should_stop:
            batch: list[faust.EventT] = []
            admit(await queue.get(), batch)
            deadline = loop.time() + within
            while True:
                while len(batch) < max_ and not queue.empty():
                    admit(queue.get_nowait(), batch)
                remaining = deadline - loop.time()
                if len(batch) >= max_ or remaining <= 0:
                    break
                await asyncio.sleep(min(remaining, POLL_S))
            if not batch:
                continue
            try:
                yield batch
            finally:
                for event in batch:
                    await stream.ack(event)
    finally:
        channel.on_stop_iteration()
