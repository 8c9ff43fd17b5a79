"""Run reports: the per-epoch CSV log and ``curves.png`` (loss, validation metric, learning rate)."""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Mapping, Sequence
from typing import Any

from pipeline.io import atomic_write_bytes, atomic_write_text

__all__ = ["write_history", "plot_curves", "curves_figure", "METRIC_LABELS"]


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


METRIC_LABELS = {
    "dice": "Dice", "iou": "IoU", "hd95": "HD95 (mm)", "assd": "ASSD (mm)", "nsd": "NSD", "cldice": "clDice",
}  # fmt: skip
"""How a metric's axis is labelled (the column name otherwise)."""


def plot_curves(
    history: Sequence[Mapping[str, Any]], path: str | os.PathLike, metric: str = "dice", loss: str | None = None
) -> bool:
    """Draw training loss, the validation metric and learning rate against epoch.

    Uses matplotlib's object API (``Figure`` + the Agg canvas), never ``pyplot`` or
    ``matplotlib.use``, so the caller's backend (a notebook's) and open figures are untouched.

    Args:
        history: one mapping per epoch (``epoch``, ``train_loss``, ``lr``, ``w_<term>`` loss
            weights, ``val_<metric>`` and ``val_<metric>_<class>`` where validated).
        path: the PNG to write (atomically).
        metric: the validation metric's name (``train.val_metric``).
        loss: the loss's name (``loss.name``), shown on its axis with the terms' last weights.

    Returns:
        False without matplotlib, else True.
    """
    fig = curves_figure(history, metric, loss)
    if fig is None:
        return False
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    atomic_write_bytes(path, buf.getvalue())
    return True


def curves_figure(history: Sequence[Mapping[str, Any]], metric: str = "dice", loss: str | None = None):
    """The figure :func:`plot_curves` writes (None without matplotlib): every axis labelled with
    what it shows, integer epoch ticks, the mean metric thick and black, each class in its own
    colour and marker, thin."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
        from matplotlib.ticker import MaxNLocator
    except ImportError:
        return None
    column = f"val_{metric}"
    name = METRIC_LABELS.get(metric, metric)
    epochs = [r["epoch"] for r in history]
    fig = Figure(figsize=(13, 3.8))
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 3)
    axes[0].plot(epochs, [r.get("train_loss") for r in history], color="tab:blue", marker=".")
    weights = {k[2:]: v for k, v in (history[-1] if history else {}).items() if k.startswith("w_")}
    terms = " + ".join(f"{v:.2g}·{k}" for k, v in weights.items())
    axes[0].set(title="training loss" + (f" = {terms}" if terms else ""), xlabel="epoch")
    axes[0].set_ylabel(f"{loss} loss" if loss else "loss")
    val = [(r["epoch"], r) for r in history if column in r]
    if val:
        prefix = f"{column}_"
        per_class = sorted({k for _, r in val for k in r if k.startswith(prefix)}, key=lambda k: int(k[len(prefix) :]))
        colours = ("tab:orange", "tab:blue", "tab:green", "tab:red", "tab:purple", "tab:brown", "tab:pink", "tab:cyan")
        markers = ("s", "^", "v", "D", "P", "X", "<", ">")
        if len(per_class) > 1:  # one class: its line is the mean
            for i, k in enumerate(per_class):
                axes[1].plot(
                    [e for e, _ in val], [r.get(k) for _, r in val], color=colours[i % len(colours)],
                    marker=markers[i % len(markers)], markersize=4, linewidth=1.2, linestyle="--",
                    label=f"class {k[len(prefix) :]}",
                )  # fmt: skip
        axes[1].plot([e for e, _ in val], [r[column] for _, r in val], color="black", linewidth=2.8, marker="o",
                     label="mean over classes")  # fmt: skip
        axes[1].legend(fontsize=8)
    axes[1].set(title=f"validation {name}", xlabel="epoch", ylabel=f"{name} (validation)")
    shown = [v for _, r in val for k, v in r.items() if k.startswith(column) and isinstance(v, (int, float))]
    if shown and all(0 <= v <= 1 for v in shown):  # a score (Dice...), not a distance
        axes[1].set_ylim(0, 1.02)
    rates = [r.get("lr") for r in history]
    axes[2].plot(epochs, rates, color="tab:green", marker=".")
    axes[2].set(title="learning rate", xlabel="epoch", ylabel="learning rate")
    positive = [v for v in rates if isinstance(v, (int, float)) and v > 0]
    if positive and max(positive) / min(positive) > 20:
        axes[2].set_yscale("log")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
    fig.tight_layout()
    return fig
