"""Readers for the dataset layouts users arrive with, each returning a MONAI datalist.

Every reader takes the dataset's root folder and returns a :class:`Dataset`: the labelled cases
as ``[{"image": path, "label": path, "case": id, ...}]`` (absolute paths as strings), the shipped
labelled test set where the layout has one (DRIVE), and the label / channel names where the
layout declares them. Layout problems (an image without a label, a label without an image,
duplicate stems, an empty dataset, an unreadable ``dataset.json``) are collected and raised as
one :class:`~pipeline.errors.DataError` that lists the first few offending files and the count.
Hidden files, including the macOS ``._*`` resource forks that MSD archives carry, are skipped;
a dangling symbolic link is an error that names it.

Each reader is registered in :data:`pipeline.registry.LAYOUTS` under its ``data.format`` name,
so a new layout is one function decorated with ``@LAYOUTS.register("name")`` (taking the root
folder, returning a :class:`Dataset`) in a module imported here, plus its test.

Value conventions (see :mod:`transforms.keys`): ``image`` is one path, or a list of paths that
are stacked as channels (nnU-Net's one file per channel); ``label`` / ``instance`` are one path,
or a list of binary masks, one per object (DSB2018), that the loader combines.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.data._utils import data_files, is_hidden, list_some
from pipeline.errors import DataError
from pipeline.io import split_suffix
from pipeline.registry import LAYOUTS
from transforms.keys import CASE, FOV, IMAGE, INSTANCE, LABEL

__all__ = ["Dataset", "LAYOUTS", "read_msd", "read_nnunet", "read_drive", "read_dsb2018", "read_folders"]


@dataclass
class Dataset:
    """What a reader found.

    Attributes:
        items: labelled cases, ``[{"image", "label", "case", ...}]`` sorted by case id.
        test: the layout's own labelled test set (DRIVE's ``test/``), or ``None``.
        labels: class value → name, where the layout declares them.
        channels: channel names, where the layout declares them.
        label_values: the raw label values of the whole dataset where the layout fixes them
            (DRIVE 0/255, DSB2018's masks 0/1, MSD / nnU-Net from ``dataset.json`` labels), so
            nobody has to read every label to learn them (:mod:`pipeline.data.labels`).
    """

    items: list[dict[str, Any]]
    test: list[dict[str, Any]] | None = None
    labels: dict[int, str] | None = None
    channels: list[str] | None = None
    label_values: list[int] | None = None


@dataclass
class _Problems:
    root: Path
    found: dict[str, list[str]] = field(default_factory=dict)

    def add(self, what: str, names: list[Any]) -> None:
        if names:
            self.found.setdefault(what, []).extend(str(n) for n in names)

    def raise_if_any(self) -> None:
        if self.found:
            parts = [f"{len(v)} {k}: {list_some(v)}" for k, v in self.found.items()]
            raise DataError(f"{self.root}: {'; '.join(parts)}")


def _require_dir(path: Path, what: str) -> None:
    if not path.is_dir():
        raise DataError(f"{path}: {what} folder not found")


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"{path}: dataset.json not found") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DataError(f"{path}: cannot read dataset.json ({err})") from None
    if not isinstance(data, dict):
        raise DataError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def _nonempty(items: list[dict[str, Any]], root: Path, layout: str) -> list[dict[str, Any]]:
    if not items:
        raise DataError(f"{root}: no cases found in the {layout} layout")
    return sorted(items, key=lambda d: d[CASE])


def _stems(files: list[Path], problems: _Problems, strip: str = "") -> dict[str, Path]:
    """Map stem (minus the ``strip`` suffix) → file, recording duplicate stems."""
    out: dict[str, Path] = {}
    dups: list[str] = []
    for f in files:
        stem = split_suffix(f.name)[0]
        if strip and stem.endswith(strip):
            stem = stem[: -len(strip)]
        if stem in out:
            dups += [out[stem].name, f.name]
        out[stem] = f
    problems.add("files with duplicate stems", sorted(set(dups)))
    return out


# ------------------------------------------------------------------------------------------ MSD


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
    meta = _read_json(root / "dataset.json")
    training = meta.get("training")
    if not isinstance(training, list):
        raise DataError(f"{root / 'dataset.json'}: no 'training' list")
    problems = _Problems(root)
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
    return Dataset(_nonempty(items, root, "MSD"), labels=labels, channels=channels, label_values=values)


# ------------------------------------------------------------------------------------ nnU-Net

_CHANNEL = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")


@LAYOUTS.register("nnunet")
def read_nnunet(root: str | Path) -> Dataset:
    """nnU-Net v2 raw: ``imagesTr/{case}_{XXXX}{ending}`` per channel, ``labelsTr/{case}{ending}``.

    ``dataset.json`` gives ``channel_names`` (how many channel files each case must have),
    ``labels`` (name → value) and ``file_ending``. A case with several channels gets a list of
    paths under ``image``, in channel order, which the loader stacks as channels.
    """
    root = Path(root)
    meta = _read_json(root / "dataset.json")
    ending = meta.get("file_ending", ".nii.gz")
    names = meta.get("channel_names", meta.get("modality"))
    if not isinstance(ending, str) or not isinstance(names, dict) or not names:
        raise DataError(f"{root / 'dataset.json'}: needs 'file_ending' (a string) and 'channel_names' (a mapping)")
    n_channels = len(names)
    for sub in ("imagesTr", "labelsTr"):
        _require_dir(root / sub, sub)
    problems = _Problems(root)
    cases: dict[str, dict[int, Path]] = {}
    misnamed = []
    for f in data_files(root / "imagesTr"):
        m = _CHANNEL.match(f.name[: -len(ending)]) if f.name.endswith(ending) else None
        if m is None:
            misnamed.append(f.name)
            continue
        cases.setdefault(m["case"], {})[int(m["channel"])] = f
    problems.add(f"images not named CASE_XXXX{ending}", misnamed)
    labels = {f.name[: -len(ending)]: f for f in data_files(root / "labelsTr") if f.name.endswith(ending)}
    problems.add(
        f"cases without all {n_channels} channel files",
        [c for c, ch in sorted(cases.items()) if sorted(ch) != list(range(n_channels))],
    )
    problems.add("images without a label", [f"{c}_0000{ending}" for c in sorted(cases) if c not in labels])
    problems.add("labels without an image", [f.name for c, f in sorted(labels.items()) if c not in cases])
    problems.raise_if_any()
    items = []
    for case, channels in cases.items():
        paths = [str(channels[i].resolve()) for i in range(n_channels)]
        items.append({IMAGE: paths[0] if n_channels == 1 else paths, LABEL: str(labels[case].resolve()), CASE: case})
    raw_labels = meta.get("labels")
    named = None
    if isinstance(raw_labels, dict) and all(isinstance(v, int) for v in raw_labels.values()):
        named = {int(v): str(k) for k, v in raw_labels.items()}
    chan = [str(names[k]) for k in sorted(names, key=lambda k: int(k) if str(k).isdigit() else str(k))]
    values = sorted(named) if named else None
    return Dataset(_nonempty(items, root, "nnU-Net raw"), labels=named, channels=chan, label_values=values)


# -------------------------------------------------------------------------------------- DRIVE

_DRIVE_IMAGE = re.compile(r"^(?P<num>\d+)_(?P<part>training|test)$")


def _drive_part(root: Path, part: str, problems: _Problems) -> list[dict[str, Any]] | None:
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
    problems = _Problems(root)
    train = _drive_part(root, "training", problems)
    test = _drive_part(root, "test", problems)
    problems.raise_if_any()
    if train is None:
        raise DataError(f"{root}: no training/images and training/1st_manual folders (DRIVE layout)")
    return Dataset(
        _nonempty(train, root, "DRIVE"),
        test=sorted(test, key=lambda d: d[CASE]) if test else None,
        label_values=[0, 255],
    )


# ------------------------------------------------------------------------------------ DSB2018


@LAYOUTS.register("dsb2018")
def read_dsb2018(root: str | Path) -> Dataset:
    """Data Science Bowl 2018 nuclei: ``stage1_train/<id>/images/<id>.png`` and ``masks/*.png``.

    Each mask PNG is one nucleus; ``label`` and ``instance`` both hold the sorted list of mask
    paths, and the loader turns it into a semantic mask (``label``, 0/1) and an id map
    (``instance``, 0 = background, 1..N). ``root`` may be the folder holding ``stage1_train`` or
    that folder itself.
    """
    root = Path(root)
    base = root / "stage1_train" if (root / "stage1_train").is_dir() else root
    if not base.is_dir():
        raise DataError(f"{root}: folder not found")
    problems = _Problems(root)
    items = []
    no_label, no_image = [], []
    for case_dir in sorted(p for p in base.iterdir() if p.is_dir() and not is_hidden(p)):
        images = data_files(case_dir / "images") if (case_dir / "images").is_dir() else []
        masks = data_files(case_dir / "masks") if (case_dir / "masks").is_dir() else []
        if not images:
            if masks:
                no_image.append(case_dir.name)
            continue
        if len(images) > 1:
            problems.add("cases with more than one image", [case_dir.name])
            continue
        if not masks:
            no_label.append(images[0].name)
            continue
        paths = [str(m.resolve()) for m in masks]
        items.append({IMAGE: str(images[0].resolve()), LABEL: paths, INSTANCE: list(paths), CASE: case_dir.name})
    problems.add("images without masks", no_label)
    problems.add("mask folders without an image", no_image)
    problems.raise_if_any()
    return Dataset(_nonempty(items, root, "DSB2018"), label_values=[0, 1])  # the loader unites the masks as 0/1


# ------------------------------------------------------------------------------------ folders


@LAYOUTS.register("folders")
def read_folders(
    root: str | Path,
    image_dir: str = "images",
    label_dir: str = "labels",
    label_suffix: str = "",
    pattern: str | None = None,
) -> Dataset:
    """Plain ``images/`` + ``labels/`` folders, paired by file stem.

    Args:
        root: dataset folder.
        image_dir: image folder, relative to ``root``.
        label_dir: label folder, relative to ``root``.
        label_suffix: text after the case id in label stems (``case1_mask.png`` → ``"_mask"``).
        pattern: a regular expression with a named group ``case`` matched against every file
            name in both folders (``"(?P<case>\\d+)_.*"``); overrides ``label_suffix``. Files that
            do not match are reported.
    """
    root = Path(root)
    images_path, labels_path = root / image_dir, root / label_dir
    _require_dir(images_path, "image")
    _require_dir(labels_path, "label")
    problems = _Problems(root)
    image_files, label_files = data_files(images_path), data_files(labels_path)
    if pattern is not None:
        try:
            regex = re.compile(pattern)
        except re.error as err:
            raise DataError(f"data.pattern {pattern!r}: invalid regular expression ({err})") from None
        if "case" not in regex.groupindex:
            raise DataError(f"data.pattern {pattern!r}: needs a named group (?P<case>...)")
        images, labels = _match(image_files, regex, problems), _match(label_files, regex, problems)
    else:
        images, labels = _stems(image_files, problems), _stems(label_files, problems, label_suffix)
    problems.add("images without a label", [images[c].name for c in sorted(images) if c not in labels])
    problems.add("labels without an image", [labels[c].name for c in sorted(labels) if c not in images])
    problems.raise_if_any()
    items = [{IMAGE: str(images[c].resolve()), LABEL: str(labels[c].resolve()), CASE: c} for c in images]
    return Dataset(_nonempty(items, root, "images/labels folders"))


def _match(files: list[Path], regex: re.Pattern, problems: _Problems) -> dict[str, Path]:
    out: dict[str, Path] = {}
    dups = []
    for f in files:
        m = regex.fullmatch(f.name)
        if m is None:
            problems.add("files not matching data.pattern", [f.name])
        elif m["case"] in out:
            dups += [out[m["case"]].name, f.name]
        else:
            out[m["case"]] = f
    problems.add("files with duplicate case ids", sorted(set(dups)))
    return out
