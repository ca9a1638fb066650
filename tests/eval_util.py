"""Small SessionData / EvalData builders for the evaluation tests."""

from __future__ import annotations

import numpy as np

from batch_training.sessions import EvalData, SessionData


def make_sessions(seqs: list[list[int]]) -> SessionData:
    lengths = [len(s) for s in seqs]
    items = np.array([i for s in seqs for i in s], dtype=np.int64)
    return SessionData(
        items=items,
        offsets=np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64),
        timestamps=np.arange(len(items), dtype=np.int64) * 1000,
        session_ids=np.array([f"s{k}" for k in range(len(seqs))], dtype=object),
    )


def make_eval(seqs, eval_from=None, negatives=None) -> EvalData:
    if eval_from is None:
        eval_from = np.ones(len(seqs), dtype=np.int64)
    return EvalData(
        sessions=make_sessions(seqs),
        eval_from=np.asarray(eval_from, dtype=np.int64),
        negatives=None if negatives is None else np.asarray(negatives, dtype=np.int64),
    )
