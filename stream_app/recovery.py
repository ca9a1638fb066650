"""A fix for a click-losing race at the end of Faust's table recovery.

When a worker restores its tables from the changelog (a restart with a fresh disk, a
partition that moved after a crash), Faust keeps the consumer's flow running so it can read
the changelogs. At the end (`Recovery.on_recovery_completed`) it resumes the `clicks`
partitions, *then* seeks them to their committed offsets, *then* resumes flow control, and
resuming flow control empties every stream queue. Clicks fetched in that window are put in
the agent's queue and thrown away, while the consumer's read position already counts them
as read: the re-fetched copies are dropped as old, and a record from a fetch issued before
the seek makes Faust mark the whole range as a gap that counts as acknowledged. The offsets
are then committed with clicks that were never answered (seen with faust-streaming 0.15.3).

Stopping the flow first closes the window: nothing is delivered until the seek is done, a
fetch that returns meanwhile is discarded by Faust with a seek back to the committed
offsets, and the base method resumes the flow once the position is right.

aiokafka's `seek_to_committed` seeks only partitions whose committed offset is above 0, so a
partition with nothing committed yet (or 0) keeps the position of that discarded fetch and
its first clicks would be skipped. `perform_seek` is therefore widened, for the duration of
this step, to put such partitions back at their first offset (the worker's offset reset is
"earliest" unless told otherwise; with "latest" there is nothing to rewind).
"""

from __future__ import annotations

from faust.tables import TableManager
from faust.tables.recovery import Recovery


class SeekBeforeFlowRecovery(Recovery):
    async def on_recovery_completed(self, generation_id: int = 0) -> None:
        consumer = self.app.consumer
        consumer.stop_flow()
        self.app.flow_control.suspend()
        seek_committed = consumer.perform_seek

        async def seek_all() -> None:
            await seek_committed()
            await self._rewind_uncommitted()

        consumer.perform_seek = seek_all  # an instance attribute, removed right after
        try:
            await super().on_recovery_completed(generation_id)
        finally:
            del consumer.perform_seek

    async def _rewind_uncommitted(self) -> None:
        if self.app.conf.consumer_auto_offset_reset != "earliest":
            return
        consumer = self.app.consumer
        streams = [tp for tp in consumer.assignment() if not self._is_changelog_tp(tp)]
        committed = consumer._committed_offset  # filled by perform_seek: offsets above 0 only
        uncommitted = [tp for tp in streams if not committed.get(tp)]
        if uncommitted:
            first = await consumer.earliest_offsets(*uncommitted)
            # In the consumer's thread, as Faust's own recovery seeks: `consumer.seek` would
            # call the aiokafka consumer, which lives in that thread's loop, from this one.
            await consumer.seek_wait({tp: first[tp] for tp in uncommitted})


class SafeTableManager(TableManager):
    """Faust's table manager with `SeekBeforeFlowRecovery` (pass as `TableManager=`)."""

    @property
    def recovery(self) -> Recovery:
        if self._recovery is None:
            self._recovery = SeekBeforeFlowRecovery(
                self.app, self, beacon=self.beacon, loop=self.loop
            )
        return self._recovery
