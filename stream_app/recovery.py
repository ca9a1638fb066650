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
"""

from __future__ import annotations

from faust.tables import TableManager
from faust.tables.recovery import Recovery


class SeekBeforeFlowRecovery(Recovery):
    async def on_recovery_completed(self, generation_id: int = 0) -> None:
        self.app.consumer.stop_flow()
        self.app.flow_control.suspend()
        await super().on_recovery_completed(generation_id)


class SafeTableManager(TableManager):
    """Faust's table manager with `SeekBeforeFlowRecovery` (pass as `TableManager=`)."""

    @property
    def recovery(self) -> Recovery:
        if self._recovery is None:
            self._recovery = SeekBeforeFlowRecovery(
                self.app, self, beacon=self.beacon, loop=self.loop
            )
        return self._recovery
