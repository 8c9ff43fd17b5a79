"""The one entry point from config to datalists: :func:`load_datalist`."""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any

from pipeline.data.layouts import LAYOUTS, Dataset
from pipeline.data.splits import apply_split, split_cases
from pipeline.errors import ConfigError, DataError

__all__ = ["load_datalist", "read_dataset"]


def _require_root(data_cfg: Mapping[str, Any]) -> Mapping[str, Any]:
    if not data_cfg["root"]:
        raise ConfigError("missing; set it to the dataset folder", key="data.root")
    return data_cfg


def read_dataset(data_cfg: Mapping[str, Any]) -> Dataset:
    """Read the dataset the ``data`` section points at, without splitting it.

    Args:
        data_cfg: the resolved ``data`` section (:func:`pipeline.config.load_config`).

    Raises:
        ConfigError: ``data.root`` is not set.
        DataError: for layout problems (see :mod:`pipeline.data.layouts`).
    """
    cfg = _require_root(data_cfg)
    reader = LAYOUTS.get(cfg["format"])
    if cfg["format"] == "folders":
        return reader(cfg["root"], cfg["image_dir"], cfg["label_dir"], cfg["label_suffix"], cfg["pattern"])
    return reader(cfg["root"])


def load_datalist(data_cfg: Mapping[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """Read the dataset and split it into ``train``, ``val`` and ``test`` datalists.

    The split is a seeded Fisher–Yates shuffle of the sorted case ids
    (:func:`pipeline.data.splits.split_cases`), so it is the same on every machine. A layout that
    ships its own labelled test set (DRIVE) uses it as ``test`` and splits ``val`` off the
    training cases; ``test_fraction`` is then ignored.

    Args:
        data_cfg: the resolved ``data`` section (:func:`pipeline.config.load_config`).

    Returns:
        ``{"train": [...], "val": [...], "test": [...]}``; items are
        ``{"image": path | [paths], "label": path | [mask paths], "case": id, ...}``.

    Raises:
        ConfigError: ``data.root`` is not set.
        DataError: for layout problems or too few cases to split.

    Example:
        >>> import tempfile
        >>> from pipeline.data.schema import data_schema
        >>> from pipeline.data.synth import make_dataset
        >>> root = make_dataset("vessel2d", tempfile.mkdtemp(), n=5, seed=0, size=32)
        >>> splits = load_datalist(data_schema().validate({"format": "drive", "root": str(root)}, "data"))
        >>> {part: len(items) for part, items in splits.items()}, splits["test"][0]["case"]
        ({'train': 4, 'val': 1, 'test': 1}, '01_test')
    """
    cfg = _require_root(data_cfg)
    dataset = read_dataset(cfg)
    shipped_test = dataset.test is not None
    if shipped_test and cfg["test_fraction"] > 0:
        warnings.warn(
            f"data.test_fraction={cfg['test_fraction']} is ignored: the {cfg['format']} layout ships a test set",
            stacklevel=2,
        )
    cases = [item["case"] for item in dataset.items]
    try:
        split = split_cases(
            cases,
            val_fraction=cfg["val_fraction"],
            test_fraction=0.0 if shipped_test else cfg["test_fraction"],
            seed=cfg["split_seed"],
            num_folds=cfg["num_folds"],
            fold=cfg["fold"],
        )
    except DataError as err:
        raise DataError(f"{cfg['root']}: {err}") from None
    out = apply_split(dataset.items, split)
    if shipped_test:
        out["test"] = list(dataset.test or [])
    return out
