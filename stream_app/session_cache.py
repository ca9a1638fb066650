"""The sessions this worker wrote last, kept decoded in memory in front of the table.

A session is read back by the batch that holds its next click, most often seconds after it
was written. Reading it from RocksDB and decoding it again (JSON header, hidden state) cost
about a sixth of a worker's event loop at 5,000 clicks/s (py-spy, `bench_stream.py`). The
cache keeps the `SessionState` objects a batch wrote, so the next batch takes them as they
are; RocksDB and the changelog are still written for every batch, so recovery is unchanged.

It is only right while this worker is the sessions' only writer, which holds within one
consumer generation: a rebalance may move a partition away and back, restored from a
changelog that another worker extended meanwhile. So the cache empties itself when the
consumer generation changes, and the worker evicts what it deletes (expiry) or does not
write (a session too large for a record).

Objects handed out are the cached ones, not copies: the core advances a session in place
and the batch writes it back, which leaves the cache as the table is. A batch that fails
between the two stops the worker (`WorkerRuntime.stop_worker`), cache and all.
"""

from __future__ import annotations

from collections.abc import Iterable

from stream_app.sessions import SessionState


class SessionCache:
    """Up to `capacity` sessions by id, the least recently written dropped first."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._sessions: dict[str, SessionState] = {}  # in order of last write
        self._generation: int | None = None

    def __len__(self) -> int:
        return len(self._sessions)

    def lookup(self, generation: int, session_ids: Iterable[str]) -> dict[str, SessionState]:
        """The cached sessions among `session_ids`, read under consumer `generation`."""
        if generation != self._generation:
            self._sessions.clear()
            self._generation = generation
        sessions = self._sessions
        return {sid: sessions[sid] for sid in session_ids if sid in sessions}

    def store(self, session_id: str, session: SessionState) -> None:
        """Remember a session as just written (it becomes the most recent)."""
        if self.capacity <= 0:
            return
        sessions = self._sessions
        sessions.pop(session_id, None)  # re-inserted at the end: written last
        sessions[session_id] = session
        if len(sessions) > self.capacity:
            del sessions[next(iter(sessions))]

    def evict(self, session_id: str) -> None:
        self._sessions.pop(session_id, None)
