"""Transform chains built from config: :func:`build_transforms`.

One chain per mode, for 2D and 3D::

    load (LoadCased: NIfTI / PNG / TIFF / GIF, channel first, checked)
    -> [3D] Orientationd (RAS) -> [3D] Spacingd (transforms.spacing)
    -> SelectChannelsd (transforms.channels, e.g. DRIVE's green [1])
    -> [train] CropForegroundd (transforms.crop_foreground)
    -> intensity: NormalizeIntensityd (zscore) | ScaleIntensityRanged (window, CT HU) | ScaleIntensityd (minmax)
    -> MapLabelsd (label values -> classes, strict, one table per dataset; fov -> 0/1)  [train, val]
    -> post_label hooks (e.g. SignedDistanceMapd writing ``dist``)          [train, val]
    -> [train] SpatialPadd -> RandCropByPosNegLabeld (num_samples, pos_neg_ratio)
    -> [train] RandRotated, RandZoomd, RandFlipd (per axis), Rand{2,3}DElasticd
    -> [train] RandAdjustContrastd (gamma), RandGaussianNoised, RandScaleIntensityFixedMeand (contrast)
    -> EnsureTyped (float32)

Everything before the first random transform is deterministic, so a MONAI ``CacheDataset``
caches it (distance maps included) once per case.

Spatial keys: ``image`` (bilinear), ``label``, ``fov``, ``instance`` (nearest) and the float
``extra_keys`` (bilinear, e.g. ``dist``). MONAI's random dictionary transforms draw their
parameters once per call and apply them to every key, so image, label and distance map stay
aligned.

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
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from monai.transforms import (
    AsDiscreted,
    Compose,
    CropForegroundd,
    DeleteItemsd,
    EnsureTyped,
    FgBgToIndicesd,
    MapTransform,
    NormalizeIntensityd,
    Orientationd,
    Rand2DElasticd,
    Rand3DElasticd,
    RandAdjustContrastd,
    RandCropByPosNegLabeld,
    RandFlipd,
    RandGaussianNoised,
    RandRotated,
    RandScaleIntensityFixedMeand,
    RandZoomd,
    ScaleIntensityd,
    ScaleIntensityRanged,
    Spacingd,
    SpatialPadd,
    Transform,
)

from pipeline.data.schema import transforms_schema
from pipeline.errors import ConfigError, DataError
from transforms.dictionary import ImageReader, LoadCased, MapLabelsd, SelectChannelsd
from transforms.keys import FOV, IMAGE, INSTANCE, LABEL

__all__ = ["build_transforms", "chain_settings", "Chain", "find_data_error", "MODES"]

MODES = ("train", "val", "infer")
DEFAULT_PATCH = {2: [128, 128], 3: [96, 96, 96]}
_FG, _BG = f"{LABEL}_fg_indices", f"{LABEL}_bg_indices"
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


class Chain(Compose):
    """MONAI ``Compose`` that lets a :class:`DataError` through unwrapped.

    ``Compose`` re-raises every transform error as ``RuntimeError("applying transform ...")``;
    a bad file should reach the CLI as the one-line ``DataError`` that names it.
    """

    def __call__(self, input_: Any, start: int = 0, end: int | None = None, threading: bool = False, lazy=None):
        try:
            return super().__call__(input_, start=start, end=end, threading=threading, lazy=lazy)
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


def _network_int(network: Mapping[str, Any], key: str) -> int:
    value = network.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"network.{key}: the transform chain needs a positive int, got {value!r}")
    return value


def chain_settings(config: Mapping[str, Any]) -> dict[str, Any]:
    """The settings a chain is built from: the ``transforms`` section with defaults filled in,
    plus ``spatial_dims``, ``in_channels`` and ``num_classes`` read from the ``network`` section.

    ``num_classes`` is ``max(2, network.out_channels)`` (one sigmoid output is a binary task).

    Raises:
        ConfigError: for a bad ``transforms`` section or missing network settings.
    """
    tcfg = transforms_schema().validate(dict(config.get("transforms") or {}), "transforms")
    network = config.get("network")
    if not isinstance(network, Mapping):
        raise ConfigError("network: the transform chain needs spatial_dims, in_channels and out_channels")
    dims = _network_int(network, "spatial_dims")
    if dims not in (2, 3):
        raise ConfigError(f"network.spatial_dims: must be 2 or 3, got {dims}")
    in_channels = _network_int(network, "in_channels")
    num_classes = max(2, _network_int(network, "out_channels"))
    patch = tcfg["patch_size"] or DEFAULT_PATCH[dims]
    if len(patch) != dims:
        raise ConfigError(f"transforms.patch_size: needs {dims} values for spatial_dims={dims}, got {patch}")
    channels = tcfg["channels"]
    if channels is not None and len(channels) != in_channels:
        raise ConfigError(
            f"transforms.channels: selects {len(channels)} channel(s) {channels} but network.in_channels is "
            f"{in_channels}"
        )
    labels = tcfg["label_values"]
    if labels is not None and len(labels) != num_classes:
        raise ConfigError(
            f"transforms.label_values: lists {len(labels)} values {labels} but there are {num_classes} classes "
            "(network.out_channels)"
        )
    flip_axes = tcfg["augment"]["flip"]["axes"]
    if flip_axes is not None and any(a >= dims for a in flip_axes):
        raise ConfigError(f"transforms.augment.flip.axes: spatial axes are 0..{dims - 1}, got {flip_axes}")
    low, high = tcfg["intensity"]["window"]
    if tcfg["intensity"]["mode"] == "window" and not low < high:
        raise ConfigError(f"transforms.intensity.window: needs low < high, got {[low, high]}")
    for name in ("scale", "gamma", "contrast"):
        lo, hi = tcfg["augment"][name]["range"]
        if lo > hi:
            raise ConfigError(f"transforms.augment.{name}.range: needs low <= high, got {[lo, hi]}")
    if dims == 2 and tcfg["spacing"] is not None:
        warnings.warn("transforms.spacing is ignored for 2D data", stacklevel=3)
    return {
        **tcfg,
        "patch_size": list(patch),
        "spatial_dims": dims,
        "in_channels": in_channels,
        "num_classes": num_classes,
    }


def _spatial(keys: Sequence[str], extra_keys: Sequence[str]) -> tuple[list[str], list[str]]:
    """Keys of the spatial transforms and their interpolation: bilinear for image and float extras."""
    all_keys = list(keys) + [k for k in extra_keys if k not in keys]
    return all_keys, ["bilinear" if k == IMAGE or k in extra_keys else "nearest" for k in all_keys]


def _intensity(s: Mapping[str, Any]) -> list[Transform]:
    mode, icfg = s["intensity"]["mode"], s["intensity"]
    if mode == "zscore":
        return [NormalizeIntensityd(IMAGE, nonzero=icfg["nonzero"], channel_wise=True)]
    if mode == "window":
        low, high = icfg["window"]
        return [ScaleIntensityRanged(IMAGE, a_min=low, a_max=high, b_min=0.0, b_max=1.0, clip=icfg["clip"])]
    if mode == "minmax":
        return [ScaleIntensityd(IMAGE, minv=0.0, maxv=1.0, channel_wise=True)]
    return []


def _augment(s: Mapping[str, Any], keys: list[str], extra_keys: Sequence[str]) -> list[Transform]:
    a, dims = s["augment"], s["spatial_dims"]
    linear = "bilinear" if dims == 2 else "trilinear"
    grid = ["bilinear" if k == IMAGE or k in extra_keys else "nearest" for k in keys]
    zoom = [linear if m == "bilinear" else "nearest" for m in grid]
    out: list[Transform] = []
    if a["rotate"]["prob"] > 0:
        rad = [math.radians(v) for v in a["rotate"]["degrees"]]
        if dims == 2 or len(rad) == 1:
            # MONAI's range_x is the in-plane angle in 2D; in 3D range_z rotates within axes (0, 1).
            ranges = {"range_x": rad[0]} if dims == 2 else {"range_z": rad[0]}
        else:
            ranges = {"range_x": rad[0], "range_y": rad[1], "range_z": rad[2]}
        out.append(RandRotated(keys, prob=a["rotate"]["prob"], mode=grid, allow_missing_keys=True, **ranges))
    if a["scale"]["prob"] > 0:
        lo, hi = a["scale"]["range"]
        out.append(
            RandZoomd(keys, prob=a["scale"]["prob"], min_zoom=lo, max_zoom=hi, mode=zoom, allow_missing_keys=True)
        )
    if a["flip"]["prob"] > 0:
        for axis in a["flip"]["axes"] if a["flip"]["axes"] is not None else range(dims):
            out.append(RandFlipd(keys, prob=a["flip"]["prob"], spatial_axis=axis, allow_missing_keys=True))
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
    config: Mapping[str, Any],
    mode: str,
    *,
    reader: ImageReader,
    extra_keys: Sequence[str] = (),
    post_label: Sequence[Transform | MapTransform] = (),
) -> Chain:
    """Build the transform chain for ``mode`` from a whole config.

    Args:
        config: the resolved config; reads ``transforms`` (defaults filled in when absent) and
            ``network.spatial_dims`` / ``in_channels`` / ``out_channels``.
        mode: ``"train"`` (random crops and augmentation), ``"val"`` (deterministic, whole
            images, label kept) or ``"infer"`` (image only, invertible; see the module docstring).
        reader: reads one file for :class:`~transforms.dictionary.LoadCased`
            (:class:`~transforms.dictionary.ImageReader`; the pipeline passes
            :func:`pipeline.io.read_image`).
        extra_keys: float keys created by ``post_label`` transforms (e.g. ``("dist",)``) that
            must follow the image through the crop and the random spatial transforms (bilinear).
        post_label: transforms inserted right after label mapping, before the crop (train, val).

    Returns:
        A :class:`Chain` (a MONAI ``Compose`` that raises :class:`DataError` unwrapped); in train
        mode it returns a list of ``num_samples`` crops per item.
        Layouts: ``image`` float32 ``C H W [D]``; ``label`` float32 class indices ``1 H W [D]``.

    Raises:
        ValueError: for an unknown ``mode``.
        ConfigError: for inconsistent settings (channel or class counts, patch size dims).

    Example:
        >>> from pipeline.io import read_image
        >>> cfg = {"network": {"spatial_dims": 2, "in_channels": 1, "out_channels": 2}}
        >>> chain = build_transforms(cfg, "val", reader=read_image)
        >>> type(chain).__name__
        'Chain'
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    s = chain_settings(config)
    dims = s["spatial_dims"]
    extra_keys = tuple(extra_keys)
    loaded = [IMAGE] if mode == "infer" else [IMAGE, LABEL, FOV, INSTANCE]
    chain: list[Any] = [
        LoadCased(
            loaded,
            reader=reader,
            spatial_dims=dims,
            image_channels=s["in_channels"] if s["channels"] is None else None,
            required=[IMAGE] if mode == "infer" else [IMAGE, LABEL],
        )
    ]
    keys, grid = _spatial(loaded, ())
    if dims == 3 and s["orientation"]:
        # explicit labels: the NIfTI world is RAS (MONAI warns that its default will change)
        chain.append(Orientationd(keys, axcodes=s["orientation"], labels=_RAS_LABELS, allow_missing_keys=True))
    if dims == 3 and s["spacing"] is not None:
        chain.append(Spacingd(keys, pixdim=s["spacing"], mode=grid, allow_missing_keys=True))
    if s["channels"] is not None:
        chain.append(SelectChannelsd(IMAGE, s["channels"]))
    crop = s["crop_foreground"]
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
    if mode != "infer":
        chain.append(MapLabelsd(LABEL, s["label_values"], s["num_classes"]))
        chain.append(AsDiscreted(FOV, threshold=0.5, allow_missing_keys=True))  # a mask: inside where non-zero
        chain += list(post_label)
    if mode == "train":
        keys, _ = _spatial(loaded, extra_keys)
        patch = s["patch_size"]
        ratio = s["pos_neg_ratio"]
        chain += [
            SpatialPadd(keys, spatial_size=patch, allow_missing_keys=True),
            FgBgToIndicesd(LABEL),
            RandCropByPosNegLabeld(
                keys,
                label_key=LABEL,
                spatial_size=patch,
                pos=ratio,
                neg=1.0,
                num_samples=s["num_samples"],
                fg_indices_key=_FG,
                bg_indices_key=_BG,
                allow_missing_keys=True,
            ),
            DeleteItemsd([_FG, _BG]),
        ]
        chain += _augment(s, keys, extra_keys)
    typed = [*loaded, *extra_keys] if mode != "infer" else [IMAGE]
    chain.append(EnsureTyped(typed, dtype=torch.float32, allow_missing_keys=True))
    return Chain(chain)
