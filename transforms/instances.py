"""Training targets from an instance map: 3-class "centre + border" encoding, distance to the boundary.

nnU-Net turns instance tasks into semantic ones by labelling each object's border as its own
class, so that a network trained with an ordinary loss learns where touching objects part; the
instances are then recovered by seeded watershed (:mod:`pipeline.instances.postprocess`). The
distance-to-boundary map (StarDist's object probability, DIST in Naylor et al. 2019) is the
regression alternative. Both are computed in one pass for all objects with the multi-label
Euclidean distance transform of ``edt``: for each object pixel, the distance to the nearest pixel
that is not of the same object (background or another object), in pixels or physical units.
The image edge is not a boundary (an object cut by a crop keeps its interior there).

Array functions take ``H W [D]`` label maps (numpy); :class:`InstanceTargetsd` is the MONAI
dictionary transform over channel-first ``1 H W [D]`` tensors. :mod:`pipeline.instances.targets`
re-exports the array functions (transforms import nothing from ``pipeline`` but errors and the
registry, so the code lives here).

Example:
    >>> import numpy as np
    >>> ids = np.zeros((1, 8), np.int32); ids[0, 1:4] = 1; ids[0, 4:7] = 2
    >>> instance_classes(ids).tolist()  # 1 px borders: 2 where objects meet or end
    [[0, 2, 1, 2, 2, 1, 2, 0]]
    >>> boundary_distance(ids, normalise=True).tolist()
    [[0.0, 0.5, 1.0, 0.5, 0.5, 1.0, 0.5, 0.0]]
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform
from monai.utils import convert_to_dst_type

__all__ = [
    "BACKGROUND",
    "INTERIOR",
    "BORDER",
    "boundary_distance",
    "instance_classes",
    "InstanceTargetsd",
    "InstanceLabeld",
]

BACKGROUND, INTERIOR, BORDER = 0, 1, 2
"""Class indices of the 3-class encoding."""

BORDERS = ("all", "touching")


def _ids(instances: Any) -> np.ndarray:
    arr = np.asarray(instances)
    if arr.ndim not in (2, 3):
        raise ValueError(f"an instance map must be H W or H W D (no channel axis), got shape {arr.shape}")
    if not np.issubdtype(arr.dtype, np.integer):
        if arr.size and not np.all(np.mod(arr, 1) == 0):
            raise ValueError("an instance map must hold whole-number ids")
    arr = arr.astype(np.uint32 if arr.size == 0 or arr.max() < 2**32 else np.uint64)
    return np.ascontiguousarray(arr)


def _spacing(spacing: Sequence[float] | None, ndim: int) -> tuple[float, ...]:
    if spacing is None:
        return (1.0,) * ndim
    spacing = tuple(float(s) for s in spacing)
    if len(spacing) != ndim or any(s <= 0 for s in spacing):
        raise ValueError(f"spacing must be {ndim} positive values, got {spacing!r}")
    return spacing


def boundary_distance(instances: Any, spacing: Sequence[float] | None = None, *, normalise: bool = False) -> np.ndarray:
    """Distance of each object pixel to its object's boundary (0 on background), float32.

    Args:
        instances: ``H W [D]`` ids, 0 = background.
        spacing: pixel size per axis (physical units); default 1.
        normalise: divide by each object's largest distance, so every object peaks at 1.

    Returns:
        ``H W [D]`` float32: 1 spacing unit on an object's outer pixel row that faces another
        object or background, growing inwards; in ``[0, 1]`` with ``normalise``.
    """
    import edt

    ids = _ids(instances)
    dist = edt.edt(ids, anisotropy=_spacing(spacing, ids.ndim), black_border=False).astype(np.float32)
    if normalise and ids.any():
        from scipy import ndimage

        labels, inverse = np.unique(ids, return_inverse=True)
        inverse = inverse.reshape(ids.shape)
        peak = np.asarray(ndimage.maximum(dist, inverse, index=np.arange(labels.size)), dtype=np.float32)
        peak[peak == 0] = 1.0
        dist = dist / peak[inverse]
        dist[ids == 0] = 0.0
    return dist


def instance_classes(
    instances: Any,
    border_width: float = 1.0,
    spacing: Sequence[float] | None = None,
    *,
    border: str = "all",
) -> np.ndarray:
    """The 3-class encoding: 0 background, 1 object interior, 2 object border, uint8.

    Args:
        instances: ``H W [D]`` ids, 0 = background.
        border_width: object pixels within this distance of their boundary are border (1 = the
            outer pixel row, in the 4/6-neighbour sense), in the units of ``spacing``.
        spacing: pixel size per axis; default 1.
        border: ``"all"``: every object's border (nnU-Net's "centre + border");
            ``"touching"``: only where an object is within ``2 * border_width`` of another (an
            isolated object has no border pixels).

    Returns:
        ``H W [D]`` uint8 class indices.

    Raises:
        ValueError: for a non-positive ``border_width``, an unknown ``border`` or a bad map.

    Example:
        >>> ids = np.zeros((1, 9), np.int32); ids[0, 0:4] = 1; ids[0, 4:7] = 2
        >>> instance_classes(ids, border="touching").tolist()
        [[1, 1, 1, 2, 2, 1, 1, 0, 0]]
    """
    if not border_width > 0:
        raise ValueError(f"border_width must be > 0, got {border_width!r}")
    if border not in BORDERS:
        raise ValueError(f"border must be one of {list(BORDERS)}, got {border!r}")
    ids = _ids(instances)
    out = np.zeros(ids.shape, np.uint8)
    fg = ids > 0
    if not fg.any():
        return out
    if border == "all":
        dist = boundary_distance(ids, spacing)
    else:
        from scipy import ndimage

        # give every background pixel to its nearest object: boundaries of this map are the
        # contacts between objects (and the mid-lines of the gaps between close ones)
        sp = _spacing(spacing, ids.ndim)
        nearest = ndimage.distance_transform_edt(~fg, sampling=sp, return_distances=False, return_indices=True)
        dist = boundary_distance(ids[tuple(nearest)], sp)
    out[fg] = INTERIOR
    out[fg & (dist <= border_width + 1e-6)] = BORDER
    return out


class InstanceTargetsd(MapTransform):
    """Add instance training targets (3-class map and/or distance map) computed from an instance key.

    Args:
        keys: instance keys, ``1 H W [D]`` ids (float32 after loading); one is expected.
        classes_key: where to write the 3-class map (``1 H W [D]`` float32 class indices, the
            layout of ``label``, so Dice-CE and the band losses apply as they are); ``None`` = none.
        distance_key: where to write the normalised distance map (``1 H W [D]`` float32 in
            ``[0, 1]``, for a regression loss); ``None`` = none.
        border_width: see :func:`instance_classes` (pixels, or physical units with ``spacing``).
        border: ``"all"`` or ``"touching"``, see :func:`instance_classes`.
        spacing: pixel size per spatial axis; ``None`` = 1.
        allow_missing_keys: skip absent keys instead of raising.

    Raises:
        ValueError: if both output keys are ``None``, or for bad ``border_width`` / ``border``.

    Example:
        >>> ids = torch.zeros(1, 8, 8); ids[0, 1:4, 1:7] = 1; ids[0, 4:7, 1:7] = 2
        >>> out = InstanceTargetsd("instance", classes_key="label", distance_key="instance_dist")({"instance": ids})
        >>> out["label"].shape, int(out["label"].max()), float(out["instance_dist"].max())
        (torch.Size([1, 8, 8]), 2, 1.0)
    """

    def __init__(
        self,
        keys: KeysCollection,
        classes_key: str | None = "label",
        distance_key: str | None = "instance_dist",
        border_width: float = 1.0,
        border: str = "all",
        spacing: Sequence[float] | None = None,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        if classes_key is None and distance_key is None:
            raise ValueError("InstanceTargetsd needs classes_key and/or distance_key; both are None")
        instance_classes(np.zeros((1, 1), np.int32), border_width, border=border)  # validates the settings
        self.classes_key, self.distance_key = classes_key, distance_key
        self.border_width, self.border, self.spacing = float(border_width), border, spacing

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            img = d[key]
            arr = img.detach().cpu().numpy() if isinstance(img, torch.Tensor) else np.asarray(img)
            if arr.ndim not in (3, 4) or arr.shape[0] != 1:
                raise ValueError(f"{key!r} must be one channel, 1 H W [D], got shape {tuple(arr.shape)}")
            ids = arr[0]
            if self.classes_key is not None:
                classes = instance_classes(ids, self.border_width, self.spacing, border=self.border)
                d[self.classes_key] = convert_to_dst_type(classes[None].astype(np.float32), img, dtype=torch.float32)[0]
            if self.distance_key is not None:
                dist = boundary_distance(ids, self.spacing, normalise=True)
                d[self.distance_key] = convert_to_dst_type(dist[None], img, dtype=torch.float32)[0]
        return d


class InstanceLabeld(MapTransform):
    """Prepare an instance task's keys: the id map in ``instance_key``, the foreground in ``label_key``.

    The id map comes from ``instance_key`` when the item has it (DSB2018's per-nucleus masks,
    loaded as ids), else from ``label_key`` read as an id map (a TIFF / PNG16 / NIfTI of object
    ids). ``label_key`` then becomes the binary foreground, so foreground-centred random crops
    work as for a semantic task; :class:`InstanceTargetsd` overwrites it with the 3-class map
    after the spatial augmentation.

    Example:
        >>> ids = torch.zeros(1, 4, 4); ids[0, :2, :2] = 7
        >>> out = InstanceLabeld()({"label": ids})
        >>> int(out["instance"].max()), int(out["label"].max())
        (7, 1)
    """

    def __init__(self, label_key: str = "label", instance_key: str = "instance") -> None:
        super().__init__([label_key])
        self.label_key, self.instance_key = label_key, instance_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        if self.instance_key not in d:
            if self.label_key not in d:
                return d
            d[self.instance_key] = d[self.label_key]
        ids = d[self.instance_key]
        fg = (ids > 0).to(torch.float32) if isinstance(ids, torch.Tensor) else (np.asarray(ids) > 0).astype(np.float32)
        d[self.label_key] = fg
        return d
