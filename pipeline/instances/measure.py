"""Per-object measurements (the rows of ``objects.csv``) and the dtype of instance label maps.

Example:
    >>> import numpy as np
    >>> ids = np.zeros((6, 8), np.uint16); ids[1:3, 1:4] = 1; ids[3:6, 5:8] = 4
    >>> rows = objects_table(ids, image=np.full((6, 8), 2.0), spacing=(0.5, 0.5))
    >>> [(r["id"], r["area"], r["centroid_0"], r["bbox_max_1"], r["mean_intensity"]) for r in rows]
    [(1, 1.5, 0.75, 4, 2.0), (4, 2.25, 2.0, 8, 2.0)]
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["instance_dtype", "as_instance_map", "objects_table", "columns"]

UINT16_MAX = np.iinfo(np.uint16).max


def instance_dtype(n: int) -> np.dtype:
    """The dtype of a label map whose largest id is ``n``: uint16 up to 65,535, then uint32.

    Raises:
        ValueError: for a negative ``n`` or one beyond uint32.

    Example:
        >>> instance_dtype(65_535).name, instance_dtype(65_536).name
        ('uint16', 'uint32')
    """
    n = int(n)
    if n < 0:
        raise ValueError(f"the largest id must be >= 0, got {n}")
    if n <= UINT16_MAX:
        return np.dtype(np.uint16)
    if n <= np.iinfo(np.uint32).max:
        return np.dtype(np.uint32)
    raise ValueError(f"{n} objects do not fit a uint32 label map")


def as_instance_map(ids: Any) -> np.ndarray:
    """``ids`` cast to :func:`instance_dtype` of its largest id (values unchanged).

    Raises:
        ValueError: for negative or fractional ids.
    """
    arr = np.asarray(ids)
    if arr.size and arr.min() < 0:
        raise ValueError(f"instance ids must be >= 0, got minimum {arr.min()}")
    if not np.issubdtype(arr.dtype, np.integer) and arr.dtype != bool and arr.size and np.any(np.mod(arr, 1)):
        raise ValueError("instance ids must be whole numbers")
    return arr.astype(instance_dtype(int(arr.max()) if arr.size else 0))


def columns(ndim: int, with_intensity: bool = True) -> list[str]:
    """Column names of :func:`objects_table` for ``ndim`` spatial axes."""
    cols = ["id", "area" if ndim == 2 else "volume"]
    cols += [f"centroid_{a}" for a in range(ndim)]
    cols += [f"bbox_min_{a}" for a in range(ndim)] + [f"bbox_max_{a}" for a in range(ndim)]
    cols += ["mean_intensity"] if with_intensity else []
    return cols + ["equivalent_diameter"]


def objects_table(
    instances: Any, image: Any = None, spacing: Sequence[float] | None = None
) -> list[dict[str, float | int]]:
    """One row per object: id, area (2D) or volume (3D), centroid, bounding box, mean intensity, diameter.

    Args:
        instances: ``H W [D]`` ids, 0 = background (gaps allowed; rows keep the ids).
        image: ``H W [D]`` intensities for ``mean_intensity`` (omitted without an image).
        spacing: pixel size per axis, e.g. mm; area/volume, centroid and equivalent diameter
            are in these units (default 1 = pixels). The bounding box is in pixel indices,
            ``[bbox_min, bbox_max)`` per axis, for cropping.

    Returns:
        Rows ordered by id, with the keys :func:`columns` gives; ``equivalent_diameter`` is
        that of the disk / ball of the same area / volume.

    Raises:
        ValueError: for a bad layout, a shape mismatch or a bad spacing.
    """
    from skimage.measure import regionprops_table

    ids = np.asarray(instances)
    if ids.ndim not in (2, 3):
        raise ValueError(f"instances must be H W or H W D (no channel axis), got shape {ids.shape}")
    if spacing is None:
        spacing = (1.0,) * ids.ndim
    spacing = tuple(float(s) for s in spacing)
    if len(spacing) != ids.ndim or any(s <= 0 for s in spacing):
        raise ValueError(f"spacing must be {ids.ndim} positive values, got {spacing!r}")
    props = ["label", "area", "centroid", "bbox", "equivalent_diameter_area"]
    intensity = None
    if image is not None:
        intensity = np.asarray(image, dtype=np.float64)
        if intensity.shape != ids.shape:
            raise ValueError(f"image must have the shape of instances {ids.shape}, got {intensity.shape}")
        props.append("intensity_mean")
    table = regionprops_table(as_instance_map(ids), intensity_image=intensity, properties=props, spacing=spacing)
    nd = ids.ndim
    rows = []
    for k in range(len(table["label"])):
        row: dict[str, float | int] = {
            "id": int(table["label"][k]),
            "area" if nd == 2 else "volume": float(table["area"][k]),
        }
        for a in range(nd):
            row[f"centroid_{a}"] = float(table[f"centroid-{a}"][k])
        for a in range(nd):
            row[f"bbox_min_{a}"] = int(table[f"bbox-{a}"][k])
        for a in range(nd):
            row[f"bbox_max_{a}"] = int(table[f"bbox-{a + nd}"][k])
        if intensity is not None:
            row["mean_intensity"] = float(table["intensity_mean"][k])
        row["equivalent_diameter"] = float(table["equivalent_diameter_area"][k])
        rows.append(row)
    return rows
