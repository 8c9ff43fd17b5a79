"""Medical Segmentation Decathlon layout (``data.format: msd``)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from pipeline.data._utils import data_files
from pipeline.data.layouts._common import Dataset, Problems, nonempty, read_json
from pipeline.errors import DataError
from pipeline.io import split_suffix
from pipeline.registry import LAYOUTS
from transforms.keys import CASE, IMAGE, LABEL


def _msd_labels(raw: Any) -> dict[int, str] | None:
    if not isinstance(raw, dict):
        return None
    try:
        return {int(k): str(v) for k, v in raw.items()}
    except (TypeError, ValueError):
        return None


@LAYOUTS.register("msd")
def read_msd(root: str | Path) -> Dataset:
    """Medical Segmentation Decathlon: ``dataset.json`` with ``training`` entries of relative paths.

    ``dataset.json`` lists ``{"image": "./imagesTr/x.nii.gz", "label": "./labelsTr/x.nii.gz"}``;
    its ``test`` images have no labels and are not returned. Files in ``imagesTr`` /
    ``labelsTr`` that the json does not list are reported, as are listed files that are missing.
    """
    root = Path(root)
    meta = read_json(root / "dataset.json")
    training = meta.get("training")
    if not isinstance(training, list):
        raise DataError(f"{root / 'dataset.json'}: no 'training' list")
    problems = Problems(root)
    items, bad, no_image, no_label = [], [], [], []
    listed: set[Path] = set()
    for entry in training:
        if not isinstance(entry, dict) or not isinstance(entry.get("image"), str):
            bad.append(repr(entry)[:60])
            continue
        image = (root / entry["image"]).resolve()
        label = (root / entry["label"]).resolve() if isinstance(entry.get("label"), str) else None
        listed |= {image} | ({label} if label else set())
        if not image.is_file():
            no_image.append(entry["image"])
        elif label is None or not label.is_file():
            no_label.append(entry["image"])
        else:
            items.append({IMAGE: str(image), LABEL: str(label), CASE: split_suffix(image.name)[0]})
    problems.add("malformed training entries in dataset.json", bad)
    problems.add("listed images that do not exist", no_image)
    problems.add("images without a label", no_label)
    for sub, what in (("imagesTr", "images not listed in dataset.json"), ("labelsTr", "labels without an image")):
        if (root / sub).is_dir():
            problems.add(what, [p.name for p in data_files(root / sub) if p.resolve() not in listed])
    problems.add("duplicate cases", sorted(c for c, k in Counter(d[CASE] for d in items).items() if k > 1))
    problems.raise_if_any()
    modality = meta.get("modality")
    channels = [str(modality[k]) for k in sorted(modality, key=str)] if isinstance(modality, dict) else None
    labels = _msd_labels(meta.get("labels"))
    values = sorted(labels) if labels else None
    return Dataset(nonempty(items, root, "MSD"), labels=labels, channels=channels, label_values=values)
