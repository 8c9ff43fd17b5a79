"""Pictures of a segmentation a person can read: the image in grey with true positives, false
positives and misses in three colour-blind-safe colours, per-image Dice, and for volumes three
orthogonal slices through the structure and its errors.

The colours are drawn on a greyscale version of the image (a colour fundus becomes grey), so no
colour of the image competes with them: sky blue for true positives, vermillion for false
positives, yellow for misses (Okabe & Ito's palette: distinct under the common colour-vision
deficiencies, and by lightness). A voxel of the wrong foreground class counts as a miss.

Orientation: :mod:`pipeline.io` reads 2D images as ``W H`` and volumes as ``X Y Z``; a 2D view is
the picture as stored (rows top to bottom), a volume's slices are rotated so the second axis of
the slice points up, as radiology viewers show them.
"""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.io import file_kind, read_image, read_label

__all__ = [
    "COLOURS",
    "CaseView",
    "load_case_view",
    "error_map",
    "dice_text",
    "focus_point",
    "compose",
    "overlay_figure",
    "png_bytes",
]

COLOURS = {
    "true positive": (86, 180, 233),  # sky blue
    "false positive": (213, 94, 0),  # vermillion
    "miss": (240, 228, 66),  # yellow
}
"""RGB of each error class (Okabe-Ito)."""

_CODES = {"true positive": 1, "false positive": 2, "miss": 3}


@dataclass
class CaseView:
    """One case as arrays in :mod:`pipeline.io`'s layout (``W H`` or ``X Y Z``).

    Attributes:
        case: the case id.
        grey: the image in grey, scaled to [0, 1] (1st-99th percentile); None without an image.
        truth / pred: class indices (0 background); None when absent.
        spacing: the label's voxel size (for the aspect of volume slices).
        fov: the field of view (DRIVE's mask) where the case is scored, None for all of it.
    """

    case: str
    grey: np.ndarray | None
    truth: np.ndarray | None
    pred: np.ndarray | None
    spacing: tuple[float, ...]
    fov: np.ndarray | None = None

    @property
    def shape(self) -> tuple[int, ...]:
        for a in (self.truth, self.pred, self.grey):
            if a is not None:
                return a.shape
        raise ValueError(f"case {self.case}: nothing to show")


def _grey(path: str | os.PathLike) -> np.ndarray:
    """An image file as one grey channel in [0, 1]: channels averaged (luminance-like for RGB),
    the 1st-99th percentile stretched, so contrast does not depend on the file's range."""
    data = np.asarray(read_image(path), dtype=np.float32)
    if file_kind(path) == "nifti" and data.shape[0] > 1:  # a multi-modal volume: its first modality
        data = data[:1]
    grey = data.mean(axis=0)
    while grey.ndim > 2 and grey.shape[-1] == 1:
        grey = grey[..., 0]
    finite = grey[np.isfinite(grey)]
    lo, hi = np.percentile(finite, [1, 99]) if finite.size else (0.0, 1.0)
    return np.clip((np.nan_to_num(grey) - lo) / max(hi - lo, 1e-6), 0, 1).astype(np.float32)


def load_case_view(
    case: str,
    image: str | os.PathLike | None,
    truth: str | os.PathLike | Sequence[str | os.PathLike] | None,
    pred: str | os.PathLike | None,
    label_values: Sequence[float] | None = None,
    fov: str | os.PathLike | None = None,
) -> CaseView:
    """Read a case's files; ``truth`` may be several masks (DSB2018: one per nucleus, joined as
    class 1). Raw label values become class indices with ``label_values`` (the run's table),
    else with the values of truth and prediction together, sorted.

    Raises:
        DataError: a file that cannot be read (from :mod:`pipeline.io`).
    """
    spacing: tuple[float, ...] = ()
    raw_truth = None
    if isinstance(truth, (list, tuple)):
        masks = [read_label(p).array > 0 for p in truth]
        raw_truth = np.any(masks, axis=0).astype(np.uint8) if masks else None
        label_values = [0, 1]
    elif truth is not None:
        lab = read_label(truth)
        raw_truth, spacing = lab.array, lab.spacing
    raw_pred = None
    if pred is not None and Path(pred).exists():
        p = read_label(pred)
        raw_pred, spacing = p.array, spacing or p.spacing
    present = [a for a in (raw_truth, raw_pred) if a is not None]
    values = sorted(label_values) if label_values else sorted(set().union(*(np.unique(a).tolist() for a in present)))
    if values and values[0] != 0:
        values = [0, *values]
    lookup = {v: i for i, v in enumerate(values)}

    def classes(a: np.ndarray | None) -> np.ndarray | None:
        if a is None:
            return None
        out = np.zeros(a.shape, np.uint8)
        for v in np.unique(a):
            out[a == v] = lookup.get(float(v), lookup.get(int(v), 0))
        return out

    grey = _grey(image) if image is not None else None
    view = CaseView(str(case), grey, classes(raw_truth), classes(raw_pred), spacing)
    ndim = len(view.shape)
    mask = read_label(fov).array > 0 if fov is not None else None
    if mask is not None and mask.shape != view.shape:
        mask = None  # a field of view on another grid cannot say where the case is scored
    return CaseView(view.case, view.grey, view.truth, view.pred, tuple(spacing or (1.0,) * ndim)[:ndim], mask)


def error_map(truth: np.ndarray | None, pred: np.ndarray | None) -> np.ndarray:
    """0 background, 1 true positive, 2 false positive, 3 miss (see the module docstring)."""
    shape = (truth if truth is not None else pred).shape  # type: ignore[union-attr]
    t = truth if truth is not None else np.zeros(shape, np.uint8)
    p = pred if pred is not None else np.zeros(shape, np.uint8)
    out = np.zeros(shape, np.uint8)
    out[(t > 0) & (p == t)] = _CODES["true positive"]
    out[(t == 0) & (p > 0)] = _CODES["false positive"]
    out[(t > 0) & (p != t)] = _CODES["miss"]
    return out


def dice_text(view: CaseView) -> str:
    """``Dice 0.912`` (one class) or ``Dice 1: 0.91, 2: 0.78``, over the whole image or volume, or
    inside its field of view where the case has one (as the evaluation scores it)."""
    if view.truth is None or view.pred is None:
        return "no prediction" if view.pred is None else "no reference"
    classes = sorted(set(np.unique(view.truth).tolist()) | set(np.unique(view.pred).tolist()) - {0})
    classes = [c for c in classes if c] or [1]
    inside = view.fov if view.fov is not None else True
    values = []
    for c in classes:
        t, p = (view.truth == c) & inside, (view.pred == c) & inside
        denom = int(t.sum() + p.sum())
        values.append(1.0 if denom == 0 else 2 * int((t & p).sum()) / denom)
    if len(values) == 1:
        return f"Dice {values[0]:.3f}"
    return "Dice " + ", ".join(f"{c}: {v:.2f}" for c, v in zip(classes, values, strict=True))


def focus_point(view: CaseView) -> tuple[int, ...]:
    """The slice to show along each axis of a volume: the one holding the most of the structure,
    scored per slice as twice its truth voxels plus its voxels in error (false positives and
    misses), so the truth leads and errors decide between slices of equal truth, and a
    prediction without truth shows its false positives; the middle slice when all is empty.
    Each slice is chosen on its own, so the three cut through the structure even where its
    centre is empty (between two lungs)."""
    errors = error_map(view.truth, view.pred)
    truth = view.truth if view.truth is not None else np.zeros(errors.shape, np.uint8)
    score = 2 * (truth > 0).astype(np.int64) + (errors >= 2)
    if not score.any():
        return tuple(s // 2 for s in view.shape)
    chosen = []
    for axis in range(score.ndim):
        profile = score.sum(axis=tuple(a for a in range(score.ndim) if a != axis))
        best = np.flatnonzero(profile == profile.max())
        chosen.append(int(best[len(best) // 2]))  # of equal slices the middle one, not the structure's edge
    return tuple(chosen)


def _to_picture(plane: np.ndarray, volume: bool) -> np.ndarray:
    """``W H`` (2D) or a volume's 2D slice to rows x columns as a viewer shows it."""
    return np.rot90(plane) if volume else plane.T


def picture(path: str | os.PathLike, *, label: bool = False) -> np.ndarray:
    """A file as one 2D picture (rows x columns): a 2D image whole, a volume's middle axial
    slice; an image as grey in [0, 1] (:func:`_grey`), a label map with its raw values."""
    a = np.asarray(read_label(path).array) if label else _grey(path)
    volume = a.ndim == 3
    return _to_picture(a[..., a.shape[2] // 2] if volume else a, volume)


def compose(grey: np.ndarray | None, mask: np.ndarray | None, mode: str, shape: tuple[int, int]) -> np.ndarray:
    """One ``H W 3`` uint8 picture: ``grey`` (black when None) with ``mask`` drawn on it.

    Args:
        mode: ``"image"`` (grey only), ``"truth"`` (foreground in the true-positive colour,
            classes by lightness), ``"errors"`` (``mask`` from :func:`error_map`).
    """
    base = grey if grey is not None else np.zeros(shape, np.float32)
    rgb = np.repeat((0.12 + 0.76 * base)[..., None], 3, axis=2)  # headroom: colours stay visible on white
    if mask is not None and mode != "image":
        colours = np.zeros((*mask.shape, 3), np.float32)
        if mode == "truth":
            top = max(int(mask.max()), 1)
            for c in range(1, top + 1):
                shade = 1.0 - 0.45 * (c - 1) / max(top - 1, 1)
                colours[mask == c] = np.array(COLOURS["true positive"]) / 255 * shade
        else:
            for name, code in _CODES.items():
                colours[mask == code] = np.array(COLOURS[name]) / 255
        on = mask > 0
        rgb[on] = 0.25 * rgb[on] + 0.75 * colours[on]
    return (np.clip(rgb, 0, 1) * 255).astype(np.uint8)


def planes(view: CaseView, axis: int, index: int) -> dict[str, np.ndarray | None]:
    """The image / truth / errors of one slice (a volume's, along ``axis``; a 2D case: all of it),
    each as rows x columns."""
    volume = len(view.shape) == 3
    errors = error_map(view.truth, view.pred) if view.pred is not None else None

    def cut(a: np.ndarray | None) -> np.ndarray | None:
        if a is None:
            return None
        return _to_picture(np.take(a, index, axis=axis) if volume else a, volume)

    return {"grey": cut(view.grey), "truth": cut(view.truth), "errors": cut(errors)}


def overlay_figure(view: CaseView, title_prefix: str = ""):
    """A matplotlib figure: image / truth / TP-FP-miss, one row (2D) or one row per orthogonal
    slice through :func:`focus_point` (volumes), per-image Dice in the title, a colour legend."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    volume = len(view.shape) == 3
    point = focus_point(view) if volume else None
    rows = [(2, "axial"), (1, "coronal"), (0, "sagittal")] if volume else [(None, "")]
    fig = Figure(figsize=(11, 3.7 * len(rows) + 0.6))
    FigureCanvasAgg(fig)
    axes = np.atleast_2d(fig.subplots(len(rows), 3))
    for r, (axis, name) in enumerate(rows):
        cut = planes(view, axis if axis is not None else 0, point[axis] if volume else 0)  # type: ignore[index]
        shape = next(a.shape for a in cut.values() if a is not None)
        aspect = 1.0
        if volume:  # the slice's rows run along the second in-plane axis (rotated), columns along the first
            in_plane = [s for i, s in enumerate(view.spacing) if i != axis]
            aspect = in_plane[1] / in_plane[0] if len(in_plane) == 2 and in_plane[0] else 1.0
        where = f" {name} slice {point[axis]}" if volume else ""  # type: ignore[index]
        panels = (
            ("image", compose(cut["grey"], None, "image", shape)),
            ("truth", compose(cut["grey"], cut["truth"], "truth", shape)),
            ("prediction", compose(cut["grey"], cut["errors"], "errors", shape)),
        )
        for ax, (label, picture) in zip(axes[r], panels, strict=True):
            ax.imshow(picture, interpolation="nearest", aspect=aspect)
            ax.set_title(f"{label}{where}", fontsize=9)
            ax.axis("off")
    handles = [Patch(color=np.array(c) / 255, label=n) for n, c in COLOURS.items()]
    fig.legend(handles=handles, loc="lower center", ncol=3, fontsize=9, frameon=False)
    fig.suptitle(f"{title_prefix}{view.case}: {dice_text(view)}", fontsize=11)
    fig.tight_layout(rect=(0, 0.05, 1, 0.97))
    return fig


def png_bytes(picture: np.ndarray, max_side: int | None = None) -> bytes:
    """A ``H W 3`` uint8 picture as PNG bytes, shrunk (nearest neighbour: labels stay crisp) so
    its longer side is at most ``max_side``."""
    from PIL import Image

    img = Image.fromarray(picture)
    if max_side is not None and max(img.size) > max_side:
        scale = max_side / max(img.size)
        img = img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))), Image.NEAREST)
    buf = io.BytesIO()
    img.save(buf, format="PNG", compress_level=6)
    return buf.getvalue()
