"""Surface extraction and surface distances with MONAI's conventions, on cropped masks.

MONAI's ``get_mask_edges`` (``crop=True``, no sub-voxel spacing) takes as the surface every
foreground voxel that ``scipy.ndimage.binary_erosion`` (cross-shaped structuring element, outside
of the image counted as background) removes, and ``get_surface_distance`` measures, for each edge
voxel of one mask, the Euclidean distance in mm to the nearest edge voxel of the other (a KD-tree
over the edge coordinates scaled by the spacing). This module does the same in numpy on the
masks' joint bounding box, without MONAI's torch round trip and per-call ``CropForegroundd``, and
returns both directions at once.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage
from scipy.spatial import cKDTree


def mask_edges(mask: np.ndarray) -> np.ndarray:
    """Surface voxels of a boolean mask, ``H W [D]``: the voxels that one binary erosion removes.

    Voxels on the array's border count as surface (outside is background), as in MONAI.
    """
    return mask & ~ndimage.binary_erosion(mask, border_value=0)


def surface_distances(pred: np.ndarray, label: np.ndarray, spacing: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """Distances in mm between the surfaces of two non-empty boolean masks of one shape.

    Args:
        pred: boolean mask ``H W [D]`` (cropped or not: only relative positions matter).
        label: boolean mask of the same shape.
        spacing: voxel size along each axis in mm.

    Returns:
        ``(pred_to_label, label_to_pred)``: float64 arrays with, for each surface voxel of the first
        mask, the distance to the nearest surface voxel of the second.

    Raises:
        ValueError: a mask is empty (its surface distances are undefined; callers handle that case).
    """
    if not pred.any() or not label.any():
        raise ValueError("surface distances need two non-empty masks")
    scale = np.asarray(spacing, dtype=np.float64)
    pred_pts = np.argwhere(mask_edges(pred)) * scale
    label_pts = np.argwhere(mask_edges(label)) * scale
    # leafsize 32 as MONAI: one batched query per tree, so a cheaper build pays off
    pred_to_label = cKDTree(label_pts, leafsize=32).query(pred_pts, k=1)[0]
    label_to_pred = cKDTree(pred_pts, leafsize=32).query(label_pts, k=1)[0]
    return pred_to_label, label_to_pred


def hd_percentile(pred_to_label: np.ndarray, label_to_pred: np.ndarray, percentile: float = 95.0) -> float:
    """Symmetric percentile Hausdorff distance: the larger of the two directed percentiles (linear
    interpolation), as MONAI's ``compute_hausdorff_distance(percentile=...)``."""
    return float(max(np.percentile(pred_to_label, percentile), np.percentile(label_to_pred, percentile)))


def average_symmetric_surface_distance(pred_to_label: np.ndarray, label_to_pred: np.ndarray) -> float:
    """Mean over both surfaces' distances together, as MONAI's ``SurfaceDistanceMetric(symmetric=True)``."""
    return float((pred_to_label.sum() + label_to_pred.sum()) / (pred_to_label.size + label_to_pred.size))


def normalized_surface_dice(pred_to_label: np.ndarray, label_to_pred: np.ndarray, tolerance: float) -> float:
    """Fraction of both surfaces within ``tolerance`` mm of the other, as MONAI's ``SurfaceDiceMetric``
    (``use_subvoxels=False``); compared in float32 as MONAI does, so ties at the tolerance agree."""
    tol = np.float32(tolerance)
    inside = np.count_nonzero(pred_to_label.astype(np.float32) <= tol) + np.count_nonzero(
        label_to_pred.astype(np.float32) <= tol
    )
    return float(inside / (pred_to_label.size + label_to_pred.size))
