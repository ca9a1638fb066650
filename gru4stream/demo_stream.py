"""The demo's live traffic: held-out users as interleaved sessions, and a few of the
answers they got, with movie titles."""

from __future__ import annotations

import contextlib
import gzip
from collections import defaultdict

import numpy as np

from schemas.events import Recommendation
from stream_app.replay_live import SentClick

DATASET = "movielens-1m"


def held_out_sessions(n_users: int, max_clicks: int, skip_users: int) -> list[tuple[str, list]]:
    """The last `n_users` users of the dataset (never trained on), first clicks of each."""
    from readers.registry import read_user_sequences

    seqs = read_user_sequences(DATASET)
    first = max(len(seqs) - n_users, skip_users)
    if first >= len(seqs):
        raise ValueError(f"no users left to stream after the {skip_users} trained on")
    return [
        (f"user-{seqs.session_ids[s]}", [str(i) for i in seqs.items_of(s)[:max_clicks]])
        for s in range(first, len(seqs))
    ]


def interleave(sessions: list[tuple[str, list[str]]], seed: int = 0) -> list[tuple[str, str]]:
    """One click stream from many sessions: at each step a random open session clicks next,
    so sessions overlap in time as live ones do; each session keeps its own order."""
    rng = np.random.default_rng(seed)
    remaining = [len(items) for _, items in sessions]
    position = [0] * len(sessions)
    stream = []
    open_ = [s for s, n in enumerate(remaining) if n]
    weights = np.array(remaining, dtype=np.float64)
    while open_:
        s = int(rng.choice(open_, p=weights[open_] / weights[open_].sum()))
        stream.append((sessions[s][0], sessions[s][1][position[s]]))
        position[s] += 1
        if position[s] == len(sessions[s][1]):
            open_.remove(s)
    return stream


# --- output -------------------------------------------------------------------------------------


def movie_titles() -> dict[str, str]:
    from readers.paths import datasets_root

    path = datasets_root() / DATASET / "movies.dat.gz"
    titles = {}
    with contextlib.suppress(OSError), gzip.open(path, "rt", encoding="latin-1") as f:
        for line in f:
            movie_id, title, _ = line.rstrip("\n").split("::", 2)
            titles[movie_id] = title
    return titles


def sample_lines(
    sent: list[SentClick], answers: list[Recommendation], k: int, n: int = 2
) -> list[str]:
    """A few answers, per version, whose next click was among the top 5, with titles."""
    titles = movie_titles()
    name = titles.get
    by_click = {(c.partition, c.offset): i for i, c in enumerate(sent)}
    history: dict[str, list[str]] = defaultdict(list)
    seen_at: list[list[str]] = []
    for click in sent:
        history[click.session_id].append(click.item_id)
        seen_at.append(list(history[click.session_id]))
    nxt: dict[int, str] = {}
    last: dict[str, int] = {}
    for i, click in enumerate(sent):
        if click.session_id in last:
            nxt[last[click.session_id]] = click.item_id
        last[click.session_id] = i
    shown: dict[str, int] = defaultdict(int)
    lines = []
    for rec in sorted(answers, key=lambda r: (r.model_version, r.click_offset)):
        i = by_click.get((rec.click_partition, rec.click_offset))
        top = [x.item_id for x in rec.items[:5]]
        if i is None or nxt.get(i) not in top or shown[rec.model_version] >= n:
            continue
        shown[rec.model_version] += 1
        recent = " | ".join(name(m, m) for m in seen_at[i][-3:])
        lines.append(f"  {rec.session_id} ({rec.model_version}) just watched: {recent}")
        for rank, item in enumerate(top, 1):
            mark = "  <- watched next" if item == nxt[i] else ""
            lines.append(f"      {rank}. {name(item, item)}{mark}")
    return lines
