"""Pictures of instances: each object in its own colour, or its outline, over the image (2D).

For the cell demo (objects in distinct colours with their count) and the evaluation report
(outlines of the predicted and true objects). Colours are fixed per id (golden-ratio hues), so
the same object has the same colour in every picture of a run.

Example:
    >>> import numpy as np
    >>> ids = np.zeros((8, 8), int); ids[1:4, 1:4] = 1; ids[4:7, 4:7] = 2
    >>> rgb = overlay(np.zeros((8, 8)), ids, mode="outline")
    >>> rgb.shape, rgb.dtype.name, bool((rgb[2, 2] == 0).all()), bool(rgb[1, 1].any())
    ((8, 8, 3), 'uint8', True, True)
"""

from __future__ import annotations

import colorsys
from typing import Any

import numpy as np

__all__ = ["colours", "overlay"]

MODES = ("fill", "outline")


def colours(n: int) -> np.ndarray:
    """``(n + 1, 3)`` uint8 RGB: row 0 black (background), row ``k`` the colour of id ``k``.

    Successive ids differ in hue by the golden angle, so neighbours (often consecutive ids) contrast.
    """
    hues = (np.arange(1, n + 1) * 0.618033988749895) % 1.0
    rgb = [colorsys.hsv_to_rgb(h, 0.85, 1.0) for h in hues]
    palette = np.vstack([np.zeros((1, 3)), np.asarray(rgb).reshape(-1, 3)]) * 255
    return palette.round().astype(np.uint8)


def overlay(image: Any, ids: Any, *, mode: str = "fill", alpha: float = 0.45) -> np.ndarray:
    """An ``H W 3`` uint8 picture of ``ids`` over ``image`` (grey ``H W`` or RGB ``H W 3``, any range).

    Args:
        image: the picture under the objects; scaled to its own min-max.
        ids: ``H W`` instance ids, 0 = background.
        mode: ``"fill"``: objects tinted with their colour (``alpha`` of it); ``"outline"``: their
            inner boundaries drawn in full colour (touching objects keep separate outlines).
        alpha: opacity of the fill.

    Raises:
        ValueError: for mismatched shapes, an unknown mode or ``alpha`` outside ``[0, 1]``.
    """
    from skimage.segmentation import find_boundaries

    ids = np.asarray(ids)
    img = np.asarray(image, dtype=np.float64)
    if ids.ndim != 2 or img.shape[:2] != ids.shape or img.ndim not in (2, 3):
        raise ValueError(f"need a 2D id map and an image of the same H W, got {ids.shape} and {img.shape}")
    if mode not in MODES:
        raise ValueError(f"mode must be one of {list(MODES)}, got {mode!r}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha!r}")
    lo, hi = float(img.min()), float(img.max())
    grey = (img - lo) / (hi - lo) if hi > lo else np.zeros_like(img)
    base = np.repeat(grey[..., None], 3, -1) if grey.ndim == 2 else grey[..., :3]
    palette = colours(int(ids.max()) if ids.size else 0).astype(np.float64) / 255.0
    tint = palette[ids]
    if mode == "fill":
        where = (ids > 0)[..., None]
        out = np.where(where, (1 - alpha) * base + alpha * tint, base)
    else:
        edge = find_boundaries(ids, mode="inner") & (ids > 0)
        out = np.where(edge[..., None], tint, base)
    return (np.clip(out, 0, 1) * 255).round().astype(np.uint8)
