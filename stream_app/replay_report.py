"""Replay reports: tables for the terminal, the JSON report, a PNG bar chart."""

from __future__ import annotations

import os
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from stream_app.replay_live import LiveResult
from stream_app.replay_offline import ReplayResult, cutoffs


def range_text(start: int | None, end: int | None) -> str:
    """[start, end) as ISO 8601 UTC; ... for an open end."""

    def show(ms: int | None) -> str:
        if ms is None:
            return "..."
        return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="seconds")

    return f"[{show(start)}, {show(end)})"


def format_table(results: Sequence[ReplayResult]) -> str:
    """Models as columns, metrics as rows."""
    if not results:
        return "(no models)"
    names = [f"recall@{c}" for c in cutoffs(results[0].k)]
    names += [f"mrr@{c}" for c in cutoffs(results[0].k)]
    names += [f"ndcg@{c}" for c in cutoffs(results[0].k)]
    width = max(12, *(len(r.version) + 2 for r in results))
    lines = ["metric".ljust(14) + "".join(r.version.rjust(width) for r in results)]
    for name in names:
        lines.append(
            name.ljust(14) + "".join(f"{r.metrics[name]:.4f}".rjust(width) for r in results)
        )
    rows = [
        ("coverage", lambda r: f"{r.coverage:.4f}"),
        ("examples", lambda r: str(r.n_examples)),
        ("unknown tgt", lambda r: str(r.n_unknown_targets)),
    ]
    for label, cell in rows:
        lines.append(label.ljust(14) + "".join(cell(r).rjust(width) for r in results))
    return "\n".join(lines)


def write_png(results: Sequence[ReplayResult], path: str | os.PathLike[str], title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    k = results[0].k
    names = [f"recall@{k}", f"mrr@{k}", f"ndcg@{k}", "coverage"]
    x = np.arange(len(names))
    width = 0.8 / len(results)
    fig, ax = plt.subplots(figsize=(2 + 1.6 * len(names), 4))
    for i, r in enumerate(results):
        values = [r.metrics[n] for n in names[:-1]] + [r.coverage]
        bars = ax.bar(x + i * width - 0.4 + width / 2, values, width, label=r.version)
        ax.bar_label(bars, fmt="%.3f", fontsize=7)
    ax.set_xticks(x, names)
    ax.set_ylim(0, 1.05)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def format_live_table(results: Sequence[LiveResult], k: int) -> str:
    head = (
        f"{'model':<10}{'answers':>9}{f'recall@{k}':>11}{f'mrr@{k}':>9}{f'ndcg@{k}':>9}"
        f"{'p50 ms':>8}{'p95 ms':>8}{'max ms':>8}"
    )
    lines = [head]
    for result in results:
        for version, s in result.stats.items():
            m = s.metrics
            lines.append(
                f"{version:<10}{s.answers:>9}{m[f'recall@{k}']:>11.4f}{m[f'mrr@{k}']:>9.4f}"
                f"{m[f'ndcg@{k}']:>9.4f}{s.latency(50):>8.0f}{s.latency(95):>8.0f}"
                f"{max(s.latencies_ms, default=0):>8.0f}"
            )
        if result.answered < result.sent:
            lines.append(f"  ({result.sent - result.answered} clicks unanswered in time)")
    return "\n".join(lines)


def write_json(
    path: str | os.PathLike[str],
    offline: Sequence[ReplayResult],
    live: Sequence[LiveResult],
    *,
    rate: float,
    **header: Any,
) -> None:
    """The report: `header` fields (topic, range, counts, rules), then the models and the
    live runs (sent at `rate` clicks per second)."""
    report = {
        **header,
        "models": [r.to_dict() for r in offline],
        "live": [
            {
                "source": r.source,
                "sent": r.sent,
                "answered": r.answered,
                "rate": rate,
                "versions": {
                    v: {
                        "answers": s.answers,
                        "metrics": s.metrics,
                        "latency_ms": {"p50": s.latency(50), "p95": s.latency(95)},
                    }
                    for v, s in r.stats.items()
                },
            }
            for r in live
        ],
    }
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2))
