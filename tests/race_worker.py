"""`python -m tests.race_worker [--plain-recovery] ARGS...`: a worker for the race test.

Test-only. It widens the window that stream_app/recovery.py closes: at the end of table
recovery, Faust's `Recovery.on_recovery_completed` resumes the `clicks` partitions, then
seeks them to their committed offsets, then resumes flow control (which empties the stream
queues). Here, every time:
- the seek made from inside `on_recovery_completed` first sleeps RACE_SEEK_DELAY_S (3 s),
  so a backlog of clicks waiting on the topic is fetched between the resume and the seek
  (with --plain-recovery, also until the first clicks were fetched: a loaded machine can
  take longer than that);
- the agent is busy with its first batch until recovery has ended (it waits before reading
  the model), and the stream queue holds 32 events (the worker's: 32,768), so the
  consumer's fetch loop is blocked on the full queue, in the middle of a fetch, when the
  seek resets its read offsets.
What Faust then does is the race: the queued events are thrown away when flow control
resumes, and the rest of the blocked fetch, read after the reset offsets, looks like newer
records after a gap, which Faust counts as acknowledged: those clicks are committed and
never answered. The fix stops the flow first, so nothing is fetched in the window.

`--plain-recovery` runs Faust's own `TableManager` (plain `Recovery`) instead of
`SafeTableManager`, to show the loss that the fix prevents.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import os
import sys

import faust
from faust.tables import TableManager
from faust.tables.recovery import Recovery
from faust.transport.consumer import Consumer

from stream_app.runtime import WorkerRuntime

log = logging.getLogger("race_worker")
DELAY_S = float(os.environ.get("RACE_SEEK_DELAY_S", "3"))
_ending_recovery: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "ending_recovery", default=False
)
_on_recovery_completed = Recovery.on_recovery_completed
_perform_seek = Consumer.perform_seek
_model_for_batch = WorkerRuntime.model_for_batch
_app_init = faust.App.__init__
_ended: asyncio.Event | None = None  # set once on_recovery_completed has returned
_wait_for_fetch = False  # with --plain-recovery


def _recovery_ended() -> asyncio.Event:
    global _ended
    if _ended is None:
        _ended = asyncio.Event()
    return _ended


async def on_recovery_completed(self: Recovery, generation_id: int = 0) -> None:
    # The seek runs in a task that `Recovery._wait` creates from here, so it sees this flag;
    # seeks from the fetcher's own task (flow stopped) are not slowed down.
    token = _ending_recovery.set(True)
    try:
        await _on_recovery_completed(self, generation_id)
    finally:
        _ending_recovery.reset(token)
        _recovery_ended().set()


async def perform_seek(self: Consumer) -> None:
    if _ending_recovery.get():
        log.warning("race test: the end-of-recovery seek waits %.1f s", DELAY_S)
        await asyncio.sleep(DELAY_S)
        # On a busy machine the first fetch of clicks can take longer than the delay. With
        # Faust's own recovery, wait for it (up to 10 s more), so the race does happen; with
        # the fix nothing is fetched in this window (the flow is stopped), so do not wait.
        deadline = asyncio.get_running_loop().time() + 10
        while _wait_for_fetch and not _clicks_read(self):
            if asyncio.get_running_loop().time() > deadline:
                break
            await asyncio.sleep(0.1)
        if _wait_for_fetch:
            await asyncio.sleep(0.5)  # until the full queue blocks the fetch loop
        log.warning("race test: read offsets before the seek %s", _read_offsets(self))
        log.warning("race test: clicks fetched before the seek: %s", _clicks_read(self))
    await _perform_seek(self)


def _read_offsets(consumer: Consumer) -> dict[str, int | None]:
    return {f"{tp.topic}:{tp.partition}": o for tp, o in consumer._read_offset.items()}


def _clicks_read(consumer: Consumer) -> bool:
    """Whether the consumer has read any record that is not a changelog's."""
    return any(
        o is not None and not tp.topic.endswith("-changelog")
        for tp, o in consumer._read_offset.items()
    )


async def model_for_batch(self: WorkerRuntime):
    await _recovery_ended().wait()  # busy with this batch until recovery has ended
    return await _model_for_batch(self)


def app_init(self: faust.App, *args, **kwargs) -> None:
    kwargs["stream_buffer_maxsize"] = 32  # in place of the worker's own size
    _app_init(self, *args, **kwargs)


def main(argv: list[str]) -> int:
    Recovery.on_recovery_completed = on_recovery_completed  # SeekBeforeFlowRecovery's super()
    Consumer.perform_seek = perform_seek
    WorkerRuntime.model_for_batch = model_for_batch
    faust.App.__init__ = app_init
    global _wait_for_fetch
    if "--plain-recovery" in argv:
        argv = [a for a in argv if a != "--plain-recovery"]
        _wait_for_fetch = True
        import stream_app.app

        stream_app.app.SafeTableManager = TableManager  # create_app reads it when called

    from stream_app.cli import worker_main

    return worker_main(argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
