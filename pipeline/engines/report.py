"""Run reports: the per-epoch CSV log and ``curves.png`` (loss, validation metric, learning rate)."""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Mapping, Sequence
from typing import Any

from pipeline.io import atomic_write_bytes, atomic_write_text

__all__ = ["write_history", "plot_curves"]


def write_history(history: Sequence[Mapping[str, Any]], path: str | os.PathLike) -> None:
    """Write one CSV row per epoch; columns are the union of keys in first-seen order."""
    columns: list[str] = []
    for row in history:
        columns.extend(k for k in row if k not in columns)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for row in history:
        writer.writerow({k: _fmt(v) for k, v in row.items()})
    atomic_write_text(path, buf.getvalue())


def _fmt(value: Any) -> Any:
    return f"{value:.6g}" if isinstance(value, float) else value


def plot_curves(history: Sequence[Mapping[str, Any]], path: str | os.PathLike, metric: str = "dice") -> bool:
    """Draw training loss, the validation metric and learning rate against epoch.

    Uses matplotlib's object API (``Figure`` + the Agg canvas), never ``pyplot`` or
    ``matplotlib.use``, so the caller's backend (a notebook's) and open figures are untouched.

    Args:
        history: one mapping per epoch (``epoch``, ``train_loss``, ``lr``, ``val_<metric>`` and
            ``val_<metric>_<class>`` where validated).
        path: the PNG to write (atomically).
        metric: the validation metric's name (``train.val_metric``).

    Returns:
        False without matplotlib, else True.
    """
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        return False
    column = f"val_{metric}"
    epochs = [r["epoch"] for r in history]
    fig = Figure(figsize=(13, 3.6))
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 3)
    axes[0].plot(epochs, [r.get("train_loss") for r in history], color="tab:blue")
    axes[0].set(title="training loss", xlabel="epoch")
    val = [(r["epoch"], r) for r in history if column in r]
    if val:
        prefix = f"{column}_"
        per_class = sorted({k for _, r in val for k in r if k.startswith(prefix)})
        for k in per_class:
            axes[1].plot([e for e, _ in val], [r.get(k) for _, r in val], marker=".", label=f"class {k[len(prefix) :]}")
        axes[1].plot([e for e, _ in val], [r[column] for _, r in val], "k-", marker="o", label="mean")
        axes[1].legend(fontsize=8)
    axes[1].set(title=f"validation {metric}", xlabel="epoch")
    shown = [v for _, r in val for k, v in r.items() if k.startswith(column) and isinstance(v, (int, float))]
    if shown and all(0 <= v <= 1 for v in shown):  # a score (Dice...), not a distance
        axes[1].set_ylim(0, 1)
    axes[2].plot(epochs, [r.get("lr") for r in history], color="tab:green")
    axes[2].set(title="learning rate", xlabel="epoch")
    for ax in axes:
        ax.grid(alpha=0.3)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    atomic_write_bytes(path, buf.getvalue())
    return True
