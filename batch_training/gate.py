"""The retraining gate: the promotion rule, the promoted model scored on the candidate's
vocabulary, and one run's report.

The candidate and the promoted model are evaluated on the same held-out slice with the same
`evaluate_full` code. The promoted model is read from its artifact, scored by the worker's
scoring core (`scoring`) and mapped onto the candidate's vocabulary: a click on an item it
does not know leaves its state unchanged (as when serving), and such a target is a miss for
it. The candidate is promoted when its primary metric (recall@20 of the full-ranking protocol)
is not worse than the promoted model's by more than `tolerance`, an ABSOLUTE difference:
candidate >= promoted - tolerance. With no promoted model yet, the candidate is promoted.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np
import torch

from batch_training.evaluate import ArtifactScorer
from schemas.artifact import Artifact

PRIMARY_METRIC = "recall@20"


class RetrainError(RuntimeError):
    """A run that cannot go on (no data, nothing to evaluate on); the message says why."""


def iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="seconds")


# --- the promoted model on the candidate's vocabulary ------------------------------------------


class MappedArtifactScorer:
    """The promoted model's artifact as a SessionScorer over the candidate's vocabulary.

    Scored by the scoring core (`ArtifactScorer`): an input item the artifact does not know
    maps to -1, which leaves the lane's state unchanged (the serving rule); an item it does
    not know scores -inf, so as a target it ranks last (ties count against the model) and
    never outranks anything.
    """

    device = ArtifactScorer.device

    def __init__(self, artifact: Artifact, candidate_ids: tuple[str, ...]) -> None:
        self.inner = ArtifactScorer(artifact)
        index = {item: i for i, item in enumerate(artifact.items)}
        mapping = np.array([index.get(str(i), -1) for i in candidate_ids], dtype=np.int64)
        self.n_items = len(mapping)
        self.n_unknown = int((mapping < 0).sum())
        self.mapping = mapping  # candidate -> served, -1 where unknown
        self.known = torch.as_tensor(mapping >= 0)
        self.gather = torch.as_tensor(np.where(mapping >= 0, mapping, 0))

    def init_state(self, batch_size: int) -> np.ndarray:
        return self.inner.init_state(batch_size)

    def advance(self, state: np.ndarray, items: torch.Tensor) -> np.ndarray:
        return self.inner.model.step(state, self.mapping[items.cpu().numpy()])

    def _on_candidate(self, served: torch.Tensor) -> torch.Tensor:
        """Served-vocabulary scores (B, n_served) -> candidate-vocabulary scores (B, n)."""
        return torch.where(self.known, served[:, self.gather], -torch.inf)

    def step(self, state: np.ndarray, items: torch.Tensor) -> tuple[np.ndarray, torch.Tensor]:
        state = self.advance(state, items)
        return state, self._on_candidate(torch.from_numpy(self.inner.model.scores(state)))

    def score_rows(self, state: np.ndarray, rows: torch.Tensor) -> torch.Tensor:
        return self._on_candidate(self.inner.score_rows(state, rows))

    def reset(self, state: np.ndarray, mask: torch.Tensor) -> np.ndarray:
        return self.inner.reset(state, mask)


@dataclass(frozen=True)
class RunReport:
    candidate: str
    decision: str  # "promoted" or "rejected"
    metrics: dict[str, float]
    baseline: str | None
    baseline_metrics: dict[str, float] | None
    n_events: int
    start_ms: int
    end_ms: int
    seconds: float
    published: bool

    def summary(self, primary: str, tolerance: float) -> str:
        cand = self.metrics.get(primary, float("nan"))
        if self.baseline is None:
            versus = "no promoted model yet"
        else:
            base = (self.baseline_metrics or {}).get(primary, float("nan"))
            versus = f"{self.baseline} {base:.4f} (tolerance {tolerance:g})"
        where = " and published" if self.published else ""
        return (
            f"retrain {self.candidate}: {primary} {cand:.4f} vs {versus} -> "
            f"{self.decision}{where}; {self.n_events} clicks "
            f"[{iso(self.start_ms)}, {iso(self.end_ms)}), {self.seconds:.0f} s"
        )


def decide(
    candidate: dict[str, float],
    baseline: dict[str, float] | None,
    *,
    primary: str = PRIMARY_METRIC,
    tolerance: float = 0.01,
) -> str:
    """The promotion rule: promoted when candidate >= baseline - tolerance on `primary`
    (an absolute difference), or when there is no baseline; "rejected" otherwise."""
    if primary not in candidate:
        raise RetrainError(f"candidate metrics lack the primary metric {primary!r}")
    if baseline is None:
        return "promoted"
    return "promoted" if candidate[primary] >= baseline[primary] - tolerance else "rejected"
