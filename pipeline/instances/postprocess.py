"""From class probabilities to instances: seeded watershed, hole filling, small-object removal.

The network predicts the 3-class encoding of :mod:`pipeline.instances.targets` (background,
interior, border). Interiors of touching objects are apart where the border class runs between
them, so each connected interior region seeds one object, and a watershed of the interior
probability, flooding from the seeds within the foreground (interior + border), gives the border
pixels back to the objects on either side. Seeds can instead come from the peaks of a distance
map (a predicted one, or the Euclidean distance transform of the foreground), the classical
way, for a 2-class output. Then: holes up to ``max_hole_size`` pixels are filled (before the
watershed, so a hole goes to the object around it), foreground regions that no seed reached
become objects of their own, and objects under ``min_size`` pixels are dropped.

:func:`select_thresholds` picks ``interior_threshold`` and ``min_size`` on validation pairs by
the mean over images of the DSB2018 mean AP, and returns them as a small JSON-able dict that
:func:`postprocess` takes back.

Example:
    >>> import numpy as np
    >>> classes = np.zeros((7, 12), np.int64)
    >>> classes[1:6, 1:11] = 2            # one blob of foreground ...
    >>> classes[2:5, 2:5] = 1             # ... with two interiors apart
    >>> classes[2:5, 7:10] = 1
    >>> ids = instances_from_classes(classes, min_size=0)
    >>> int(ids.max()), ids.dtype.name    # connected components would give 1
    (2, 'uint16')
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from pipeline.instances.measure import as_instance_map

__all__ = [
    "MARKERS",
    "SELECTION_METRICS",
    "PARAMETERS",
    "instances_from_probabilities",
    "instances_from_classes",
    "remove_small",
    "fill_small_holes",
    "select_thresholds",
    "postprocess",
]

MARKERS = ("interior", "distance")
SELECTION_METRICS = ("mean_ap", "ap_0.50")
"""What :func:`select_thresholds` can maximise: mean AP over IoU 0.5:0.05:0.95, or AP at 0.5."""
PARAMETERS = ("markers", "interior_threshold", "foreground_threshold", "min_size", "max_hole_size", "min_distance")
"""The settings :func:`select_thresholds` returns and :func:`postprocess` reads."""


def fill_small_holes(mask: np.ndarray, max_hole_size: int) -> np.ndarray:
    """``mask`` with its enclosed background regions of at most ``max_hole_size`` pixels set.

    Example:
        >>> m = np.ones((5, 5), bool); m[2, 2] = False
        >>> bool(fill_small_holes(m, 1)[2, 2]), bool(fill_small_holes(m, 0)[2, 2])
        (True, False)
    """
    from scipy import ndimage

    if max_hole_size <= 0:
        return mask
    holes = ndimage.binary_fill_holes(mask) & ~mask
    labels, n = ndimage.label(holes)
    if n == 0:
        return mask
    size = np.bincount(labels.ravel())
    small = size <= max_hole_size
    small[0] = False
    return mask | small[labels]


def remove_small(ids: np.ndarray, min_size: int) -> np.ndarray:
    """``ids`` without the objects of fewer than ``min_size`` pixels, renumbered 1..N.

    Example:
        >>> remove_small(np.array([[1, 1, 0, 4, 7, 7, 7]]), 2).tolist()
        [[1, 1, 0, 0, 2, 2, 2]]
    """
    ids = np.asarray(ids)
    size = np.bincount(ids.ravel())
    keep = size >= max(int(min_size), 1)
    keep[0] = False
    new = np.zeros(size.size, np.int64)
    new[keep] = np.arange(1, int(keep.sum()) + 1)
    return new[ids]


def _check(name: str, value: float, low: float = 0.0, high: float = 1.0) -> float:
    value = float(value)
    if not low <= value <= high:
        raise ValueError(f"{name} must be in [{low}, {high}], got {value!r}")
    return value


def instances_from_probabilities(
    probs: Any,
    *,
    markers: str = "interior",
    interior_threshold: float = 0.5,
    foreground_threshold: float = 0.5,
    min_size: int = 16,
    max_hole_size: int = 64,
    min_distance: int = 3,
    distance: Any = None,
) -> np.ndarray:
    """Instances from class probabilities ``C H W [D]`` (C = 3: background, interior, border; or C = 2).

    Args:
        probs: softmax probabilities, channel first; channel 0 is background. With 2 channels
            (background, object) only ``markers="distance"`` applies.
        markers: ``"interior"``: one seed per connected region where the interior probability
            is above ``interior_threshold``; ``"distance"``: one seed per peak of ``distance``
            (or of the foreground's distance transform), at least ``min_distance`` px apart.
        interior_threshold: seed threshold on the interior probability.
        foreground_threshold: a pixel is foreground if ``1 - p(background)`` exceeds it.
        min_size: objects with fewer pixels are dropped (0 keeps all).
        max_hole_size: enclosed background regions up to this many pixels are filled.
        min_distance: peak separation for ``markers="distance"``.
        distance: optional ``H W [D]`` distance map (e.g. predicted) for ``markers="distance"``.

    Returns:
        ``H W [D]`` instance ids 1..N (uint16, or uint32 beyond 65,535 objects).

    Raises:
        ValueError: for a bad layout, channel count or setting.
    """
    from scipy import ndimage
    from skimage.segmentation import watershed

    p = np.asarray(probs, dtype=np.float32)
    if p.ndim not in (3, 4) or p.shape[0] not in (2, 3):
        raise ValueError(f"probs must be C H W [D] with C = 3 (background, interior, border) or 2, got {p.shape}")
    if markers not in MARKERS:
        raise ValueError(f"markers must be one of {list(MARKERS)}, got {markers!r}")
    if markers == "interior" and p.shape[0] != 3:
        raise ValueError(f"markers='interior' needs 3 channels (background, interior, border), got {p.shape[0]}")
    _check("interior_threshold", interior_threshold)
    _check("foreground_threshold", foreground_threshold)
    fg = fill_small_holes((1.0 - p[0]) > foreground_threshold, int(max_hole_size))
    if markers == "interior":
        seeds, _ = ndimage.label((p[1] > interior_threshold) & fg)
        elevation = -p[1]
    else:
        from skimage.feature import peak_local_max

        dist = ndimage.distance_transform_edt(fg) if distance is None else np.asarray(distance, np.float32)
        if dist.shape != fg.shape:
            raise ValueError(f"distance must have the spatial shape {fg.shape}, got {dist.shape}")
        regions, _ = ndimage.label(fg)
        peaks = peak_local_max(dist, min_distance=int(min_distance), labels=regions, exclude_border=False)
        seeds = np.zeros(fg.shape, np.int64)
        seeds[tuple(peaks.T)] = np.arange(1, len(peaks) + 1)
        elevation = -dist
    ids = watershed(elevation, seeds, mask=fg)
    orphans, n_orphans = ndimage.label(fg & (ids == 0))  # foreground no seed reached
    if n_orphans:
        ids = np.where(orphans > 0, orphans + ids.max(), ids)
    return as_instance_map(remove_small(ids, min_size))


def instances_from_classes(classes: Any, **kwargs: Any) -> np.ndarray:
    """Instances from a 3-class index map ``H W [D]`` (the argmax): seeds are the interior regions.

    Takes the settings of :func:`instances_from_probabilities` (its thresholds act on the
    one-hot map, so only ``min_size``, ``max_hole_size`` and ``markers`` matter).
    """
    c = np.asarray(classes)
    if c.ndim not in (2, 3):
        raise ValueError(f"classes must be H W [D] class indices, got shape {c.shape}")
    onehot = np.stack([c == k for k in range(3)]).astype(np.float32)
    return instances_from_probabilities(onehot, **kwargs)


def postprocess(probs: Any, settings: Mapping[str, Any]) -> np.ndarray:
    """Apply the settings :func:`select_thresholds` chose (or defaults for the missing ones)."""
    unknown = set(settings) - set(PARAMETERS) - {"score", "metric", "n_images", "grid"}
    if unknown:
        raise ValueError(f"unknown post-processing settings {sorted(unknown)}; expected some of {list(PARAMETERS)}")
    return instances_from_probabilities(probs, **{k: settings[k] for k in PARAMETERS if k in settings})


def select_thresholds(
    pairs: Iterable[tuple[Any, Any]],
    *,
    interior_thresholds: Sequence[float] = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95),
    min_sizes: Sequence[int] = (0, 8, 16, 32, 64, 128),
    markers: str = "interior",
    foreground_threshold: float = 0.5,
    max_hole_size: int = 64,
    min_distance: int = 3,
    metric: str = "mean_ap",
) -> dict[str, Any]:
    """Choose ``interior_threshold`` and ``min_size`` that maximise the mean AP on validation pairs.

    Every combination of the grid is scored by the mean over images of the mean AP at IoU
    0.5:0.05:0.95 (``metric="mean_ap"``) or of the AP at IoU 0.5 (``metric="ap_0.50"``); on a
    tie the lowest threshold and the smallest ``min_size`` win. With
    ``markers="distance"`` the interior threshold plays no part and only ``min_size`` is chosen.

    Args:
        pairs: ``(probs, true_ids)`` per validation image (``C H W [D]`` and ``H W [D]``).
        interior_thresholds: candidate seed thresholds.
        min_sizes: candidate minimum object sizes (pixels).
        markers, foreground_threshold, max_hole_size, min_distance: fixed settings, see
            :func:`instances_from_probabilities`.
        metric: ``"mean_ap"`` or ``"ap_0.50"``.

    Returns:
        JSON-able dict: the chosen :data:`PARAMETERS`, ``score`` (its mean AP), ``metric``,
        ``n_images`` and ``grid`` (the candidates and every score), for :func:`postprocess`.

    Raises:
        ValueError: if ``pairs`` is empty, a grid is empty or ``metric`` is unknown.

    Example:
        >>> from pipeline.instances.targets import instance_classes
        >>> ids = np.zeros((12, 12), int); ids[1:6, 1:11] = 1; ids[6:11, 1:11] = 2
        >>> probs = np.stack([instance_classes(ids) == k for k in range(3)]).astype(np.float32)
        >>> s = select_thresholds([(probs, ids)], min_sizes=(0, 100))
        >>> s["min_size"], s["score"]
        (0, 1.0)
    """
    from pipeline.instances.metrics import match

    if metric not in SELECTION_METRICS:
        raise ValueError(f"metric must be one of {list(SELECTION_METRICS)}, got {metric!r}")
    pairs = list(pairs)
    if not pairs:
        raise ValueError("select_thresholds needs at least one (probs, true_ids) pair")
    thresholds = [float(t) for t in interior_thresholds] if markers == "interior" else [0.5]
    sizes = sorted({int(s) for s in min_sizes})
    if not thresholds or not sizes:
        raise ValueError("interior_thresholds and min_sizes must not be empty")
    scores = np.zeros((len(thresholds), len(sizes)))
    for probs, true in pairs:
        for i, t in enumerate(thresholds):
            ids = instances_from_probabilities(
                probs,
                markers=markers,
                interior_threshold=t,
                foreground_threshold=foreground_threshold,
                min_size=0,
                max_hole_size=max_hole_size,
                min_distance=min_distance,
            )
            for j, size in enumerate(sizes):
                m = match(true, remove_small(ids, size))
                scores[i, j] += m["mean_ap"] if metric == "mean_ap" else m["ap"][0]
    scores /= len(pairs)
    i, j = np.unravel_index(int(np.argmax(scores)), scores.shape)  # first maximum: lowest values
    return {
        "markers": markers,
        "interior_threshold": thresholds[i],
        "foreground_threshold": float(foreground_threshold),
        "min_size": sizes[j],
        "max_hole_size": int(max_hole_size),
        "min_distance": int(min_distance),
        "score": float(scores[i, j]),
        "metric": metric,
        "n_images": len(pairs),
        "grid": {"interior_threshold": thresholds, "min_size": sizes, "scores": scores.round(6).tolist()},
    }
