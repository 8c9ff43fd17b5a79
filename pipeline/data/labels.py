"""Raw label values → class indices: one table per dataset, never decided per file.

A label file holds raw values (DRIVE's vessels are 0/255, a three-class PNG set may be
0/128/255). The table that turns them into classes ``0..K-1`` is, in this order:

1. ``transforms.label_values`` when the config sets it;
2. the values the dataset layout declares (DRIVE 0/255, DSB2018 0/1, the ``labels`` of an MSD or
   nnU-Net ``dataset.json``; :attr:`pipeline.data.layouts.Dataset.label_values`); declared values
   ``0..n`` are class indices, so the table is ``0..K-1`` whatever ``n``;
3. the values found in all label files of the dataset together (:func:`dataset_label_values`,
   every file read once).

Deciding per file would be wrong: an image of a 0/128/255 set that lacks 128 would map 255 to
class 1. Training fills ``transforms.label_values`` with :func:`fill_label_values` before the
run's config is saved, so inference and evaluation reuse the same table.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from pipeline.config import Config
from pipeline.data.datalist import read_dataset
from pipeline.errors import DataError
from pipeline.io import label_values_of
from transforms.keys import LABEL

__all__ = ["dataset_label_values", "label_table", "resolve_label_values", "fill_label_values"]


def dataset_label_values(items: Iterable[Mapping[str, Any]], problems: list[str] | None = None) -> list[int]:
    """The raw values found in the label files of ``items``, all together, sorted.

    Each file is read once. A label given as a list of per-object masks (DSB2018) counts as 0/1,
    the values the loader unites such masks into.

    Args:
        items: datalist items (``{"label": path | [mask paths], ...}``); items without a label
            are skipped.
        problems: where to append a line per unreadable file instead of raising (check-data).

    Raises:
        DataError: an unreadable label file (when ``problems`` is None).

    Example:
        >>> import tempfile, numpy as np
        >>> from pipeline.io import write_label
        >>> folder = tempfile.mkdtemp()
        >>> a = write_label(f"{folder}/a.png", np.array([[0, 255]]))
        >>> b = write_label(f"{folder}/b.png", np.array([[0, 128]]))
        >>> dataset_label_values([{"label": str(a)}, {"label": str(b)}])
        [0, 128, 255]
    """
    values: set[int] = set()
    seen: set[str] = set()
    for item in items:
        label = item.get(LABEL)
        if label is None:
            continue
        if isinstance(label, (list, tuple)):
            values |= {0, 1}
            continue
        if str(label) in seen:
            continue
        seen.add(str(label))
        try:
            values |= label_values_of(label)
        except DataError as err:
            if problems is None:
                raise
            problems.append(str(err))
    return sorted(values)


def label_table(found: Sequence[float], num_classes: int, source: str = "the label files") -> list[float]:
    """The raw value of each class, from the values found in a dataset and the number of classes.

    Values that are already class indices (a subset of ``0..K-1``) map to themselves, even when a
    class never occurs; otherwise there must be exactly one value per class, sorted ascending.

    Raises:
        DataError: as many values as classes cannot be matched, naming both.

    Example:
        >>> label_table([0, 255], 2), label_table([0, 1], 3), label_table([0, 128, 255], 3)
        ([0.0, 255.0], [0.0, 1.0, 2.0], [0.0, 128.0, 255.0])
    """
    found = sorted({float(v) for v in found})
    if set(found) <= {float(c) for c in range(num_classes)}:
        return [float(c) for c in range(num_classes)]
    if len(found) == num_classes:
        return found
    shown = ", ".join(f"{v:g}" for v in found[:8]) + (", ..." if len(found) > 8 else "")
    raise DataError(
        f"{source} hold {len(found)} distinct values ({shown}) but the network has {num_classes} classes "
        "(network.out_channels); set transforms.label_values to the raw value of each class"
    )


def resolve_label_values(config: Config, problems: list[str] | None = None) -> list[float]:
    """The dataset's table of raw label values (see the module docstring for the order).

    Args:
        config: the resolved config.
        problems: as :func:`dataset_label_values`.

    Raises:
        DataError: a layout problem, an unreadable label, or values that do not fit the classes.
    """
    if config.label_values is not None:
        return [float(v) for v in config.label_values]
    if (config.get("task") or {}).get("kind") == "instance":
        # labels are made from instance ids by the chain's InstanceTargetsd: class indices
        return [float(c) for c in range(config.num_classes)]
    num_classes = config.num_classes
    data = config["data"]
    dataset = read_dataset(data)
    if dataset.label_values is not None:
        declared = sorted(int(v) for v in dataset.label_values)
        if declared == list(range(len(declared))):
            # class indices by definition (a dataset.json's labels may name classes a task leaves
            # out): each file is checked against 0..K-1 as it loads
            return [float(c) for c in range(num_classes)]
        return label_table(declared, num_classes, f"the {data['format']} layout's labels")
    found = dataset_label_values([*dataset.items, *(dataset.test or [])], problems)
    return label_table(found, num_classes, f"the label files under {data['root']}")


def fill_label_values(config: Config) -> Config:
    """``config`` with ``transforms.label_values`` set (itself when already set).

    Call it once at the start of training, before the run's config is saved, so that the saved
    config holds the table and ``infer`` / ``evaluate`` reuse it.

    Example:
        >>> import tempfile, numpy as np
        >>> from pipeline.config import resolve
        >>> from pipeline.io import write_image, write_label
        >>> root = tempfile.mkdtemp()
        >>> for case, top in (("a", 255), ("b", 128)):
        ...     _ = write_image(f"{root}/images/{case}.png", np.zeros((4, 4), np.uint8))
        ...     _ = write_label(f"{root}/labels/{case}.png", np.array([[0, top], [255, 0]] * 2))
        >>> net = {"name": "unet", "spatial_dims": 2, "in_channels": 1, "out_channels": 3}
        >>> config = resolve({"data": {"format": "folders", "root": root}, "network": net})
        >>> fill_label_values(config).label_values
        (0.0, 128.0, 255.0)
    """
    if config.label_values is not None:
        return config
    return config.with_label_values(resolve_label_values(config))
