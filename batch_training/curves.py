"""Training curves (loss, validation metric, speed per epoch) as a PNG."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def plot_history(history: list[dict[str, Any]], path: str | Path) -> Path:
    """Training curves (loss, validation metric, events/s per epoch) to a PNG."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    epochs = [h["epoch"] for h in history]
    fig = Figure(figsize=(10, 3.2), layout="constrained")
    FigureCanvasAgg(fig)
    ax_loss, ax_valid, ax_speed = fig.subplots(1, 3)
    ax_loss.plot(epochs, [h["loss"] for h in history], marker="o")
    ax_loss.set(title="training loss", xlabel="epoch")
    valid = [(h["epoch"], h["valid"]) for h in history if h.get("valid") is not None]
    if valid:
        ax_valid.plot(*zip(*valid, strict=True), marker="o", color="tab:green")
    else:  # a split without a validation set (e.g. Diginetica's): fixed epochs
        ax_valid.text(0.5, 0.5, "no validation set", ha="center", va="center", color="gray")
        ax_valid.set(xticks=[], yticks=[])
    ax_valid.set(title="validation metric", xlabel="epoch")
    ax_speed.bar(epochs, [h["events_per_s"] for h in history], color="tab:gray")
    ax_speed.set(title="events / s", xlabel="epoch")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    return path
