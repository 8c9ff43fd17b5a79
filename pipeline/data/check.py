"""Dataset integrity check over a whole dataset, up front (``medseg check-data -c CONFIG``).

Like nnU-Net's ``--verify_dataset_integrity``: every case of every split is loaded and checked
the way training will load it (:class:`transforms.dictionary.LoadCased`, channel selection,
strict label mapping), and every problem is collected instead of stopping at the first.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable
from typing import Any, TextIO

from monai.transforms import AsDiscreted

from pipeline.config import Config, load_config
from pipeline.data.datalist import load_datalist
from pipeline.data.labels import resolve_label_values
from pipeline.data.loaders import chain_settings
from pipeline.errors import DataError
from pipeline.io import read_image
from transforms.chains import Chain, find_data_error
from transforms.dictionary import LoadCased, MapLabelsd, SelectChannelsd
from transforms.instances import InstanceLabeld
from transforms.keys import CASE, FOV, IMAGE, INSTANCE, LABEL

__all__ = ["check_dataset", "run_check_data"]


def _check_chain(config: Config) -> Chain:
    s = chain_settings(config)
    steps: list[Any] = [
        LoadCased(
            [IMAGE, LABEL, FOV, INSTANCE],
            reader=read_image,
            spatial_dims=s.spatial_dims,
            image_channels=s.in_channels if s.channels is None else None,
            required=[IMAGE, LABEL],
        )
    ]
    if s.channels is not None:
        steps.append(SelectChannelsd(IMAGE, s.channels))
    # an instance task's labels are id maps (any values): the training chain's own target step
    labels = (
        InstanceLabeld(LABEL, INSTANCE) if s.instance is not None else MapLabelsd(LABEL, s.label_values, s.num_classes)
    )
    steps += [labels, AsDiscreted(FOV, threshold=0.5, allow_missing_keys=True)]  # FOV: inside where non-zero
    return Chain(steps)


def check_dataset(config: Config) -> tuple[int, list[str]]:
    """Load and check every case the ``data`` section points at.

    Args:
        config: the resolved config.

    Returns:
        ``(number of cases checked, problems)``; each problem is one line naming the file.

    Raises:
        ConfigError: for bad settings.
        DataError: for a layout problem that prevents listing the cases at all (a dangling
            symbolic link among them), or label values that do not fit the classes.
    """
    if config.label_values is None:
        unreadable: list[str] = []  # reported below, by the case that holds the file
        try:  # the one table of the dataset, as training decides it (pipeline.data.labels)
            config = config.with_label_values(resolve_label_values(config, unreadable))
        except DataError:
            if not unreadable:
                raise
    chain = _check_chain(config)
    splits = load_datalist(config["data"])
    problems: list[str] = []
    count = 0
    for part in ("train", "val", "test"):
        for item in splits[part]:
            count += 1
            try:
                chain(item)
            except Exception as err:  # a transform tripping over a file is still a problem with that file
                found = find_data_error(err)
                text = str(found) if found is not None else f"{item.get(IMAGE)}: {type(err).__name__}: {err}"
                problems.append(f"[{part} {item.get(CASE, '?')}] {text}")
    return count, problems


def run_check_data(path: str | os.PathLike, overrides: Iterable[str] = (), out: TextIO | None = None) -> int:
    """``medseg check-data``: check the dataset a config points at; print problems; exit code.

    The whole config is resolved first, so a mistyped setting anywhere (a loss term's argument
    included) is reported before any file is read.

    Returns:
        0 when every case loads cleanly, 2 when there are problems (each printed on its own line).
    """
    out = out or sys.stdout
    config = load_config(path, overrides)
    count, problems = check_dataset(config)
    root = config["data"]["root"]
    if problems:
        print(f"{root}: {len(problems)} problem(s) in {count} case(s):", file=out)
        for line in problems:
            print(f"  {line}", file=out)
        return 2
    print(f"{root}: {count} case(s) checked, no problems", file=out)
    return 0
