"""Transform chains built from typed settings (:class:`ChainSettings`): :func:`build_transforms`.

One chain per mode, for 2D and 3D::

    load (LoadCased: NIfTI / PNG / TIFF / GIF, channel first, checked)
    -> [3D] Orientationd (RAS) -> [3D] Spacingd (transforms.spacing)
    -> SelectChannelsd (transforms.channels, e.g. DRIVE's green [1])
    -> [train] CropForegroundd (transforms.crop_foreground)
    -> intensity: NormalizeIntensityd (zscore) | ScaleIntensityRanged (window; ct: clip + dataset z-score)
                  | ScaleIntensityd (minmax)
    -> MapLabelsd (label values -> classes, strict, one table per dataset; fov -> 0/1)  [train, val]
       (instance task: InstanceLabeld instead: ids in ``instance``, the foreground in ``label``)
    -> [train] RecordSpacingd -> SpatialPadd -> RandCropByPosNegLabeld (num_samples, pos_neg_ratio)
               | RandCropByLabelClassesd (class_balanced: foreground crops shared evenly by class);
       from the crop on without MONAI's metadata (plain tensors: see :class:`Chain`)
    -> [train] RandSpatiald (rotation, zoom, flips per axis: one resample), Rand{2,3}DElasticd
    -> [train] RandAdjustContrastd (gamma), RandGaussianNoised, RandScaleIntensityFixedMeand (contrast)
    -> [train] the extra batch inputs a loss declares (``settings.inputs``, e.g. ``dist``:
       SignedDistanceMapd on the augmented crop), each built by its BATCH_INPUTS entry
    -> [instance task; train, val] InstanceTargetsd: ``label`` = background / interior / border
       of the (augmented) id map
    -> EnsureTyped (float32)

Everything before the first random transform is deterministic, so a MONAI ``CacheDataset``
caches it once per case.

Spatial keys: ``image`` (bilinear), ``label``, ``fov``, ``instance`` (nearest). MONAI's random
dictionary transforms draw their parameters once per call and apply them to every key, so
image and label maps stay aligned.

Writing predictions back (infer mode): the chain records every invertible spatial step in the
image's ``MetaTensor`` (orientation and spacing in 3D; no crop or pad happens in infer or val
mode). After sliding-window inference on ``d["image"]``::

    d["pred"] = logits.argmax(0, keepdim=True)                 # C H W [D] in the chain's geometry
    d = Invertd(keys="pred", transform=chain, orig_keys="image", nearest_interp=True)(d)
    SaveImage(output_dir=out, output_ext=".nii.gz" or ".png", output_postfix="",
              separate_folder=False, output_dtype=np.uint8)(d["pred"])

``Invertd`` undoes spacing and orientation, so the NIfTI gets the input's shape and affine. 2D
files are loaded by the injected reader in MONAI's PIL convention (spatial axes ``W, H``; see
:mod:`pipeline.io`) and MONAI's ``PILWriter`` transposes back, so the PNG lies over the input.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from monai.data import get_track_meta, set_track_meta
from monai.transforms import (
    AsDiscreted,
    ClassesToIndicesd,
    Compose,
    CropForegroundd,
    DeleteItemsd,
    EnsureTyped,
    FgBgToIndicesd,
    NormalizeIntensityd,
    Orientationd,
    Rand2DElasticd,
    Rand3DElasticd,
    RandAdjustContrastd,
    RandCropByLabelClassesd,
    RandCropByPosNegLabeld,
    RandGaussianNoised,
    RandScaleIntensityFixedMeand,
    ScaleIntensityd,
    ScaleIntensityRanged,
    Spacingd,
    SpatialPadd,
    Transform,
)

from pipeline.errors import DataError
from pipeline.registry import BATCH_INPUTS
from transforms.dictionary import (
    ImageReader,
    LoadCased,
    MapLabelsd,
    RandSpatiald,
    RecordSpacingd,
    SelectChannelsd,
)
from transforms.instances import InstanceLabeld, InstanceTargetsd
from transforms.keys import FOV, IMAGE, INSTANCE, LABEL, LABEL_SPACING

__all__ = [
    "build_transforms",
    "ChainSettings",
    "Chain",
    "find_data_error",
    "without_metadata",
    "MODES",
    "ct_normalisation",
]

MODES = ("train", "val", "infer")
_FG, _BG = f"{LABEL}_fg_indices", f"{LABEL}_bg_indices"
_CLS = f"{LABEL}_cls_indices"
_RAS_LABELS = (("L", "R"), ("P", "A"), ("I", "S"))


def find_data_error(err: BaseException) -> DataError | None:
    """The :class:`DataError` behind ``err``, if any (MONAI wraps transform errors in RuntimeError)."""
    seen: set[int] = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, DataError):
            return err
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    return None


@contextmanager
def without_metadata() -> Iterator[None]:
    """MONAI's metadata tracking off (``set_track_meta(False)``) for the block, then as it was."""
    before = get_track_meta()
    set_track_meta(False)
    try:
        yield
    finally:
        set_track_meta(before)


class Chain(Compose):
    """MONAI ``Compose`` that lets a :class:`DataError` through unwrapped, and runs the transforms
    from index ``untracked_from`` on without MONAI's metadata.

    ``Compose`` re-raises every transform error as ``RuntimeError("applying transform ...")``;
    a bad file should reach the CLI as the one-line ``DataError`` that names it.

    ``untracked_from`` (the training chain's first random transform; ``None`` elsewhere): from
    there MONAI's transforms return plain tensors instead of ``MetaTensor``, skipping the
    affine update and ``applied_operations`` record every transform makes for every crop.
    Training crops are never inverted and the trainer unwraps them anyway, and the same seed gives
    the same arrays (``tests/test_transforms_chains.py``); what a later transform needs from the
    metadata is recorded before (:class:`~transforms.dictionary.RecordSpacingd`). Measured
    (``bench/throughput.py --phases``, one thread): the random part of ``demo_vessel2d``'s chain
    (4 crops of 96² per case, rotate, zoom, flip, intensity, distance maps) took 20-24 ms of CPU
    per case with metadata and 8-9 ms without. MONAI's flag is process-wide: the random part runs
    in one thread at a time (the training loop's, or each loader worker process's); the cache is
    filled, with metadata, before.
    """

    untracked_from: int | None = None

    def __call__(self, input_: Any, start: int = 0, end: int | None = None, threading: bool = False, lazy=None):
        try:
            split = self.untracked_from
            if split is None or (end is not None and end <= split) or not get_track_meta():
                return super().__call__(input_, start=start, end=end, threading=threading, lazy=lazy)
            if start < split:
                input_ = super().__call__(input_, start=start, end=split, threading=threading, lazy=lazy)
            with without_metadata():
                return super().__call__(input_, start=max(start, split), end=end, threading=threading, lazy=lazy)
        except RuntimeError as err:
            data_error = find_data_error(err)
            if data_error is None:
                raise
            raise data_error from None


class _Above:
    """``x > threshold``: a picklable ``select_fn`` for ``CropForegroundd`` (lambdas break workers)."""

    def __init__(self, threshold: float) -> None:
        self.threshold = float(threshold)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return x > self.threshold


@dataclass(frozen=True)
class ChainSettings:
    """What a transform chain is built from: typed settings, not a whole config.

    The pipeline makes one from its resolved config (:func:`pipeline.data.loaders.chain_settings`),
    where every value has been validated and every default filled in once.

    Attributes:
        spatial_dims: 2 or 3.
        in_channels: image channels after channel selection.
        num_classes: classes including background.
        patch_size: training crop, one int per spatial axis.
        spacing: 3D target spacing in mm, or ``None`` (native).
        orientation: 3D axis codes (``"RAS"``), or ``None`` (keep).
        channels: image channels to keep, or ``None`` (all).
        intensity: ``{mode, window, clip, nonzero}``.
        label_values: the raw value of each class, or ``None`` (labels hold class indices).
        crop_foreground: ``{enabled, threshold, margin}``.
        num_samples: random crops per image per step.
        pos_neg_ratio: crops centred on foreground : background.
        class_balanced: with two or more foreground classes, the foreground crops are shared
            evenly between the classes (nnU-Net's foreground oversampling picks a class first),
            not by voxel count, so a rare class (nodules beside lungs) is seen as often as a large one.
        augment: the augmentation settings (``rotate``, ``scale``, ``flip``, ``elastic``,
            ``gamma``, ``noise``, ``contrast``), each with a ``prob``.
        inputs: extra batch inputs to compute after label mapping (names registered in
            :data:`pipeline.registry.BATCH_INPUTS`, e.g. ``("dist",)``), as a loss declares them
            in its ``extra_inputs``.
        instance: for an instance task, ``{border_width, border}`` of the 3-class target
            (:class:`transforms.instances.InstanceTargetsd`); ``None`` for a semantic task.
    """

    spatial_dims: int
    in_channels: int
    num_classes: int
    patch_size: tuple[int, ...]
    spacing: tuple[float, ...] | None
    orientation: str | None
    channels: tuple[int, ...] | None
    intensity: Mapping[str, Any]
    label_values: tuple[float, ...] | None
    crop_foreground: Mapping[str, Any]
    num_samples: int
    pos_neg_ratio: float
    augment: Mapping[str, Any]
    inputs: tuple[str, ...] = ()
    instance: Mapping[str, Any] | None = None
    class_balanced: bool = False

    def __post_init__(self) -> None:
        if self.spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {self.spatial_dims!r}")
        if len(self.patch_size) != self.spatial_dims:
            raise ValueError(f"patch_size needs {self.spatial_dims} values, got {self.patch_size!r}")


def _grid(keys: Sequence[str]) -> list[str]:
    """Interpolation per key: bilinear for the image, nearest for label maps."""
    return ["bilinear" if k == IMAGE else "nearest" for k in keys]


def ct_normalisation(window: Sequence[float], mean: float, std: float) -> dict[str, float]:
    """nnU-Net's CTNormalization as ``ScaleIntensityRanged`` arguments: clip to ``window`` (the
    dataset's foreground 0.5/99.5 percentiles), then ``(x - mean) / std`` with the dataset's
    foreground statistics (one linear map: ``[low, high] -> [(low - mean) / std, (high - mean) / std]``)."""
    low, high = (float(v) for v in window)
    return {"a_min": low, "a_max": high, "b_min": (low - mean) / std, "b_max": (high - mean) / std, "clip": True}


def _intensity(s: ChainSettings) -> list[Transform]:
    mode, icfg = s.intensity["mode"], s.intensity
    if mode == "zscore":
        return [NormalizeIntensityd(IMAGE, nonzero=icfg["nonzero"], channel_wise=True)]
    if mode == "window":
        low, high = icfg["window"]
        return [ScaleIntensityRanged(IMAGE, a_min=low, a_max=high, b_min=0.0, b_max=1.0, clip=icfg["clip"])]
    if mode == "ct":
        return [ScaleIntensityRanged(IMAGE, **ct_normalisation(icfg["window"], icfg["mean"], icfg["std"]))]
    if mode == "minmax":
        return [ScaleIntensityd(IMAGE, minv=0.0, maxv=1.0, channel_wise=True)]
    return []


def _augment(s: ChainSettings, keys: list[str]) -> list[Transform]:
    a, dims = s.augment, s.spatial_dims
    grid = _grid(keys)
    out: list[Transform] = []
    rotate, scale, flip = a["rotate"], a["scale"], a["flip"]
    if rotate["prob"] > 0 or scale["prob"] > 0 or flip["prob"] > 0:
        rad = [math.radians(v) for v in rotate["degrees"]]
        if dims == 2 or len(rad) == 1:
            rad = rad[:1]  # 2D: the in-plane angle; 3D with one angle: within axes (0, 1)
        out.append(
            RandSpatiald(
                keys,
                grid,
                rotate_prob=rotate["prob"],
                ranges=rad,
                zoom_prob=scale["prob"],
                zoom_range=scale["range"],
                flip_prob=flip["prob"],
                flip_axes=flip["axes"] if flip["axes"] is not None else range(dims),
                allow_missing_keys=True,
            )
        )
    e = a["elastic"]
    if e["prob"] > 0:
        if dims == 2:
            out.append(
                Rand2DElasticd(
                    keys,
                    spacing=e["spacing_2d"],
                    magnitude_range=e["magnitude_2d"],
                    prob=e["prob"],
                    mode=grid,
                    allow_missing_keys=True,
                )
            )
        else:
            out.append(
                Rand3DElasticd(
                    keys,
                    sigma_range=e["sigma_3d"],
                    magnitude_range=e["magnitude_3d"],
                    prob=e["prob"],
                    mode=grid,
                    allow_missing_keys=True,
                )
            )
    if a["gamma"]["prob"] > 0:
        out.append(RandAdjustContrastd(IMAGE, prob=a["gamma"]["prob"], gamma=a["gamma"]["range"], retain_stats=True))
    if a["noise"]["prob"] > 0:
        out.append(RandGaussianNoised(IMAGE, prob=a["noise"]["prob"], std=a["noise"]["std"]))
    if a["contrast"]["prob"] > 0:
        lo, hi = a["contrast"]["range"]
        out.append(
            RandScaleIntensityFixedMeand(
                IMAGE, prob=a["contrast"]["prob"], factors=(lo - 1.0, hi - 1.0), preserve_range=True
            )
        )
    return out


def build_transforms(
    settings: ChainSettings,
    mode: str,
    *,
    reader: ImageReader,
) -> Chain:
    """Build the transform chain for ``mode``.

    Args:
        settings: the chain's settings (:class:`ChainSettings`).
        mode: ``"train"`` (random crops and augmentation), ``"val"`` (deterministic, whole
            images, label kept) or ``"infer"`` (image only, invertible; see the module docstring).
        reader: reads one file for :class:`~transforms.dictionary.LoadCased`
            (:class:`~transforms.dictionary.ImageReader`; the pipeline passes
            :func:`pipeline.io.read_image`).

    Returns:
        A :class:`Chain` (a MONAI ``Compose`` that raises :class:`DataError` unwrapped); in train
        mode it returns a list of ``num_samples`` crops per item.
        Layouts: ``image`` float32 ``C H W [D]``; ``label`` float32 class indices ``1 H W [D]``;
        in train mode each of ``settings.inputs`` float32, computed on the augmented crop.

    Raises:
        ValueError: for an unknown ``mode`` or an unregistered batch input.

    Example:
        >>> from pipeline.io import read_image
        >>> s = ChainSettings(2, 1, 2, (32, 32), None, None, None, {"mode": "none"}, None,
        ...                   {"enabled": False}, 1, 1.0, {})
        >>> build_transforms(s, "val", reader=read_image).transforms[-1].__class__.__name__
        'EnsureTyped'
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    s = settings
    dims = s.spatial_dims
    inputs = [BATCH_INPUTS.get(name)(s) for name in s.inputs] if mode == "train" else []
    loaded = [IMAGE] if mode == "infer" else [IMAGE, LABEL, FOV, INSTANCE]
    chain: list[Any] = [
        LoadCased(
            loaded,
            reader=reader,
            spatial_dims=dims,
            image_channels=s.in_channels if s.channels is None else None,
            required=[IMAGE] if mode == "infer" else [IMAGE, LABEL],
        )
    ]
    keys, grid = loaded, _grid(loaded)
    if dims == 3 and s.orientation:
        # explicit labels: the NIfTI world is RAS (MONAI warns that its default will change)
        chain.append(Orientationd(keys, axcodes=s.orientation, labels=_RAS_LABELS, allow_missing_keys=True))
    if dims == 3 and s.spacing is not None:
        chain.append(Spacingd(keys, pixdim=s.spacing, mode=grid, allow_missing_keys=True))
    if s.channels is not None:
        chain.append(SelectChannelsd(IMAGE, s.channels))
    crop = s.crop_foreground
    if mode == "train" and crop["enabled"]:
        chain.append(
            CropForegroundd(
                keys,
                source_key=IMAGE,
                select_fn=_Above(crop["threshold"]),
                margin=crop["margin"],
                allow_missing_keys=True,
            )
        )
    chain += _intensity(s)
    if mode != "infer" and s.instance is not None:
        chain.append(InstanceLabeld(LABEL, INSTANCE))  # ids in `instance`, the foreground in `label`
    elif mode != "infer":
        chain.append(MapLabelsd(LABEL, s.label_values, s.num_classes))
        chain.append(AsDiscreted(FOV, threshold=0.5, allow_missing_keys=True))  # a mask: inside where non-zero
    if mode == "train":
        keys = loaded
        patch = s.patch_size
        ratio = s.pos_neg_ratio
        chain.append(RecordSpacingd(LABEL))  # the spacing of the grid, for the untracked transforms below
        chain.append(SpatialPadd(keys, spatial_size=patch, allow_missing_keys=True))
        if s.class_balanced and s.num_classes > 2:
            k = s.num_classes
            chain += [
                ClassesToIndicesd(LABEL, indices_postfix="_cls_indices", num_classes=k),
                RandCropByLabelClassesd(
                    keys,
                    label_key=LABEL,
                    spatial_size=patch,
                    ratios=[1.0] + [ratio / (k - 1)] * (k - 1),  # background : each foreground class
                    num_classes=k,
                    num_samples=s.num_samples,
                    indices_key=_CLS,
                    allow_missing_keys=True,
                    warn=False,  # a class absent from a case gets no crops there
                ),
                DeleteItemsd([_CLS]),
            ]
        else:
            chain += [
                FgBgToIndicesd(LABEL),
                RandCropByPosNegLabeld(
                    keys,
                    label_key=LABEL,
                    spatial_size=patch,
                    pos=ratio,
                    neg=1.0,
                    num_samples=s.num_samples,
                    fg_indices_key=_FG,
                    bg_indices_key=_BG,
                    allow_missing_keys=True,
                ),
                DeleteItemsd([_FG, _BG]),
            ]
        chain += _augment(s, keys)
        # extra inputs last: computed on the augmented patch (exact, and cheaper than carrying
        # cached maps through rotation and zoom; see transforms.dictionary.SignedDistanceMapd)
        chain += inputs
        chain.append(DeleteItemsd([LABEL_SPACING]))
    if mode != "infer" and s.instance is not None:
        # the 3-class target of the (augmented) id map, in `label`: the losses apply unchanged
        width, border = s.instance["border_width"], s.instance["border"]
        chain.append(InstanceTargetsd(INSTANCE, LABEL, None, border_width=width, border=border))
    typed = [*loaded, *s.inputs] if mode != "infer" else [IMAGE]
    chain.append(EnsureTyped(typed, dtype=torch.float32, allow_missing_keys=True))
    out = Chain(chain)
    if mode == "train":
        crops = (RandCropByPosNegLabeld, RandCropByLabelClassesd)
        out.untracked_from = next(i for i, t in enumerate(chain) if isinstance(t, crops))
    return out
