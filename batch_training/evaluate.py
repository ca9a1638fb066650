"""Offline evaluation: every scorer (GRU4Rec, a served artifact, the baselines) goes through
the same session-parallel loop, so the protocols cannot drift apart between models.

Two protocols:
- full ranking: the next item at every evaluated position (>= EvalData.eval_from) of every
  session, ranked among all items; recall/MRR/NDCG at the cut-offs.
- sampled: each session's last item ranked among itself and its 99 given negatives
  (EvalData.negatives); HR/NDCG at 5 and 10, as in the paper this project started from.
Ties are counted against the model in both (see schemas.metrics).

The loop is training's session-parallel iterator (batch_training.lanes): B lanes, each step
feeds one item per lane and scores the next; a lane whose session ends takes the next session
and its state row is reset. Sessions are dealt longest first so the lanes drain together.
Memory is one (B, n_items) score block at a time.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
from tqdm import tqdm

from batch_training.lanes import fixed_rows, session_parallel_batches
from batch_training.metrics import ranks_among_candidates, ranks_from_scores
from schemas.artifact import Artifact
from schemas.metrics import MetricAccumulator
from scoring import ServingModel

log = logging.getLogger(__name__)

FULL_KS = (1, 5, 10, 20)
SAMPLED_KS = (5, 10)


@runtime_checkable
class SessionScorer(Protocol):
    """A recommender seen as a per-lane state machine over item indices."""

    n_items: int

    def init_state(self, batch_size: int) -> Any: ...

    def step(self, state: Any, items: torch.Tensor) -> tuple[Any, torch.Tensor]:
        """Feed items (B,) long; return the new state and next-item scores (B, n_items)."""
        ...

    def reset(self, state: Any, mask: torch.Tensor) -> Any:
        """Return the state with the rows where mask (B,) bool is True back at the start."""
        ...


# Optional, used when present: `advance(state, items) -> state` feeds without scoring, and
# `score_rows(state, rows) -> (R, n_items)` scores some lanes of an advanced state; together
# they spare the full (B, n_items) product on steps where few lanes have a target.


def _device_of(scorer: SessionScorer) -> torch.device:
    return torch.device(getattr(scorer, "device", "cpu"))


def _advance(scorer: SessionScorer, state: Any, items: torch.Tensor) -> Any:
    """Feed items without needing scores; scorers may offer a cheaper `advance`."""
    advance = getattr(scorer, "advance", None)
    return advance(state, items) if advance is not None else scorer.step(state, items)[0]


class GRU4RecScorer:
    """SessionScorer over a trained `batch_training.model.GRU4Rec` (eval mode, no grad)."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.model = model.eval()
        self.n_items = int(model.n_items)
        self.device = next(model.parameters()).device

    def init_state(self, batch_size: int) -> list[torch.Tensor]:
        return [h.to(self.device) for h in self.model.init_hidden(batch_size)]

    @torch.no_grad()
    def advance(self, state: list[torch.Tensor], items: torch.Tensor) -> list[torch.Tensor]:
        return self.model.step(items.to(self.device), state)[1]

    @torch.no_grad()
    def step(
        self, state: list[torch.Tensor], items: torch.Tensor
    ) -> tuple[list[torch.Tensor], torch.Tensor]:
        output, state = self.model.step(items.to(self.device), state)
        return state, self.model.score_all(output)

    @torch.no_grad()
    def score_rows(self, state: list[torch.Tensor], rows: torch.Tensor) -> torch.Tensor:
        """Scores (R, n_items) of the given lanes only; in eval mode the output is the last
        layer's state."""
        return self.model.score_all(state[-1][rows])

    def reset(self, state: list[torch.Tensor], mask: torch.Tensor) -> list[torch.Tensor]:
        keep = (~mask.to(self.device)).unsqueeze(1).to(state[0].dtype)  # (B, 1)
        return [h * keep for h in state]


class ArtifactScorer:
    """SessionScorer over an artifact through the scoring core (`scoring.ServingModel`): the
    worker's own GRU step and score formula, so this evaluates exactly what a worker serves.

    The state is the core's float32 array (B, n_layers, H_max) on the CPU; an item index of
    -1 leaves its lane unchanged (the serving rule). Scores come back as CPU tensors.
    """

    device = torch.device("cpu")

    def __init__(self, artifact: Artifact) -> None:
        # No FAISS index: evaluation ranks every item, it never searches a top-K.
        self.model = ServingModel.from_artifact(artifact, search_index=False)
        self.manifest = artifact.manifest
        self.n_items = self.model.n_items

    def init_state(self, batch_size: int) -> np.ndarray:
        return self.model.initial_state(batch_size)

    def advance(self, state: np.ndarray, items: torch.Tensor) -> np.ndarray:
        return self.model.step(state, items.cpu().numpy())

    def step(self, state: np.ndarray, items: torch.Tensor) -> tuple[np.ndarray, torch.Tensor]:
        state = self.advance(state, items)
        return state, torch.from_numpy(self.model.scores(state))

    def score_rows(self, state: np.ndarray, rows: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(self.model.scores(state[rows.cpu().numpy()]))

    def reset(self, state: np.ndarray, mask: torch.Tensor) -> np.ndarray:
        state = state.copy()
        state[mask.cpu().numpy()] = 0.0  # an all-zero row is the start of a session
        return state


def _run_lanes(
    scorer: SessionScorer,
    items: np.ndarray,
    offsets: np.ndarray,
    first_target: np.ndarray,
    batch_size: int,
    desc: str,
    progress: bool,
) -> Iterator[tuple[np.ndarray, torch.Tensor, torch.Tensor]]:
    """Yield (session indices (M,), target items (M,), scores (M, n_items)) for every target
    position p >= first_target[s] of every session s, p counted from 0 within the session."""
    device = _device_of(scorer)
    score_rows = getattr(scorer, "score_rows", None)
    lengths = np.diff(offsets)
    todo = np.flatnonzero((first_target >= 1) & (first_target < lengths))
    todo = todo[np.argsort(-lengths[todo], kind="stable")]  # longest first: lanes drain evenly
    n_inputs = int((lengths[todo] - 1).sum())
    lanes = min(batch_size, len(todo))
    if lanes == 0:
        return
    # The training iterator over the sessions in `todo` order; the scorer's state keeps
    # `lanes` fixed rows (it can only reset rows), rows of dropped lanes are fed item 0.
    steps = session_parallel_batches(items, offsets[todo], offsets[todo + 1], lanes)
    state = scorer.init_state(lanes)
    feed = np.zeros(lanes, dtype=np.int64)
    bar = tqdm(total=n_inputs, desc=desc, unit="click", disable=not progress, leave=False)
    for i, (step, rows) in enumerate(fixed_rows(steps, lanes)):
        if i > 0 and step.reset.any():  # the first step's state is fresh already
            reset = np.zeros(lanes, dtype=bool)
            reset[rows[step.reset]] = True
            state = scorer.reset(state, torch.as_tensor(reset, device=device))
        sessions = todo[step.sessions]
        feed[:] = 0
        feed[rows] = step.inputs
        feed_t = torch.as_tensor(feed).to(device)
        evaluated = step.positions - offsets[sessions] + 1 >= first_target[sessions]
        if evaluated.any():
            rows_t = torch.as_tensor(rows[evaluated], device=device)
            if score_rows is not None:  # score only the lanes that have a target here
                state = _advance(scorer, state, feed_t)
                scores = score_rows(state, rows_t)
            else:
                state, scores = scorer.step(state, feed_t)
                scores = scores[rows_t]
            targets = torch.as_tensor(step.targets[evaluated]).to(device)
            yield sessions[evaluated], targets, scores
        else:
            state = _advance(scorer, state, feed_t)
        bar.update(len(rows))
    bar.close()


def _first_targets(data: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    sessions = data.sessions
    items = np.asarray(sessions.items, dtype=np.int64)
    offsets = np.asarray(sessions.offsets, dtype=np.int64)
    eval_from = np.asarray(data.eval_from, dtype=np.int64)
    if eval_from.shape != (len(offsets) - 1,):
        raise ValueError(f"eval_from has shape {eval_from.shape}, expected ({len(offsets) - 1},)")
    return items, offsets, np.maximum(eval_from, 1)


def evaluate_full(
    scorer: SessionScorer,
    data: Any,
    ks: Sequence[int] = FULL_KS,
    batch_size: int = 256,
    *,
    progress: bool = True,
) -> dict[str, float]:
    """Full-ranking recall/MRR/NDCG@k of the next item at every evaluated position."""
    items, offsets, first_target = _first_targets(data)
    acc = MetricAccumulator(ks)
    for _, targets, scores in _run_lanes(
        scorer, items, offsets, first_target, batch_size, "evaluate (full)", progress
    ):
        acc.add(ranks_from_scores(scores, targets).cpu().numpy())
    return acc.result()


def evaluate_sampled(
    scorer: SessionScorer,
    data: Any,
    ks: Sequence[int] = SAMPLED_KS,
    batch_size: int = 256,
    *,
    progress: bool = True,
) -> dict[str, float]:
    """Each evaluated session's last item ranked among itself and its given negatives.

    Negatives < 0 (unknown to the scorer) and negatives equal to the target are left out,
    so a row may compete against fewer than 99; all others are used exactly as given.
    """
    if data.negatives is None:
        raise ValueError("the sampled protocol needs EvalData.negatives; this split has none")
    items, offsets, first_target = _first_targets(data)
    negatives = torch.as_tensor(np.asarray(data.negatives, dtype=np.int64))
    if negatives.ndim != 2 or negatives.shape[0] != len(offsets) - 1:
        raise ValueError(f"negatives has shape {tuple(negatives.shape)}, expected (n_sessions, C)")
    lengths = np.diff(offsets)
    # only the last target; sessions with nothing to evaluate keep first_target past their end
    last_only = np.where(first_target < lengths, lengths - 1, lengths)
    acc = MetricAccumulator(ks, include_hr=True)
    for sessions, targets, scores in _run_lanes(
        scorer, items, offsets, last_only, batch_size, "evaluate (sampled)", progress
    ):
        negs = negatives[torch.as_tensor(sessions)].to(scores.device)  # (M, C)
        negs = torch.where(negs == targets[:, None], -1, negs)
        candidates = torch.cat([targets[:, None], negs], dim=1)  # (M, 1 + C)
        acc.add(ranks_among_candidates(scores, candidates).cpu().numpy())
    return acc.result()


@dataclass(frozen=True)
class VocabMapping:
    """How many clicks of an evaluation set the target vocabulary did not know."""

    unknown_clicks: int
    unknown_targets: int
    unknown_negatives: int


def map_to_vocab(
    data: Any, source_ids: Sequence[str], target_index: Mapping[str, int]
) -> tuple[Any, VocabMapping]:
    """Re-express EvalData indexed by `source_ids` in another vocabulary (a model's).

    A click on an item the target vocabulary lacks is skipped: it is neither fed nor
    predicted, and the session goes on from the click before it. Unknown negatives become -1
    (left out by evaluate_sampled). Returns the new EvalData and the counts.
    """
    lookup = np.array([target_index.get(str(i), -1) for i in source_ids], dtype=np.int64)
    sessions = data.sessions
    mapped = lookup[np.asarray(sessions.items, dtype=np.int64)]
    offsets = np.asarray(sessions.offsets, dtype=np.int64)
    lengths = np.diff(offsets)
    session_of = np.repeat(np.arange(len(lengths)), lengths)
    position = np.arange(len(mapped)) - offsets[session_of]
    eval_from = np.asarray(data.eval_from, dtype=np.int64)
    was_target = position >= np.maximum(eval_from, 1)[session_of]
    known = mapped >= 0

    new_lengths = np.bincount(session_of[known], minlength=len(lengths))
    new_offsets = np.concatenate([[0], np.cumsum(new_lengths)]).astype(np.int64)
    # the evaluated positions stay a suffix: count the kept clicks before it
    kept_before = np.bincount(session_of[known & ~was_target], minlength=len(lengths))
    new_eval_from = np.maximum(kept_before, 1).astype(np.int64)

    negatives = data.negatives
    unknown_negatives = 0
    if negatives is not None:
        negatives = np.asarray(negatives, dtype=np.int64)
        valid = negatives >= 0
        negatives = np.where(valid, lookup[np.where(valid, negatives, 0)], -1)
        unknown_negatives = int((valid & (negatives < 0)).sum())

    new_sessions = type(sessions)(
        items=mapped[known],
        offsets=new_offsets,
        timestamps=np.asarray(sessions.timestamps)[known],
        session_ids=sessions.session_ids,
    )
    counts = VocabMapping(
        unknown_clicks=int((~known).sum()),
        unknown_targets=int((~known & was_target).sum()),
        unknown_negatives=unknown_negatives,
    )
    new_data = type(data)(sessions=new_sessions, eval_from=new_eval_from, negatives=negatives)
    return new_data, counts


def limit_history(data: Any, window: int) -> Any:
    """EvalData whose sessions keep at most `window` clicks before their first target.

    Matches a model trained on histories of at most `window` items (TrainConfig.max_history)
    under leave-one-out, where the first target is the only one. Later targets of a session
    with several still see the clicks before them that the cut left. window 0 = unchanged.
    """
    if window <= 0:
        return data
    sessions = data.sessions
    offsets = np.asarray(sessions.offsets, dtype=np.int64)
    eval_from = np.asarray(data.eval_from, dtype=np.int64)
    cut = np.maximum(eval_from - window, 0)  # clicks dropped at the start of each session
    if not cut.any():
        return data
    lengths = np.diff(offsets) - cut
    starts = offsets[:-1] + cut
    new_offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    rows = np.arange(new_offsets[-1]) + np.repeat(starts - new_offsets[:-1], lengths)
    new_sessions = type(sessions)(
        items=np.asarray(sessions.items)[rows],
        offsets=new_offsets,
        timestamps=np.asarray(sessions.timestamps)[rows],
        session_ids=sessions.session_ids,
    )
    return type(data)(sessions=new_sessions, eval_from=eval_from - cut, negatives=data.negatives)
