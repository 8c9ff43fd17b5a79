"""Dataset layouts: one module per layout, each registering its reader in :data:`LAYOUTS`.

Every reader takes the dataset's root folder and returns a :class:`Dataset`: the labelled cases
as ``[{"image": path, "label": path, "case": id, ...}]`` (absolute paths as strings), the shipped
labelled test set where the layout has one (DRIVE), and the label / channel names where the
layout declares them. Layout problems (an image without a label, a label without an image,
duplicate stems, an empty dataset, an unreadable ``dataset.json``) are collected and raised as
one :class:`~pipeline.errors.DataError` that lists the first few offending files and the count.
Hidden files, including the macOS ``._*`` resource forks that MSD archives carry, are skipped;
a dangling symbolic link is an error that names it.

Each reader is registered in :data:`pipeline.registry.LAYOUTS` under its ``data.format`` name,
so a new layout is one new module in this package (a function taking the root folder and
returning a :class:`Dataset`, decorated with ``@LAYOUTS.register("name")``), its name in the
import line below (no dynamic imports: ``tests/test_security.py``), and its test; ``data.format``
then offers it.

Value conventions (see :mod:`transforms.keys`): ``image`` is one path, or a list of paths that
are stacked as channels (nnU-Net's one file per channel); ``label`` / ``instance`` are one path,
or a list of binary masks, one per object (DSB2018), that the loader combines.
"""

from __future__ import annotations

from pipeline.data.layouts import drive, dsb2018, folders, msd, nnunet  # noqa: F401  (each registers itself)
from pipeline.data.layouts._common import Dataset
from pipeline.registry import LAYOUTS

__all__ = ["LAYOUTS", "Dataset"]
