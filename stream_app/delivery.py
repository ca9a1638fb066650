"""No offset is committed before Kafka has what the worker produced for it.

What Faust 0.15.3 does (faust/streams.py, faust/transport/consumer.py), and why it is not enough:
- `Stream.take_events`, and the worker's `take_batches` after it (stream_app/intake.py), ack a
  micro-batch's events in a `finally` around its `yield`: after the agent's loop body returns,
  but also when the generator is closed after the body raised (the event loop's
  async-generator finalizer calls `aclose()`). An exception in the body therefore
  does not keep its batch from being committed, and the agent's default supervisor restarts the
  agent and goes on with the next batch.
- An ack decrements the message's refcount; at zero `Consumer.ack` records the offset, and the
  commit task (every `broker_commit_interval`) commits the highest run of acked offsets.
- Before committing, Faust flushes the producer, but aiokafka's flush does not raise for
  batches that failed, and a failed send only reaches us through its future.

So each batch is held here: `hold` adds one reference to every message before the batch is
processed, so the batch generator's ack can never be the last one. `release_after` drops that
reference (the final ack) once every record the batch produced (answers, dead letters,
changelog writes) is acknowledged by the broker, and only after every earlier batch was
released: Faust commits the lowest contiguous run of acked offsets, and its gap check lets one
missing offset through (`_new_offset` compares against `committed + 1`), so releases must
never overtake each other. A batch whose delivery fails is never released, and nothing after
it is either; the worker then stops (see `WorkerRuntime.stop_worker`), and whoever takes the
partitions reads the unreleased clicks again. Releases run in the background, a few batches
deep, so the next batch is answered while the last one's records are in flight.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import faust

# Bytes a record adds to its key and value in a produce request (record batch header: 61,
# record header: at most ~25). Generous, so a record that passes cannot fail the producer's
# own check (aiokafka's DefaultRecordBatchBuilder.estimate_size_in_bytes).
RECORD_OVERHEAD_BYTES = 256
# /health reports a stall when the oldest held batch has waited this long (a broker outage:
# deliveries are retried for up to Faust's producer_request_timeout).
STALLED_AFTER_S = 30.0


def record_fits(key: bytes | None, value: bytes | None, max_request_size: int) -> bool:
    """Whether the producer (and so a default broker) accepts this record at all."""
    size = len(key or b"") + len(value or b"") + RECORD_OVERHEAD_BYTES
    return size <= max_request_size


class AckGate:
    """Holds micro-batches until what they produced is delivered, then acks them in order."""

    def __init__(
        self,
        consumer: Callable[[], Any],
        on_failure: Callable[[BaseException], Awaitable[None]],
        depth: int = 4,
    ) -> None:
        self._consumer = consumer  # app.consumer, read late: it exists once the app runs
        self._on_failure = on_failure
        self._depth = depth
        self._pending: deque[tuple[float, asyncio.Task]] = deque()
        self._tail: asyncio.Task | None = None
        self._holding_since: float | None = None  # the batch being processed
        self._failure: asyncio.Future | None = None
        self.failed: BaseException | None = None

    def hold(self, events: Sequence[faust.EventT]) -> None:
        """Keep Faust from acking these events until `release_after` says so."""
        self._holding_since = time.monotonic()
        for event in events:
            event.message.incref()

    async def release_after(
        self, events: Sequence[faust.EventT], deliveries: Sequence[Awaitable[Any]]
    ) -> bool:
        """Ack `events` once `deliveries` and all earlier batches are through; False if failed.

        Returns at once while fewer than `depth` batches are in flight, else waits for the
        oldest (back pressure during an outage).
        """
        held_at, self._holding_since = self._holding_since or time.monotonic(), None
        if self.failed is not None:
            return False
        task = asyncio.ensure_future(self._release(self._tail, list(events), list(deliveries)))
        self._tail = task
        self._pending.append((held_at, task))
        while self._pending and self._pending[0][1].done():
            self._pending.popleft()
        if len(self._pending) > self._depth:
            await asyncio.shield(self._pending[0][1])
        return self.failed is None

    async def _release(
        self,
        previous: asyncio.Task | None,
        events: list[faust.EventT],
        deliveries: list[Awaitable[Any]],
    ) -> None:
        try:
            if previous is not None:
                await previous
            if self.failed is not None:
                return
            await asyncio.gather(*deliveries)
        except Exception as exc:  # noqa: BLE001 - any failed delivery stops the worker
            if self.failed is None:
                self.failed = exc
                # Scheduled, not awaited: stop_worker never returns, and later batches wait
                # for this task to end.
                self._failure = asyncio.ensure_future(self._on_failure(exc))
            return
        if self.failed is not None:
            return
        consumer = self._consumer()
        for event in events:
            # Drops the reference taken by `hold`; the batch generator has dropped its own
            # already (or will, right after the loop body): whichever comes last is the final ack.
            event.message.ack(consumer)

    def held_for(self) -> float:
        """Seconds the oldest batch not yet released has been waiting (0 if none)."""
        while self._pending and self._pending[0][1].done():
            self._pending.popleft()
        oldest = self._pending[0][0] if self._pending else self._holding_since
        return 0.0 if oldest is None else time.monotonic() - oldest
