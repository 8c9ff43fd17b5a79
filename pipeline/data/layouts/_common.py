"""What every dataset layout shares: the :class:`Dataset` a reader returns, and problem collection.

Layout problems (an image without a label, a label without an image, duplicate stems, an empty
dataset, an unreadable ``dataset.json``) are collected in :class:`Problems` and raised as one
:class:`~pipeline.errors.DataError` that lists the first few offending files and the count.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.errors import DataError, list_some
from pipeline.io import split_suffix
from transforms.keys import CASE

__all__ = ["Dataset", "Problems", "require_dir", "read_json", "nonempty", "stems"]


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
class Problems:
    """Layout problems of one dataset root, by kind, raised together."""

    root: Path
    found: dict[str, list[str]] = field(default_factory=dict)

    def add(self, what: str, names: list[Any]) -> None:
        if names:
            self.found.setdefault(what, []).extend(str(n) for n in names)

    def raise_if_any(self) -> None:
        if self.found:
            parts = [f"{len(v)} {k}: {list_some(v)}" for k, v in self.found.items()]
            raise DataError(f"{self.root}: {'; '.join(parts)}")


def require_dir(path: Path, what: str) -> None:
    if not path.is_dir():
        raise DataError(f"{path}: {what} folder not found")


def read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"{path}: dataset.json not found") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DataError(f"{path}: cannot read dataset.json ({err})") from None
    if not isinstance(data, dict):
        raise DataError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def nonempty(items: list[dict[str, Any]], root: Path, layout: str) -> list[dict[str, Any]]:
    if not items:
        raise DataError(f"{root}: no cases found in the {layout} layout")
    return sorted(items, key=lambda d: d[CASE])


def stems(files: list[Path], problems: Problems, strip: str = "") -> dict[str, Path]:
    """Map stem (minus the ``strip`` suffix) → file, recording duplicate stems. A folder (a DICOM
    series) is its whole name: ``1.2.840.1`` has no suffix."""
    out: dict[str, Path] = {}
    dups: list[str] = []
    for f in files:
        stem = f.name if f.is_dir() else split_suffix(f.name)[0]
        if strip and stem.endswith(strip):
            stem = stem[: -len(strip)]
        if stem in out:
            dups += [out[stem].name, f.name]
        out[stem] = f
    problems.add("files with duplicate stems", sorted(set(dups)))
    return out
