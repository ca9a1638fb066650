"""The session-parallel iterator shared by training and evaluation (Hidasi et al., 2016).

`batch_size` lanes each walk one session, in the order given. At every step a lane feeds its
current item and is scored on the next one. When a lane's session ends the next unused
session takes the lane, and the lane's state must be zeroed at exactly that step (`reset`).
When no unused session is left, finished lanes are dropped (`keep`) and the batch shrinks, so
every click of every session is a target exactly once.

Training (batch_training.train) re-indexes its hidden state with `advance_lanes`; evaluation
(batch_training.evaluate) drives scorers whose state can only be reset, so it follows the
lanes on fixed state rows with `fixed_rows`. Both walk sessions through this one loop, so the
two cannot drift apart.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor


def session_bounds(offsets: np.ndarray, max_history: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(starts, ends) of the sessions that have a target (>= 2 clicks), in data order.

    With max_history = L > 0 a session is cut into pieces [s, s+L], [s+L, s+2L], ...: the
    last click of a piece is the first input of the next, so every click is still a target
    exactly once, and no target sees more than L earlier clicks of its session.
    """
    offsets = np.asarray(offsets, dtype=np.int64)
    starts, ends = offsets[:-1], offsets[1:]
    usable = ends - starts >= 2
    starts, ends = starts[usable], ends[usable]
    if max_history <= 0:
        return starts.copy(), ends.copy()
    # Piece k of a session covers inputs s + kL ... and ends one past its last target.
    n_pieces = (ends - starts - 2) // max_history + 1
    session = np.repeat(np.arange(len(starts)), n_pieces)
    first = np.cumsum(n_pieces) - n_pieces
    k = np.arange(len(session)) - np.repeat(first, n_pieces)
    piece_starts = starts[session] + k * max_history
    piece_ends = np.minimum(piece_starts + max_history + 1, ends[session])
    return piece_starts, piece_ends


@dataclass(frozen=True)
class SessionStep:
    """One mini-batch step; arrays are per lane after applying `keep`."""

    inputs: np.ndarray  # int64 (B,) item fed to each lane
    targets: np.ndarray  # int64 (B,) the item that follows it
    keep: np.ndarray | None  # previous step's lanes that go on, in order; None = all of them
    reset: np.ndarray  # bool (B,) the lane starts a new session here: zero its hidden state
    sessions: np.ndarray  # int64 (B,) which session (index into starts/ends) each lane walks
    positions: np.ndarray  # int64 (B,) where `inputs` sit in the flat click array


def session_parallel_batches(
    items: np.ndarray,
    starts: np.ndarray,
    ends: np.ndarray,
    batch_size: int,
    *,
    min_lanes: int = 1,
) -> Iterator[SessionStep]:
    """Walk sessions [starts[s], ends[s]) of `items` in parallel lanes (each >= 2 clicks).

    Stops when fewer than `min_lanes` lanes are left (the authors stop at 2 without sampled
    negatives, since a lone lane has no in-batch negative).
    """
    n_sessions = len(starts)
    n_lanes = min(batch_size, n_sessions)
    sessions = np.arange(n_lanes)
    pos = np.asarray(starts[:n_lanes], dtype=np.int64).copy()
    end = np.asarray(ends[:n_lanes], dtype=np.int64).copy()
    next_session = n_lanes
    reset = np.ones(n_lanes, dtype=bool)
    keep: np.ndarray | None = None
    while len(pos) >= max(1, min_lanes):
        yield SessionStep(items[pos], items[pos + 1], keep, reset, sessions.copy(), pos.copy())
        pos = pos + 1
        finished = pos + 1 >= end
        reset, keep = finished, None
        if not finished.any():
            continue
        done = np.flatnonzero(finished)
        n_new = min(len(done), n_sessions - next_session)
        refill, new = done[:n_new], np.arange(next_session, next_session + n_new)
        sessions[refill], pos[refill], end[refill] = new, starts[new], ends[new]
        next_session += n_new
        if n_new < len(done):
            alive = np.ones(len(pos), dtype=bool)
            alive[done[n_new:]] = False
            keep = np.flatnonzero(alive)
            sessions, pos, end, reset = sessions[keep], pos[keep], end[keep], reset[keep]


def advance_lanes(hidden: list[Tensor], step: SessionStep) -> list[Tensor]:
    """Apply a step's lane changes to the hidden state: drop ended lanes, zero new ones."""
    if step.keep is not None:
        keep = torch.from_numpy(step.keep).to(hidden[0].device)
        hidden = [h.index_select(0, keep) for h in hidden]
    if step.reset.any():
        reset = torch.from_numpy(step.reset).to(hidden[0].device)[:, None]  # (B, 1)
        hidden = [h.masked_fill(reset, 0.0) for h in hidden]
    return hidden


def fixed_rows(
    steps: Iterator[SessionStep], n_rows: int
) -> Iterator[tuple[SessionStep, np.ndarray]]:
    """Pair each step with the state rows (B,) its lanes live on, out of `n_rows` fixed rows.

    For states that cannot drop rows (a SessionScorer only offers `reset`): a dropped lane's
    row stays, unused, and the lanes that go on keep their rows.
    """
    rows = np.arange(n_rows)
    for step in steps:
        if step.keep is not None:
            rows = rows[step.keep]
        yield step, rows
