"""Data Science Bowl 2018 nuclei layout (``data.format: dsb2018``)."""

from __future__ import annotations

from pathlib import Path

from pipeline.data._utils import data_files, is_hidden
from pipeline.data.layouts._common import Dataset, Problems, nonempty
from pipeline.errors import DataError
from pipeline.registry import LAYOUTS
from transforms.keys import CASE, IMAGE, INSTANCE, LABEL


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
    problems = Problems(root)
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
    return Dataset(nonempty(items, root, "DSB2018"), label_values=[0, 1])  # the loader unites the masks as 0/1
