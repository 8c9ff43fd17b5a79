"""The one entry point from config to datalists: :func:`load_datalist`."""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any

from pipeline.data.layouts import LAYOUTS, Dataset
from pipeline.data.schema import data_schema
from pipeline.data.splits import apply_split, split_cases
from pipeline.errors import ConfigError, DataError

__all__ = ["load_datalist", "read_dataset"]


def _resolve(data_cfg: Mapping[str, Any]) -> dict[str, Any]:
    cfg = data_schema().validate(dict(data_cfg or {}), "data")
    if not cfg["root"]:
        raise ConfigError("data.root: missing; set it to the dataset folder")
    if cfg["fold"] is not None and cfg["fold"] >= cfg["num_folds"]:
        raise ConfigError(f"data.fold: must be < data.num_folds ({cfg['num_folds']}), got {cfg['fold']}")
    return cfg


def read_dataset(data_cfg: Mapping[str, Any]) -> Dataset:
    """Read the dataset the ``data`` section points at, without splitting it.

    Raises:
        ConfigError: for a bad ``data`` section.
        DataError: for layout problems (see :mod:`pipeline.data.layouts`).
    """
    cfg = _resolve(data_cfg)
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
        data_cfg: the ``data`` section of a config (resolved or not; defaults are filled in).

    Returns:
        ``{"train": [...], "val": [...], "test": [...]}``; items are
        ``{"image": path | [paths], "label": path | [mask paths], "case": id, ...}``.

    Raises:
        ConfigError: for a bad ``data`` section.
        DataError: for layout problems or too few cases to split.

    Example:
        >>> splits = load_datalist({"format": "drive", "root": "data/DRIVE"})  # doctest: +SKIP
        >>> sorted(splits), splits["train"][0]["case"]  # doctest: +SKIP
        (['test', 'train', 'val'], '23_training')
    """
    cfg = _resolve(data_cfg)
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
