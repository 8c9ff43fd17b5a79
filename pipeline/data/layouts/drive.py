"""DRIVE retinal vessel layout (``data.format: drive``)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from pipeline.data._utils import data_files
from pipeline.data.layouts._common import Dataset, Problems, nonempty
from pipeline.errors import DataError
from pipeline.io import split_suffix
from pipeline.registry import LAYOUTS
from transforms.keys import CASE, FOV, IMAGE, LABEL

_DRIVE_IMAGE = re.compile(r"^(?P<num>\d+)_(?P<part>training|test)$")


def _drive_part(root: Path, part: str, problems: Problems) -> list[dict[str, Any]] | None:
    folder = root / part
    if not (folder / "images").is_dir():
        return None
    manual_dir, mask_dir = folder / "1st_manual", folder / "mask"
    if not manual_dir.is_dir():
        return None
    images = {}
    for f in data_files(folder / "images"):
        m = _DRIVE_IMAGE.match(split_suffix(f.name)[0])
        if m is None:
            problems.add(f"{part}/images files not named NN_{part}.tif", [f.name])
        else:
            images[m["num"]] = f
    manuals = {}
    for f in data_files(manual_dir):
        manuals[split_suffix(f.name)[0].split("_")[0]] = f
    masks = {}
    if mask_dir.is_dir():
        for f in data_files(mask_dir):
            masks[split_suffix(f.name)[0].split("_")[0]] = f
    problems.add(
        f"{part} images without a 1st_manual label", [images[n].name for n in sorted(images) if n not in manuals]
    )
    problems.add(f"{part} labels without an image", [manuals[n].name for n in sorted(manuals) if n not in images])
    if mask_dir.is_dir():
        problems.add(f"{part} images without a field-of-view mask", [images[n].name for n in images if n not in masks])
    items = []
    for num, image in images.items():
        if num in manuals:
            item = {IMAGE: str(image.resolve()), LABEL: str(manuals[num].resolve()), CASE: split_suffix(image.name)[0]}
            if num in masks:
                item[FOV] = str(masks[num].resolve())
            items.append(item)
    return items


@LAYOUTS.register("drive")
def read_drive(root: str | Path) -> Dataset:
    """DRIVE retinal vessels: ``{training,test}/images/NN_{part}.tif`` (RGB),
    ``1st_manual/NN_manual1.gif`` (0/255) and ``mask/NN_{part}_mask.gif`` (field of view, key ``fov``).

    The shipped ``test/`` set is returned as :attr:`Dataset.test` when it has ``1st_manual``
    labels (the Grand Challenge release does not; its test images are then left out).
    """
    root = Path(root)
    problems = Problems(root)
    train = _drive_part(root, "training", problems)
    test = _drive_part(root, "test", problems)
    problems.raise_if_any()
    if train is None:
        raise DataError(f"{root}: no training/images and training/1st_manual folders (DRIVE layout)")
    return Dataset(
        nonempty(train, root, "DRIVE"),
        test=sorted(test, key=lambda d: d[CASE]) if test else None,
        label_values=[0, 255],
    )
