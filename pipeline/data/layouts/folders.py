"""Plain ``images/`` + ``labels/`` folders paired by file stem (``data.format: folders``)."""

from __future__ import annotations

import re
from pathlib import Path

from pipeline.data._utils import data_files
from pipeline.data.layouts._common import Dataset, Problems, nonempty, require_dir, stems
from pipeline.errors import DataError
from pipeline.registry import LAYOUTS
from transforms.keys import CASE, IMAGE, LABEL


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
    require_dir(images_path, "image")
    require_dir(labels_path, "label")
    problems = Problems(root)
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
        images, labels = stems(image_files, problems), stems(label_files, problems, label_suffix)
    problems.add("images without a label", [images[c].name for c in sorted(images) if c not in labels])
    problems.add("labels without an image", [labels[c].name for c in sorted(labels) if c not in images])
    problems.raise_if_any()
    items = [{IMAGE: str(images[c].resolve()), LABEL: str(labels[c].resolve()), CASE: c} for c in images]
    return Dataset(nonempty(items, root, "images/labels folders"))


def _match(files: list[Path], regex: re.Pattern, problems: Problems) -> dict[str, Path]:
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
