"""SplitOptions: how a dataset becomes a split (defaults differ by dataset kind).

Slices for tests: `max_sessions` keeps the most recent sessions of a log before splitting (for
Diginetica, the most recent training sessions and the first test sessions), or the first users
of a user-sequence dataset; `fraction` keeps that share instead.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any


@dataclass(frozen=True)
class SplitOptions:
    """How a dataset becomes a split. None means the dataset's own default (see
    `batch_training.splits`)."""

    drop_repeats: bool | None = None  # logs: True; user sequences: False
    min_session_length: int | None = None  # logs: 2
    min_item_support: int | None = None  # logs: 5 (GRU4Rec's preprocessing)
    test_days: float = 1.0  # logs: sessions starting in the last test_days are test
    valid_days: float = 0.0  # logs, diginetica: last valid_days of train are validation
    leave_one_out_valid: bool = True  # user sequences: second-to-last item as validation
    max_sessions: int | None = None  # small slices for tests (see module doc)
    fraction: float | None = None  # share of sessions/users kept, in (0, 1]
    n_negatives: int = 99  # sampled protocol; 0 = none
    seed: int = 0

    def __post_init__(self) -> None:
        if self.fraction is not None and not 0 < self.fraction <= 1:
            raise ValueError(f"fraction must be in (0, 1], got {self.fraction}")
        if self.max_sessions is not None and self.max_sessions < 1:
            raise ValueError(f"max_sessions must be >= 1, got {self.max_sessions}")
        if self.test_days <= 0 or self.valid_days < 0:
            raise ValueError("test_days must be > 0 and valid_days >= 0")
        if self.n_negatives < 0:
            raise ValueError("n_negatives must be >= 0")

    @classmethod
    def from_kwargs(cls, **options: Any) -> SplitOptions:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(options) - known)
        if unknown:
            raise TypeError(f"unknown split option(s) {unknown}; known: {sorted(known)}")
        return cls(**options)

    def preprocessing_given(self) -> bool:
        return any(
            v is not None
            for v in (self.drop_repeats, self.min_session_length, self.min_item_support)
        )

    def for_logs(self) -> SplitOptions:
        return replace(
            self,
            drop_repeats=True if self.drop_repeats is None else self.drop_repeats,
            min_session_length=2 if self.min_session_length is None else self.min_session_length,
            min_item_support=5 if self.min_item_support is None else self.min_item_support,
        )

    def for_sequences(self) -> SplitOptions:
        return replace(
            self,
            drop_repeats=bool(self.drop_repeats),
            min_session_length=self.min_session_length or 1,
            min_item_support=self.min_item_support or 1,
        )

    def slice_size(self, n: int) -> int:
        """How many of n sessions/users a slice keeps."""
        keep = n if self.fraction is None else max(1, int(round(n * self.fraction)))
        return keep if self.max_sessions is None else min(keep, self.max_sessions)
