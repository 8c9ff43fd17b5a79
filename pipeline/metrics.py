"""Segmentation metrics per case and per class: Dice, IoU, precision, recall, HD95, ASSD, NSD, clDice.

All metrics compare two class-index maps ``H W [D]`` (no channel axis) one class at a time, on the
masks' joint bounding box (so a small structure in a large volume costs little), with distances in
mm from the voxel spacing. Where MONAI defines a value we return the same number (tested against
``DiceMetric``, ``HausdorffDistanceMetric(percentile=95)``, ``SurfaceDistanceMetric(symmetric=True)``
and ``SurfaceDiceMetric``); we do not call MONAI itself because a missed structure gets NaN (HD95) or
inf (HD, ASSD) there, and it re-crops and converts to torch per call (4-9x slower, ``bench/metrics.py``), and because
evaluation should not need torch.

Conventions (never NaN, so a mean over cases counts every case):

==================  ====  ====  ====  ====  ==============================
status              Dice  HD95  ASSD  NSD   IoU, precision, recall, clDice
==================  ====  ====  ====  ====  ==============================
``both_empty``      1     0     0     1     1
``missed``          0     diag  diag  0     0
``hallucinated``    0     diag  diag  0     0
==================  ====  ====  ====  ====  ==============================

``missed``: the class is in the label but not in the prediction; ``hallucinated``: the reverse.
``diag`` is the image diagonal in mm, ``sqrt(sum((n_i * spacing_i) ** 2))``, larger than any
distance a prediction can reach, so a missed structure scores worst rather than being dropped
(MONAI gives NaN for HD95 there, which its mean then skips, and inf for HD and ASSD). Both-empty
cases enter the means with the values above; the evaluator counts each status separately. With both
masks non-empty a ratio whose denominator is 0 cannot occur, except clDice's when a skeleton is
empty (then that term is 0).

Surfaces and distances follow MONAI's ``get_mask_edges`` / ``get_surface_distance``
(see :mod:`pipeline._metrics_surface`): HD95 is the larger of the two directed 95th percentiles,
ASSD the mean of both directions' distances pooled, NSD the fraction of both surfaces within the
tolerance. clDice (Shit et al., CVPR 2021) uses ``skimage.morphology.skeletonize`` (Zhang in 2D,
Lee in 3D); skeletons ignore the spacing.

Each metric is a :class:`Metric` in the :data:`METRICS` registry, which carries its direction
(higher is better or not) and its values for the three empty cases; adding one is one
:func:`register_metric` call.

A field-of-view mask restricts everything to the FOV: both maps are set to background outside it
before any metric (DRIVE's protocol counts only FOV pixels). ``diag`` stays the whole image's.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from pipeline.registry import METRIC_REGISTRY

# scipy (and pipeline._metrics_surface, which needs it) is imported where used: the CLI parser
# imports this module for METRICS, and every `medseg` call should not pay for scipy

__all__ = [
    "METRICS",
    "METRIC_REGISTRY",
    "Metric",
    "ClassPair",
    "DIAGONAL",
    "register_metric",
    "check_metrics",
    "empty_result",
    "evaluate_case",
    "overlap_metrics",
    "cldice",
    "image_diagonal",
    "STATUSES",
]

OK, BOTH_EMPTY, MISSED, HALLUCINATED = "ok", "both_empty", "missed", "hallucinated"
STATUSES = (OK, BOTH_EMPTY, MISSED, HALLUCINATED)
"""Per class: both present, neither present, prediction empty, label empty."""

DIAGONAL = "diagonal"
"""An empty-case value meaning "the image diagonal in mm" (worst distance a case can have)."""


class ClassPair:
    """One class of one case: the two boolean masks (cropped to their joint box) and what metrics
    share, computed once on first use (overlap counts, surface distances).

    Attributes:
        pred / label: boolean masks ``H W [D]``, both non-empty.
        spacing: voxel size in mm per axis.
        nsd_tolerance: NSD tolerance in mm.
    """

    def __init__(self, pred: np.ndarray, label: np.ndarray, spacing: Sequence[float], nsd_tolerance: float) -> None:
        self.pred, self.label, self.spacing, self.nsd_tolerance = pred, label, tuple(spacing), nsd_tolerance

    @cached_property
    def overlap(self) -> dict[str, float]:
        """Dice, IoU, precision and recall (:func:`overlap_metrics`)."""
        return overlap_metrics(self.pred, self.label)

    @cached_property
    def distances(self) -> tuple[np.ndarray, np.ndarray]:
        """``(pred_to_label, label_to_pred)`` surface distances in mm."""
        from pipeline._metrics_surface import surface_distances

        return surface_distances(self.pred, self.label, self.spacing)


@dataclass(frozen=True)
class Metric:
    """A registered metric: how to compute it and what it is worth on empty cases.

    Args:
        name: the column name.
        compute: ``ClassPair -> float`` for a class present in both masks.
        higher_is_better: the direction (picks ``best.pt`` under ``train.val_metric``).
        both_empty / missed / hallucinated: the value when the class is in neither mask / only the
            label / only the prediction; a number or :data:`DIAGONAL`.
        digits: decimals shown in the evaluation table.
    """

    name: str
    compute: Callable[[ClassPair], float]
    higher_is_better: bool = True
    both_empty: float | str = 1.0
    missed: float | str = 0.0
    hallucinated: float | str = 0.0
    digits: int = 4

    def empty_value(self, status: str, diagonal: float = math.inf) -> float:
        """The value for a class that is absent from the prediction and/or the label."""
        values = {BOTH_EMPTY: self.both_empty, MISSED: self.missed, HALLUCINATED: self.hallucinated}
        if status not in values:
            raise ValueError(f"status must be one of {STATUSES[1:]}, got {status!r}")
        value = values[status]
        return diagonal if value == DIAGONAL else float(value)


METRICS = METRIC_REGISTRY
"""Every metric (a :class:`~pipeline.registry.Registry` of :class:`Metric`), in output column order:
iterate it for the names, ``METRICS.get(name)`` for the entry."""


def register_metric(name: str, **settings) -> Callable[[Callable[[ClassPair], float]], Callable[[ClassPair], float]]:
    """Register ``fn(pair: ClassPair) -> float`` as metric ``name`` (``settings``: see :class:`Metric`).

    A new metric is this one registration (in this module or one it imports)::

        @register_metric("volume_ratio", higher_is_better=False, both_empty=1.0, missed=0.0,
                         hallucinated=math.inf)
        def _volume_ratio(pair: ClassPair) -> float:
            return float(pair.pred.sum() / pair.label.sum())

    Example:
        >>> METRICS.get("hd95").higher_is_better, METRICS.get("hd95").empty_value("missed", 42.0)
        (False, 42.0)
        >>> list(METRICS)[:4]
        ['dice', 'iou', 'precision', 'recall']
    """

    def add(fn: Callable[[ClassPair], float]) -> Callable[[ClassPair], float]:
        METRIC_REGISTRY.register(name, Metric(name, fn, **settings))
        return fn

    return add


def check_metrics(metrics: Iterable[str]) -> tuple[str, ...]:
    """Validate metric names; returns them in :data:`METRICS` order, without duplicates."""
    metrics = tuple(metrics)
    names = METRICS.names()
    unknown = [m for m in metrics if m not in METRICS]
    if unknown or not metrics:
        raise ValueError(f"metrics must be a non-empty subset of {tuple(names)}, got {metrics!r}")
    return tuple(m for m in names if m in metrics)


def empty_result(
    status: str, metrics: Sequence[str] | None = None, diagonal: float = math.inf
) -> dict[str, float | str]:
    """The fixed values of a class that is absent from the prediction and/or the label (see the table).

    Args:
        status: ``both_empty``, ``missed`` or ``hallucinated``.
        metrics: which metric values to return (default: all).
        diagonal: the image diagonal in mm (the distance given to a missed/hallucinated structure).
    """
    if status not in STATUSES[1:]:
        raise ValueError(f"status must be one of {STATUSES[1:]}, got {status!r}")
    names = METRICS.names() if metrics is None else metrics
    return {**{m: METRICS.get(m).empty_value(status, diagonal) for m in names}, "status": status}


def overlap_metrics(pred: np.ndarray, label: np.ndarray) -> dict[str, float]:
    """Dice, IoU, precision and recall of two boolean masks; 0/0 is 1 if both are empty, else 0."""
    tp = int(np.count_nonzero(pred & label))
    n_pred, n_label = int(np.count_nonzero(pred)), int(np.count_nonzero(label))
    empty = 1.0 if n_pred == 0 and n_label == 0 else 0.0

    def ratio(num: int, den: int) -> float:
        return num / den if den else empty

    return {
        "dice": ratio(2 * tp, n_pred + n_label),
        "iou": ratio(tp, n_pred + n_label - tp),
        "precision": ratio(tp, n_pred),
        "recall": ratio(tp, n_label),
    }


def cldice(pred: np.ndarray, label: np.ndarray) -> float:
    """Centerline Dice of two boolean masks ``H W [D]``: the harmonic mean of topology precision
    ``|S(pred) & label| / |S(pred)|`` and topology sensitivity ``|S(label) & pred| / |S(label)|``,
    ``S`` the skeleton. 1 if both masks are empty, 0 if one is.

    Not in MONAI (which has only the soft clDice loss); skeletons from scikit-image.
    """
    if not pred.any() or not label.any():
        return 1.0 if not pred.any() and not label.any() else 0.0
    try:
        from skimage.morphology import skeletonize
    except ImportError as err:  # pragma: no cover - scikit-image is a dependency
        raise ImportError("clDice needs scikit-image (pip install scikit-image); or leave 'cldice' out") from err
    skel_pred, skel_label = skeletonize(pred), skeletonize(label)
    n_sp, n_sl = np.count_nonzero(skel_pred), np.count_nonzero(skel_label)
    t_prec = np.count_nonzero(skel_pred & label) / n_sp if n_sp else 0.0
    t_sens = np.count_nonzero(skel_label & pred) / n_sl if n_sl else 0.0
    return float(2 * t_prec * t_sens / (t_prec + t_sens)) if t_prec + t_sens else 0.0


def image_diagonal(shape: Sequence[int], spacing: Sequence[float]) -> float:
    """Physical diagonal ``sqrt(sum((n_i * s_i) ** 2))`` in mm."""
    return float(math.sqrt(sum((n * s) ** 2 for n, s in zip(shape, spacing, strict=True))))


def _label_array(x, name: str) -> np.ndarray:
    if hasattr(x, "detach"):  # a torch tensor, without importing torch
        x = x.detach().cpu().numpy()
    x = np.asarray(x)
    if x.dtype == bool:
        return x.view(np.uint8)
    if np.issubdtype(x.dtype, np.floating):
        if not np.array_equal(x, np.round(x)):
            raise ValueError(f"{name} must hold class indices, got non-integer values (argmax the logits first)")
        x = x.astype(np.int64)
    elif not np.issubdtype(x.dtype, np.integer):
        raise TypeError(f"{name} must be an integer or bool array, got dtype {x.dtype}")
    if x.size and x.min() < 0:
        raise ValueError(f"{name} must hold class indices >= 0, got min {x.min()}")
    return x


def _check_spacing(spacing: Sequence[float] | float | None, ndim: int) -> tuple[float, ...]:
    if spacing is None:
        return (1.0,) * ndim
    if np.isscalar(spacing):
        spacing = (spacing,) * ndim
    values = tuple(float(s) for s in spacing)
    if len(values) != ndim or not all(math.isfinite(s) and s > 0 for s in values):
        raise ValueError(f"spacing must be {ndim} positive finite numbers (one per axis), got {spacing!r}")
    return values


def _bbox(boxes_pred: list, boxes_label: list, c: int, shape: tuple[int, ...]) -> tuple[slice, ...] | None:
    boxes = [b[c - 1] for b in (boxes_pred, boxes_label) if c - 1 < len(b) and b[c - 1] is not None]
    if not boxes:
        return None
    # one voxel of margin (clipped at the image border) keeps the crop's surfaces and skeletons
    # identical to the full image's
    return tuple(
        slice(max(min(b[i].start for b in boxes) - 1, 0), min(max(b[i].stop for b in boxes) + 1, n))
        for i, n in enumerate(shape)
    )


def evaluate_case(
    pred,
    label,
    spacing: Sequence[float] | float | None = None,
    classes: Iterable[int] | None = None,
    fov=None,
    *,
    nsd_tolerance: float = 1.0,
    metrics: Iterable[str] | None = None,
) -> dict[int, dict[str, float | str]]:
    """Compare a predicted class-index map with the reference, per class.

    Args:
        pred: predicted class indices ``H W [D]`` (numpy, or a torch tensor on any device);
            integer or bool. Batch and channel axes must be removed (argmax over ``C``, squeeze).
        label: reference class indices, same shape.
        spacing: voxel size in mm per axis (a NIfTI header's zooms); None for 1 per axis.
        classes: the classes to report (>= 1). None: every non-zero class in ``pred`` or ``label``.
        fov: optional boolean field-of-view mask ``H W [D]``; outside it both maps count as background.
        nsd_tolerance: NSD tolerance in mm.
        metrics: names from :data:`METRICS` (default: all); leaving out ``cldice`` (and the surface
            metrics) makes large 3D cases much cheaper.

    Returns:
        ``{class: {metric: float, ..., "status": str}}``, classes ascending; ``status`` is one of
        :data:`STATUSES`. See the module docstring for the empty-mask conventions.

    Raises:
        ValueError: shapes differ, ``ndim`` not 2 or 3, bad spacing, class, tolerance or metric names.
        TypeError: non-numeric arrays.

    Example:
        >>> label = np.zeros((8, 8), np.uint8); label[2:6, 2:6] = 1
        >>> pred = np.zeros_like(label); pred[2:6, 2:4] = 1
        >>> evaluate_case(pred, label, spacing=(1.0, 1.0), metrics=("dice", "recall"))[1]
        {'dice': 0.6666666666666666, 'recall': 0.5, 'status': 'ok'}
    """
    metrics = check_metrics(METRICS.names() if metrics is None else metrics)
    pred, label = _label_array(pred, "pred"), _label_array(label, "label")
    if pred.shape != label.shape:
        raise ValueError(f"pred shape {pred.shape} != label shape {label.shape}; both must be class indices H W [D]")
    if pred.ndim not in (2, 3):
        raise ValueError(f"expected 2D or 3D class-index maps (H W [D], no channel axis), got shape {pred.shape}")
    spacing = _check_spacing(spacing, pred.ndim)
    if not (math.isfinite(nsd_tolerance) and nsd_tolerance >= 0):
        raise ValueError(f"nsd_tolerance must be a finite number >= 0 (mm), got {nsd_tolerance!r}")
    if fov is not None:
        fov = np.asarray(fov.detach().cpu().numpy() if hasattr(fov, "detach") else fov) != 0
        if fov.shape != pred.shape:
            raise ValueError(f"fov shape {fov.shape} != pred/label shape {pred.shape}")
        pred, label = np.where(fov, pred, 0), np.where(fov, label, 0)

    from scipy import ndimage

    boxes_pred, boxes_label = ndimage.find_objects(pred), ndimage.find_objects(label)
    if classes is None:
        present = {i + 1 for boxes in (boxes_pred, boxes_label) for i, b in enumerate(boxes) if b is not None}
        classes = sorted(present)
    else:
        classes = sorted({int(c) for c in classes})
        if any(c < 1 for c in classes):
            raise ValueError(f"classes must be >= 1 (0 is background), got {classes!r}")
    diagonal = image_diagonal(pred.shape, spacing)
    results = {}
    for c in classes:
        box = _bbox(boxes_pred, boxes_label, c, pred.shape)
        results[c] = _evaluate_class(pred, label, c, box, spacing, diagonal, nsd_tolerance, metrics)
    return results


def _evaluate_class(
    pred: np.ndarray,
    label: np.ndarray,
    c: int,
    box: tuple[slice, ...] | None,
    spacing: tuple[float, ...],
    diagonal: float,
    nsd_tolerance: float,
    metrics: tuple[str, ...],
) -> dict[str, float | str]:
    if box is None:
        return empty_result(BOTH_EMPTY, metrics)
    p, lab = pred[box] == c, label[box] == c
    if not p.any() or not lab.any():
        return empty_result(MISSED if lab.any() else HALLUCINATED, metrics, diagonal)
    pair = ClassPair(p, lab, spacing, nsd_tolerance)
    return {**{m: float(METRICS.get(m).compute(pair)) for m in metrics}, "status": OK}


# The built-in metrics, in output column order. A new metric is one more registration (here or
# in its own module imported by this one); the evaluator, the CLI and train.val_metric see it.

register_metric("dice")(lambda pair: pair.overlap["dice"])
register_metric("iou")(lambda pair: pair.overlap["iou"])
register_metric("precision")(lambda pair: pair.overlap["precision"])
register_metric("recall")(lambda pair: pair.overlap["recall"])

_DISTANCE = {"higher_is_better": False, "both_empty": 0.0, "missed": DIAGONAL, "hallucinated": DIAGONAL, "digits": 2}


@register_metric("hd95", **_DISTANCE)
def _hd95(pair: ClassPair) -> float:
    from pipeline._metrics_surface import hd_percentile

    return hd_percentile(*pair.distances, 95.0)


@register_metric("assd", **_DISTANCE)
def _assd(pair: ClassPair) -> float:
    from pipeline._metrics_surface import average_symmetric_surface_distance

    return average_symmetric_surface_distance(*pair.distances)


@register_metric("nsd")
def _nsd(pair: ClassPair) -> float:
    from pipeline._metrics_surface import normalized_surface_dice

    return normalized_surface_dice(*pair.distances, pair.nsd_tolerance)


register_metric("cldice")(lambda pair: cldice(pair.pred, pair.label))
