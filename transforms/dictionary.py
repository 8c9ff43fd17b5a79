"""Dictionary transforms of our own (MONAI ``MapTransform`` s over datalist items).

Sections: mean filter; loading a datalist item with checks; channel selection and label mapping;
signed distance maps; random rotation, zoom and flip in one resample.
"""

from __future__ import annotations

import math
import os
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
from monai.config import KeysCollection
from monai.config.type_definitions import NdarrayOrTensor
from monai.data import MetaTensor
from monai.transforms import MapTransform, RandomizableTransform
from monai.utils import ensure_tuple_rep

from pipeline.errors import DataError, list_some
from pipeline.registry import BATCH_INPUTS
from transforms.array import MapLabels, MeanFilter, SelectChannels, SignedDistanceMap
from transforms.keys import CASE, DIST, FOV, IMAGE, INSTANCE, LABEL, LABEL_SPACING

__all__ = [
    "MeanFilterd",
    "ImageReader",
    "LoadCased",
    "SelectChannelsd",
    "MapLabelsd",
    "SignedDistanceMapd",
    "RecordSpacingd",
    "RandSpatiald",
]

# ============================================================================ mean filter (data helper)


class MeanFilterd(MapTransform):
    """Dictionary wrapper of :class:`transforms.array.MeanFilter`.

    Args:
        keys: keys of ``C H W [D]`` images to filter.
        kernel_size: odd window size, one for all spatial axes or one per axis.
        allow_missing_keys: skip absent keys instead of raising.
    """

    def __init__(self, keys: KeysCollection, kernel_size: int | Sequence[int] = 3, allow_missing_keys: bool = False):
        super().__init__(keys, allow_missing_keys)
        self.filter = MeanFilter(kernel_size)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.filter(d[key])
        return d


# ============================================================================ loading (data helper)

_BINARY = (frozenset({0.0, 1.0}), frozenset({0.0, 255.0}))


@runtime_checkable
class ImageReader(Protocol):
    """What :class:`LoadCased` reads files with (the pipeline passes :func:`pipeline.io.read_image`).

    Called with one path; returns that file as a channel-first ``MetaTensor`` ``C *spatial``
    (2D files ``C W H``, NIfTI ``C X Y Z``) of raw values, with MONAI's metadata (``affine``,
    ``filename_or_obj``) so that orientation, spacing and ``Invertd`` work. A bad file (missing,
    unsupported, unreadable) raises :class:`~pipeline.errors.DataError` naming it; any other
    exception is reported by :class:`LoadCased` as an unreadable file.

    Example:
        >>> def read_zeros(path):
        ...     return MetaTensor(torch.zeros(1, 4, 4), meta={"filename_or_obj": str(path)})
        >>> isinstance(read_zeros, ImageReader)
        True
    """

    def __call__(self, path: str | os.PathLike, /) -> MetaTensor: ...


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0][:200]}" if text else type(err).__name__


class LoadCased(MapTransform):
    """Load the files of one datalist item into channel-first ``MetaTensor`` s, and check them.

    Files are read by the injected ``reader`` (:class:`ImageReader`; the pipeline passes
    :func:`pipeline.io.read_image`, so training, checks, inference and evaluation read a file the
    same way). Every failure is a :class:`DataError` naming the file and the problem, and the
    loaded arrays are checked before any transform can trip over them:

    - unreadable, truncated or missing file; unsupported suffix (from the reader);
    - wrong number of spatial dims (a 4D volume or a 2D slice where 3D is expected);
    - an image with the wrong number of channels (``image_channels``), NaN or Inf intensities;
    - a label / fov / instance map with more than one distinct channel (RGB where grey is
      expected; identical channels are collapsed to one);
    - spatial shapes (or, in 3D, affines) that differ between the image and the other keys.

    A list of paths under ``image`` is stacked as channels (nnU-Net). A list under a key in
    ``mask_keys`` holds one binary mask (0/1 or 0/255) per object (DSB2018): ``instance`` keys
    become an id map (0 = background, mask ``i`` → ``i + 1``; where masks overlap the first
    wins), other keys the union (0/1). A mask with other values is a :class:`DataError`.

    Values are the files' raw values: mapping labels to classes is :class:`MapLabelsd`'s job,
    with one table for the whole dataset.

    Args:
        keys: keys to load; absent keys are skipped unless listed in ``required``.
        reader: reads one file (:class:`ImageReader`).
        spatial_dims: 2 or 3.
        image_channels: channels the image must have after loading, or ``None`` for any.
        required: keys that every item must have.
        image_key: the key whose shape the others must match.
        mask_keys: keys whose list values are per-object masks.
        instance_keys: mask keys that become id maps instead of unions.
    """

    def __init__(
        self,
        keys: KeysCollection = (IMAGE, LABEL, FOV, INSTANCE),
        *,
        reader: ImageReader,
        spatial_dims: int = 2,
        image_channels: int | None = None,
        required: Sequence[str] = (IMAGE,),
        image_key: str = IMAGE,
        mask_keys: Sequence[str] = (LABEL, INSTANCE, FOV),
        instance_keys: Sequence[str] = (INSTANCE,),
    ) -> None:
        super().__init__(keys, allow_missing_keys=True)
        if not callable(reader):
            raise TypeError(f"reader must be callable (path -> MetaTensor), got {type(reader).__name__}")
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims!r}")
        if image_channels is not None and (not isinstance(image_channels, int) or image_channels < 1):
            raise ValueError(f"image_channels must be a positive int or None, got {image_channels!r}")
        self.reader = reader
        self.spatial_dims = spatial_dims
        self.image_channels = image_channels
        self.required = tuple(required)
        self.image_key = image_key
        self.mask_keys = tuple(mask_keys)
        self.instance_keys = tuple(instance_keys)

    # -- reading

    def _read_one(self, path: Any) -> MetaTensor:
        try:
            x = self.reader(path)
        except DataError:
            raise
        except Exception as err:  # a reader failure is a bad file
            raise DataError(f"{path}: cannot read ({_first_line(err)})") from err
        if not isinstance(x, MetaTensor):
            x = MetaTensor(torch.as_tensor(x), meta={"filename_or_obj": str(path)})
        return x

    def _read(self, paths: Any) -> MetaTensor:
        names = [paths] if isinstance(paths, (str, Path)) else list(paths)
        if not names:
            raise DataError("empty list of files")
        parts = [self._read_one(name) for name in names]
        if len(parts) == 1:
            return parts[0]
        for name, part in zip(names[1:], parts[1:], strict=True):
            if part.shape[1:] != parts[0].shape[1:]:
                raise DataError(
                    f"{name}: shape {tuple(part.shape[1:])} differs from {names[0]} {tuple(parts[0].shape[1:])}"
                )
        return MetaTensor(torch.cat([p.as_tensor() for p in parts]), meta=dict(parts[0].meta))

    def _read_masks(self, paths: Sequence[Any]) -> MetaTensor:
        """Per-object binary masks → id map ``1 H W [D]`` (mask ``i`` → ``i + 1``, first wins)."""
        if not paths:
            raise DataError("empty list of mask files")
        first = self._read_one(paths[0])
        ids = np.zeros(first.shape[1:], dtype=np.int32)
        for index, path in enumerate(paths):
            arr = np.asarray(first if index == 0 else self._read_one(path))
            if arr.shape[0] > 1 and np.any(arr != arr[:1]):
                raise DataError(f"{path}: mask has {arr.shape[0]} different channels; expected one binary mask")
            arr = arr[0]
            if arr.shape != ids.shape:
                raise DataError(f"{path}: mask shape {arr.shape} differs from {paths[0]} {ids.shape}")
            values = frozenset(np.unique(arr).astype(float).tolist())
            if not any(values <= allowed for allowed in _BINARY):
                shown = list_some([f"{v:g}" for v in sorted(values)], 6)
                raise DataError(f"{path}: mask is not binary (values {shown}; expected 0/1 or 0/255)")
            ids[(arr > 0) & (ids == 0)] = index + 1
        return MetaTensor(torch.from_numpy(ids[None].astype(np.float32)), meta=dict(first.meta))

    # -- checking

    def _check(self, key: Hashable, x: MetaTensor, source: Any) -> MetaTensor:
        name = source if isinstance(source, (str, Path)) else source[0]
        what = "a 2D image" if self.spatial_dims == 2 else "a 3D volume"
        spatial = x.ndim - 1
        if spatial != self.spatial_dims:
            hint = " (a 4D volume?)" if spatial == 4 else ""
            raise DataError(f"{name}: expected {what}, got {spatial} spatial dims, shape {tuple(x.shape[1:])}{hint}")
        if key == self.image_key:
            if self.image_channels is not None and x.shape[0] != self.image_channels:
                kind = "RGB" if x.shape[0] == 3 else ("a 4D volume" if self.spatial_dims == 3 else "multi-channel")
                raise DataError(
                    f"{name}: image has {x.shape[0]} channels ({kind}), expected {self.image_channels} "
                    "(network.in_channels); pick channels with transforms.channels"
                )
            if not bool(torch.isfinite(x).all()):
                raise DataError(f"{name}: image has NaN or Inf intensities")
        elif x.shape[0] > 1:
            if not bool((x == x[:1]).all()):
                raise DataError(f"{name}: {key} has {x.shape[0]} different channels; expected one label map")
            x = x[:1]
        return x

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        case = d.get(CASE, "?")
        for key in self.required:
            if key not in d:
                raise DataError(f"datalist item {case!r} has no {key!r} entry")
        masks: dict[tuple[str, ...], MetaTensor] = {}
        sources: dict[Hashable, Any] = {}
        for key in self.key_iterator(d):
            value = d[key]
            sources[key] = value
            if isinstance(value, (list, tuple)) and key in self.mask_keys:
                cache = tuple(str(v) for v in value)
                if cache not in masks:
                    masks[cache] = self._read_masks(value)
                ids = masks[cache]
                x = ids.clone() if key in self.instance_keys else (ids > 0).to(torch.float32)
            else:
                x = self._read(value)
            d[key] = self._check(key, x, value)
        ref = d.get(self.image_key)
        if ref is None:
            return d
        first = sources[self.image_key]
        first = first if isinstance(first, (str, Path)) else first[0]
        for key, value in sources.items():
            if key == self.image_key:
                continue
            other = value if isinstance(value, (str, Path)) else value[0]
            if tuple(d[key].shape[1:]) != tuple(ref.shape[1:]):
                raise DataError(
                    f"{first}: image shape {tuple(ref.shape[1:])} differs from {key} {other} "
                    f"shape {tuple(d[key].shape[1:])}"
                )
            if self.spatial_dims == 3 and not np.allclose(
                np.asarray(ref.affine), np.asarray(d[key].affine), atol=1e-3, rtol=1e-4
            ):
                raise DataError(f"{first}: image and {key} {other} have different affines (voxel geometry)")
        return d


# ============================================================================ channels and labels (data helper)


class SelectChannelsd(MapTransform):
    """Dictionary wrapper of :class:`transforms.array.SelectChannels`."""

    def __init__(self, keys: KeysCollection, channels: Sequence[int], allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.select = SelectChannels(channels)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.select(d[key])
        return d


class MapLabelsd(MapTransform):
    """Dictionary wrapper of :class:`transforms.array.MapLabels` (raw values → class indices, strictly)."""

    def __init__(
        self,
        keys: KeysCollection,
        values: Sequence[float] | None = None,
        num_classes: int = 2,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.mapper = MapLabels(values, num_classes)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.mapper(d[key])
        return d


# =========================================================================== distance maps (losses)


class SignedDistanceMapd(MapTransform):
    """Dictionary wrapper of :class:`transforms.array.SignedDistanceMap`: ``label`` → ``dist``.

    Where it goes in a chain (measured in ``bench/distance.py``): **after** the random spatial
    transforms, on the augmented patch::

        LoadImaged → EnsureChannelFirstd → Spacingd → intensity → label mapping   (cached)
        → RandCropByPosNegLabeld → RandRotated / RandZoomd / RandFlipd
        → SignedDistanceMapd(keys="label", num_classes=K, spacing=<Spacingd pixdim>)

    There the maps are exact for the patch the network sees (bound: equal to an exact scipy
    recomputation on the augmented label within 1e-5), and computing them costs less than
    carrying cached maps through the same transforms: 31 ms against 54 ms of extra
    rotate/zoom/flip work for a 2-class 96³ patch, 2 ms against 4 ms for 256², on one core.
    Carrying (bilinear, border padding, values × zoom) also errs by 0.34 voxel on average
    (p99 1.5) within 5 voxels of the edge. Without random spatial transforms (validation, or
    crops only), put it before the first random transform and the dataset caches it.

    Pass ``spacing`` explicitly after ``RandZoomd``: zooming rescales the label's affine, so
    reading the spacing from it would undo the zoom in physical units, while the boundary loss
    (and its GPU recomputation, which uses its own ``spacing``) measure in the training grid.

    Args:
        keys: label key(s), default ``"label"`` (``transforms.keys.LABEL``).
        num_classes: ``K``, background included.
        spacing: voxel size per spatial axis; ``None`` reads the label's ``pixdim`` (1.0 for a
            plain array).
        dist_keys: output key per input key, default ``"dist"`` (``transforms.keys.DIST``).
        backend: ``"auto"``, ``"edt"`` or ``"scipy"``.
        allow_missing_keys: don't raise when a key is missing.
        spacing_key: where ``spacing=None`` reads the spacing first (:class:`RecordSpacingd`'s
            output, for chains whose random part runs without metadata); else the label's ``pixdim``.

    Example:
        >>> import numpy as np
        >>> d = {"label": np.zeros((1, 8, 8), np.int64)}
        >>> SignedDistanceMapd(keys="label", num_classes=3)(d)["dist"].shape
        (3, 8, 8)
    """

    backend = SignedDistanceMap.backend

    def __init__(
        self,
        keys: KeysCollection = LABEL,
        num_classes: int = 2,
        spacing: float | Sequence[float] | None = None,
        dist_keys: KeysCollection = DIST,
        backend: str = "auto",
        allow_missing_keys: bool = False,
        spacing_key: str | None = None,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.dist_keys = ensure_tuple_rep(dist_keys, len(self.keys))
        self.spacing_key = spacing_key
        self.transform = SignedDistanceMap(num_classes=num_classes, spacing=spacing, backend=backend)

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        d = dict(data)
        recorded = d.get(self.spacing_key) if self.spacing_key is not None and self.transform.spacing is None else None
        for key, dist_key in self.key_iterator(d, self.dist_keys):
            d[dist_key] = self.transform(d[key], spacing=recorded)
        return d


class RecordSpacingd(MapTransform):
    """Store the voxel spacing of ``keys`` (a ``MetaTensor``'s ``pixdim``) under ``spacing_key``.

    Deterministic, so a cache keeps it. The training chain puts it before its random transforms,
    which run without MONAI's metadata (:class:`transforms.chains.Chain`), so that a later
    transform that measures in physical units (:class:`SignedDistanceMapd`) still has the
    spacing: the spacing of the training grid before any zoom (a zoom rescales the affine, and
    the boundary loss measures in the grid the network sees). Nothing is stored for a plain array.

    Example:
        >>> from monai.data import MetaTensor
        >>> label = MetaTensor(torch.zeros(1, 4, 4), affine=torch.diag(torch.tensor([0.5, 2.0, 1.0, 1.0])))
        >>> RecordSpacingd()({"label": label})["label_spacing"]
        (0.5, 2.0)
    """

    def __init__(self, keys: KeysCollection = LABEL, spacing_key: str = LABEL_SPACING) -> None:
        super().__init__(keys, allow_missing_keys=True)
        self.spacing_key = spacing_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            value = d[key]
            if isinstance(value, MetaTensor):
                d[self.spacing_key] = tuple(float(v) for v in value.pixdim.tolist()[: value.ndim - 1])
        return d


@BATCH_INPUTS.register(DIST)
def _distance_input(settings: Any) -> SignedDistanceMapd:
    """``dist`` for a loss that declares it (the boundary loss): signed distance maps of the
    augmented crop's label, in the training grid's spacing: the resampling target in 3D, else the
    label's own as :class:`RecordSpacingd` recorded it before the random transforms (so before
    any zoom; 1 per pixel for images without a spacing)."""
    return SignedDistanceMapd(
        LABEL, num_classes=settings.num_classes, spacing=settings.spacing, spacing_key=LABEL_SPACING
    )


# =========================================================================== spatial augmentation


def _rotation(angles: Sequence[float]) -> np.ndarray:
    """Rotation matrix in the tensor's spatial axis order: one in-plane angle in 2D; in 3D the
    angles about axes 0, 1 and 2, applied in that order (MONAI's ``Rotate(angle=(x, y, z))``)."""
    if len(angles) == 1:
        c, s = math.cos(angles[0]), math.sin(angles[0])
        return np.array([[c, -s], [s, c]])
    out = np.eye(3)
    for (i, j), a in zip(((1, 2), (2, 0), (0, 1)), angles, strict=True):  # right-handed about axes 0, 1, 2
        c, s = math.cos(a), math.sin(a)
        r = np.eye(3)
        r[i, i], r[i, j], r[j, i], r[j, j] = c, -s, s, c
        out = out @ r
    return out


class RandSpatiald(RandomizableTransform, MapTransform):
    """Random rotation, isotropic zoom and flips of every key by one resampling.

    Our own, in place of MONAI's ``RandRotated`` → ``RandZoomd`` → ``RandFlipd`` (per axis),
    which draw the same parameters (each with its own probability: angles uniform in
    ``±ranges``, one zoom factor uniform in ``zoom_range`` (> 1 magnifies, the output keeps its
    size), a flip per axis) but resample once per transform, and whose Python machinery (type
    conversions, lazy-resampling bookkeeping, ``push_transform`` even with metadata off: ~15,000
    function calls per cached case of ``demo_vessel2d``) cost more than the resampling itself:
    measured (``bench/throughput.py --phases``, one thread) 8 ms of CPU per case of 4 crops of
    96², against the 1-2 ms here. Here rotation, zoom and flips are composed into one affine map
    of the crop's centre and applied with one ``affine_grid`` and one ``grid_sample`` per key
    (bilinear for ``modes`` "bilinear", nearest otherwise: labels stay labels; padding by the
    border value, as MONAI's rotation pads), so a rotated and zoomed crop is also interpolated
    once instead of twice. A crop drawn only flips is flipped exactly (``torch.flip``), one drawn
    nothing is returned as it came. Rotation is in voxel units, as MONAI's.

    For training crops, which are never inverted: nothing is recorded for ``Invertd``.

    Args:
        keys: keys of ``C *spatial`` arrays (all the same spatial shape).
        modes: ``"bilinear"`` or ``"nearest"`` per key.
        rotate_prob: probability of a rotation.
        ranges: the largest angle in radians; one (2D in-plane; 3D about axis 2) or three (3D,
            about axes 0, 1, 2).
        zoom_prob: probability of a zoom.
        zoom_range: ``(low, high)`` zoom factor.
        flip_prob: probability of a flip, drawn per axis of ``flip_axes``.
        flip_axes: spatial axes that may flip.
        allow_missing_keys: skip absent keys.

    Example:
        >>> t = RandSpatiald(["image", "label"], ["bilinear", "nearest"], flip_prob=1.0, flip_axes=[0])
        >>> out = t({"image": torch.arange(4.0).reshape(1, 2, 2), "label": torch.tensor([[[0.0, 1.0], [1.0, 1.0]]])})
        >>> out["image"].tolist(), out["label"].tolist()
        ([[[2.0, 3.0], [0.0, 1.0]]], [[[1.0, 1.0], [0.0, 1.0]]])
    """

    def __init__(
        self,
        keys: KeysCollection,
        modes: Sequence[str],
        *,
        rotate_prob: float = 0.0,
        ranges: Sequence[float] = (0.0,),
        zoom_prob: float = 0.0,
        zoom_range: Sequence[float] = (1.0, 1.0),
        flip_prob: float = 0.0,
        flip_axes: Sequence[int] = (),
        allow_missing_keys: bool = False,
    ) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        RandomizableTransform.__init__(self, prob=1.0)
        self.modes = ensure_tuple_rep(modes, len(self.keys))
        for m in self.modes:
            if m not in ("bilinear", "nearest"):
                raise ValueError(f"modes are 'bilinear' or 'nearest', got {m!r}")
        self.rotate_prob, self.ranges = float(rotate_prob), [float(r) for r in ranges]
        self.zoom_prob, self.zoom_range = float(zoom_prob), (float(zoom_range[0]), float(zoom_range[1]))
        self.flip_prob, self.flip_axes = float(flip_prob), tuple(int(a) for a in flip_axes)
        self._angles: list[float] | None = None
        self._zoom: float | None = None
        self._flips: tuple[int, ...] = ()

    def randomize(self, data: Any = None) -> None:
        """Draw the angles (or none), the zoom (or none) and the flipped axes; always the same
        number of draws, so one crop's draws do not shift the next one's."""
        rotate, zoom = self.R.rand() < self.rotate_prob, self.R.rand() < self.zoom_prob
        angles = [self.R.uniform(-r, r) for r in self.ranges]
        factor = self.R.uniform(*self.zoom_range)
        flips = [a for a in self.flip_axes if self.R.rand() < self.flip_prob]
        self._angles, self._zoom, self._flips = (angles if rotate else None), (factor if zoom else None), tuple(flips)

    def _matrix(self, dims: int) -> np.ndarray:
        """Where each output voxel samples the input: offsets from the centre, in voxels."""
        m = np.eye(dims)
        if self._angles is not None:
            angles = self._angles if dims == 2 or len(self._angles) == 3 else [0.0, 0.0, self._angles[0]]
            m = _rotation(angles)  # as MONAI's Rotate(angle) samples (to 1e-6 in 2D and about axis 2)
        if self._zoom is not None:
            m = m / self._zoom
        for a in self._flips:
            m[:, a] = -m[:, a]
        return m

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        self.randomize()
        present = list(self.key_iterator(d, self.modes))  # raises on a missing key unless allowed
        if not present:
            return d
        if self._angles is None and self._zoom is None:
            if self._flips:
                for key, _ in present:
                    d[key] = torch.flip(torch.as_tensor(d[key]), [a + 1 for a in self._flips])
            return d
        shape = torch.as_tensor(d[present[0][0]]).shape[1:]
        dims = len(shape)
        # voxel offsets -> normalised coordinates (align_corners=False: u = x_norm * size / 2),
        # and affine_grid's coordinate order is the last spatial axis first
        half = np.array(shape, dtype=np.float64) / 2.0
        theta = (self._matrix(dims) * half[None, :] / half[:, None])[::-1, ::-1]
        theta = torch.as_tensor(np.concatenate([theta, np.zeros((dims, 1))], axis=1), dtype=torch.float32)
        grid = torch.nn.functional.affine_grid(theta[None], [1, 1, *shape], align_corners=False)
        for key, mode in present:
            x = torch.as_tensor(d[key])
            if x.shape[1:] != shape:
                raise ValueError(f"{key!r} has spatial shape {tuple(x.shape[1:])}, {present[0][0]!r} {tuple(shape)}")
            x = x.as_subclass(torch.Tensor) if type(x) is not torch.Tensor else x
            out = torch.nn.functional.grid_sample(
                x[None].float(), grid, mode=mode, padding_mode="border", align_corners=False
            )[0]
            d[key] = out.to(x.dtype)
        return d
