"""The ack gate (stream_app/delivery.py) with Faust's real message refcounts; no broker."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest
from faust.types.tuples import ConsumerMessage

from schemas.events import DEAD_LETTER_PREFIX_BYTES, DeadLetter, decode_dead_letter, encode
from stream_app.delivery import AckGate, record_fits


class Consumer:
    """Records the final acks (what Faust's Consumer.ack turns into committable offsets)."""

    def __init__(self) -> None:
        self.acked: list[int] = []

    def ack(self, message: ConsumerMessage) -> bool:
        self.acked.append(message.offset)
        return True


def events(*offsets: int) -> list[SimpleNamespace]:
    out = []
    for offset in offsets:
        message = ConsumerMessage("clicks", 0, offset, 0.0, 0, None, b"k", b"v", None)
        message.incref()  # as Faust's conductor does for the one stream reading it
        out.append(SimpleNamespace(message=message))
    return out


def take_events_ack(batch, consumer: Consumer) -> None:
    """What `Stream.take_events` does after the loop body (or when closed after an error)."""
    for event in batch:
        event.message.ack(consumer)


def run(coro):
    return asyncio.run(coro)


def test_a_batch_is_acked_only_once_its_records_are_delivered():
    async def scenario():
        consumer, failures = Consumer(), []
        gate = AckGate(lambda: consumer, _record(failures))
        batch = events(1, 2)
        gate.hold(batch)
        delivery = asyncio.get_running_loop().create_future()
        assert await gate.release_after(batch, [delivery])
        take_events_ack(batch, consumer)
        await asyncio.sleep(0.01)
        assert consumer.acked == []  # the broker has not acknowledged the answers yet
        delivery.set_result(None)
        await asyncio.sleep(0.01)
        assert consumer.acked == [1, 2] and not failures

    run(scenario())


def test_a_batch_that_raised_is_never_acked():
    async def scenario():
        consumer = Consumer()
        gate = AckGate(lambda: consumer, _record([]))
        batch = events(7)
        gate.hold(batch)
        take_events_ack(batch, consumer)  # the generator's `finally`, after the body raised
        assert consumer.acked == []

    run(scenario())


def test_batches_are_acked_in_order_and_none_after_a_failed_delivery():
    async def scenario():
        consumer, failures = Consumer(), []
        gate = AckGate(lambda: consumer, _record(failures))
        first, second, third = events(1), events(2), events(3)
        slow = asyncio.get_running_loop().create_future()
        for batch, deliveries in ((first, [slow]), (second, [])):
            gate.hold(batch)
            assert await gate.release_after(batch, deliveries)
            take_events_ack(batch, consumer)
        await asyncio.sleep(0.01)
        assert consumer.acked == []  # the second waits for the first
        assert gate.held_for() > 0
        slow.set_exception(RuntimeError("delivery failed"))
        await asyncio.sleep(0.01)
        assert consumer.acked == [] and len(failures) == 1
        gate.hold(third)
        assert not await gate.release_after(third, [])
        await asyncio.sleep(0.01)
        assert consumer.acked == [] and gate.failed is not None

    run(scenario())


def test_the_pipeline_is_bounded():
    async def scenario():
        consumer = Consumer()
        gate = AckGate(lambda: consumer, _record([]), depth=2)
        pending = [asyncio.get_running_loop().create_future() for _ in range(3)]
        for i, fut in enumerate(pending[:2]):
            batch = events(i)
            gate.hold(batch)
            await gate.release_after(batch, [fut])
        batch = events(2)
        gate.hold(batch)
        third = asyncio.ensure_future(gate.release_after(batch, [pending[2]]))
        await asyncio.sleep(0.01)
        assert not third.done()  # three in flight: waits for the oldest
        pending[0].set_result(None)
        assert await asyncio.wait_for(third, 1)

    run(scenario())


def _record(failures: list):
    async def on_failure(exc: BaseException) -> None:
        failures.append(exc)

    return on_failure


@pytest.mark.parametrize("size", [0, 100, DEAD_LETTER_PREFIX_BYTES, 996_147])
def test_a_dead_letter_is_bounded_whatever_its_value(size):
    value = bytes(range(256)) * (size // 256) + b"\x00" * (size % 256)
    letter = DeadLetter.of("event: " + "why " * 1000, "clicks", 3, 9, value, b"k" * 300_000)
    raw = encode(letter)
    assert len(raw) < 16 * 1024 and record_fits(letter.key, raw, 20_000)
    back = decode_dead_letter(raw)
    assert back.original == value[:DEAD_LETTER_PREFIX_BYTES] and back.original_len == size
    assert back.truncated == (size > DEAD_LETTER_PREFIX_BYTES)
    assert back.key_len == 300_000 and len(back.key or b"") == 1024
    assert len(back.reason) <= 1000 and (back.partition, back.offset) == (3, 9)


def test_version_1_dead_letters_still_decode():
    raw = (
        b'{"reason":"event: x","topic":"clicks","partition":0,"offset":4,'
        b'"original":"\\u00ff\\u0000a","key":null,"rejected_at":5}'
    )
    letter = decode_dead_letter(raw)
    assert letter.version == 1 and letter.original == b"\xff\x00a" and letter.original_len == 3
