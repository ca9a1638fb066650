"""Preprocessing of session logs: drop immediate repeats, short sessions and rare items."""

from __future__ import annotations

import numpy as np

from batch_training.options import SplitOptions
from batch_training.sessions import keep_clicks
from readers.columns import Sequences, factorize


def drop_immediate_repeats(seqs: Sequences) -> Sequences:
    """Remove a click on the same item as the click just before it in the same session."""
    items = seqs.item_ids
    same = np.zeros(len(items), dtype=bool)
    if len(items) > 1:
        same[1:] = items[1:] == items[:-1]
    same[seqs.offsets[:-1][seqs.lengths > 0]] = False  # a session's first click always stays
    return keep_clicks(seqs, ~same)


def filter_support(
    seqs: Sequences,
    *,
    min_session_length: int,
    min_item_support: int,
    drop_repeats: bool = False,
) -> Sequences:
    """Drop short sessions and rare items repeatedly until both hold (a fixed point).

    With `drop_repeats`, a click that removals have made an immediate repeat (A X A with X
    rare becomes A A) is dropped too, so the result has no immediate repeats either.
    """
    item_codes = factorize(seqs.item_ids)
    seq_of = np.repeat(np.arange(len(seqs), dtype=np.int64), seqs.lengths)
    keep = np.ones(len(item_codes), dtype=bool)
    n_items = int(item_codes.max()) + 1 if len(item_codes) else 0
    while True:
        new_keep = keep.copy()
        if drop_repeats:
            kept = np.flatnonzero(keep)
            repeat = (item_codes[kept[1:]] == item_codes[kept[:-1]]) & (
                seq_of[kept[1:]] == seq_of[kept[:-1]]
            )
            new_keep[kept[1:][repeat]] = False
        session_len = np.bincount(seq_of[new_keep], minlength=len(seqs))
        support = np.bincount(item_codes[new_keep], minlength=n_items)
        new_keep &= (session_len[seq_of] >= min_session_length) & (
            support[item_codes] >= min_item_support
        )
        if new_keep.sum() == keep.sum():
            break
        keep = new_keep
    return keep_clicks(seqs, keep)


def preprocess(seqs: Sequences, options: SplitOptions) -> Sequences:
    """Drop immediate repeats, then filter sessions and items to a fixed point (see above)."""
    if options.drop_repeats:
        seqs = drop_immediate_repeats(seqs)
    return filter_support(
        seqs,
        min_session_length=options.min_session_length or 1,
        min_item_support=options.min_item_support or 1,
        drop_repeats=bool(options.drop_repeats),
    )
