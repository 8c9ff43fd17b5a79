"""Config sections ``data`` (where the dataset is and how it is split) and ``transforms``
(the chain built by :func:`transforms.chains.build_transforms`).

Example YAML (DRIVE, green channel, 2D patches)::

    data: {format: drive, root: data/DRIVE, val_fraction: 0.2}
    transforms:
      patch_size: [128, 128]
      channels: [1]
      intensity: {mode: zscore}
      label_values: [0, 255]
      augment: {rotate: {prob: 0.3, degrees: [30]}}
"""

from __future__ import annotations

from pipeline.data.layouts import LAYOUTS  # importing the package registers every layout
from pipeline.errors import ConfigError
from pipeline.schema import Field, Section

__all__ = ["data_schema", "transforms_schema", "INTENSITY_MODES"]

INTENSITY_MODES = ("zscore", "window", "ct", "minmax", "none")


def data_schema() -> Section:
    """Schema of the ``data`` section."""
    return Section(
        {
            "format": Field(str, "folders", choices=tuple(LAYOUTS.names()), help="dataset layout on disk"),
            "root": Field(str, None, nullable=True, help="dataset folder (required to load data)"),
            "image_dir": Field(str, "images", help="folders layout: image folder under root"),
            "label_dir": Field(str, "labels", help="folders layout: label folder under root"),
            "label_suffix": Field(str, "", help="folders layout: text after the case id in label stems"),
            "pattern": Field(
                str, None, nullable=True, help="folders layout: regex with a (?P<case>...) group for both folders"
            ),
            "val_fraction": Field(float, 0.2, minimum=0.0, maximum=0.9, help="fraction of cases for validation"),
            "test_fraction": Field(
                float, 0.0, minimum=0.0, maximum=0.9, help="fraction held out for testing (DRIVE uses its test/)"
            ),
            "num_folds": Field(int, 5, minimum=2, help="folds for cross-validation"),
            "fold": Field(int, None, nullable=True, minimum=0, help="validation fold; null uses val_fraction"),
            "split_seed": Field(int, 0, minimum=0, help="seed of the Fisher-Yates split (independent of `seed`)"),
        },
        check=_check_data,
        help="dataset location, layout and split",
    )


def _check_data(data: dict, where: str) -> None:
    if data["fold"] is not None and data["fold"] >= data["num_folds"]:
        raise ConfigError(f"must be < data.num_folds ({data['num_folds']}), got {data['fold']}", key=f"{where}.fold")


def _prob(default: float) -> Field:
    return Field(float, default, minimum=0.0, maximum=1.0, help="probability per sample")


def _range(default: list[float], help: str, minimum: float | None = None) -> Field:
    return Field(list, default, item=float, length=2, minimum=minimum, help=help)


def transforms_schema() -> Section:
    """Schema of the ``transforms`` section (defaults follow nnU-Net's augmentation where it has one)."""
    augment = Section(
        {
            "rotate": Section(
                {
                    "prob": _prob(0.2),
                    "degrees": Field(
                        list,
                        [30.0],
                        item=float,
                        length=(1, 3),
                        minimum=0.0,
                        maximum=180.0,
                        help="max angle; one value: in-plane (3D: around the 3rd axis), three: around each axis",
                    ),
                }
            ),
            "scale": Section({"prob": _prob(0.2), "range": _range([0.7, 1.4], "zoom factor range", 0.1)}),
            "flip": Section(
                {
                    "prob": _prob(0.5),
                    "axes": Field(list, None, item=int, nullable=True, minimum=0, help="spatial axes; null: all"),
                }
            ),
            "elastic": Section(
                {
                    "prob": _prob(0.0),
                    "spacing_2d": Field(float, 32.0, minimum=1.0, help="2D: control point spacing (px)"),
                    "magnitude_2d": _range([1.0, 3.0], "2D: control point offsets (px)", 0.0),
                    "sigma_3d": _range([5.0, 8.0], "3D: smoothing sigma of the displacement field (voxels)", 0.1),
                    "magnitude_3d": _range([100.0, 200.0], "3D: displacement magnitude", 0.0),
                }
            ),
            "gamma": Section({"prob": _prob(0.3), "range": _range([0.7, 1.5], "gamma range", 0.01)}),
            "noise": Section({"prob": _prob(0.1), "std": Field(float, 0.1, minimum=0.0, help="max noise std")}),
            "contrast": Section({"prob": _prob(0.15), "range": _range([0.75, 1.25], "contrast factor range", 0.0)}),
        },
        help="random augmentation, train mode only",
    )
    return Section(
        {
            "patch_size": Field(
                list,
                None,
                item=int,
                length=(2, 3),
                minimum=1,
                nullable=True,
                help="train crop; null: 128² (2D) or 96³ (3D), filled in when the config is resolved",
            ),
            "spacing": Field(
                list, None, item=float, length=3, minimum=0.0, nullable=True, help="3D target spacing; null: native"
            ),
            "orientation": Field(str, "RAS", nullable=True, help="3D axis codes to reorient to; null: keep"),
            "channels": Field(list, None, item=int, minimum=0, nullable=True, help="image channels to keep; null: all"),
            "intensity": Section(
                {
                    "mode": Field(str, "zscore", choices=INTENSITY_MODES, help="per-image normalisation"),
                    "window": _range(
                        [-1000.0, 1000.0], "mode window: [low, high] mapped to [0, 1] (CT: HU); mode ct: clip range"
                    ),
                    "mean": Field(float, 0.0, help="mode ct: dataset foreground mean (fingerprint)"),
                    "std": Field(float, 1.0, minimum=1e-6, help="mode ct: dataset foreground std (fingerprint)"),
                    "clip": Field(bool, True, help="mode window: clip outside the window"),
                    "nonzero": Field(bool, False, help="mode zscore: statistics over nonzero voxels only"),
                }
            ),
            "label_values": Field(
                list, None, item=float, nullable=True, help="raw label value of each class, e.g. [0, 255]"
            ),
            "crop_foreground": Section(
                {
                    "enabled": Field(bool, False, help="train: crop to the bounding box of image > threshold"),
                    "threshold": Field(float, 0.0, help="raw intensity above which a voxel is foreground"),
                    "margin": Field(int, 0, minimum=0, help="voxels kept around the box"),
                }
            ),
            "num_samples": Field(int, 2, minimum=1, help="random crops per image per step"),
            "pos_neg_ratio": Field(float, 1.0, minimum=0.0, help="crops centred on foreground : background"),
            "class_balanced": Field(
                bool, False, help="foreground crops shared evenly by class, not by voxel count (2+ foreground classes)"
            ),
            "augment": augment,
        },
        help="load, normalise, crop and augment",
    )
