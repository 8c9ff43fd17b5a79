"""What ``medseg infer`` writes for an instance run: the instance label map and ``<case>_objects.csv``.

:func:`write_instances` takes one case's class probabilities in the geometry of its input file
(:class:`pipeline.engines.predictor.Prediction`, :mod:`pipeline.io`'s axis order: ``W H`` for
2D pictures, the voxel axes ``X Y Z`` for NIfTI), turns them into instances with the settings
chosen on the validation split (:func:`pipeline.instances.postprocess.postprocess`), and writes,
atomically:

- ``<stem>.png`` (2D; uint16, or ``<stem>.tif`` uint32 past 65,535 objects) or ``<name>.nii.gz``
  (3D; uint16 / uint32 with the input's header and affine): one id per object, 0 = background;
- ``<stem>_objects.csv``: one row per object (:func:`pipeline.instances.measure.objects_table`):
  ``id``, ``area`` (2D) or ``volume`` (3D) in physical units (pixel / voxel spacing of the input),
  ``centroid_<a>`` in the same units, ``bbox_min_<a>`` / ``bbox_max_<a>`` (pixel indices,
  ``[min, max)``), ``mean_intensity`` (of the input, averaged over channels) and
  ``equivalent_diameter``. Axis ``a`` follows :mod:`pipeline.io`: for a 2D picture axis 0 is
  ``x`` (the column) and axis 1 ``y`` (the row); for NIfTI the voxel axes ``i j k``.
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.instances.measure import columns, objects_table
from pipeline.instances.postprocess import PARAMETERS, postprocess
from pipeline.io import atomic_write_text, file_kind, read_image, split_suffix, write_instance_map

__all__ = ["settings_from", "instance_spec", "write_instances", "objects_csv_path", "csv_text"]


def settings_from(task: Mapping[str, Any], chosen: Mapping[str, Any] | None) -> dict[str, Any]:
    """Post-processing settings: those chosen on validation, else the config's fixed ones and the
    middle of its grid (``task.postprocess``), for a run trained before the choice was saved."""
    pp = task["postprocess"]
    base = {
        "markers": pp["markers"],
        "interior_threshold": 0.5 if 0.5 in pp["interior_thresholds"] else pp["interior_thresholds"][0],
        "foreground_threshold": pp["foreground_threshold"],
        "min_size": sorted(pp["min_sizes"])[len(pp["min_sizes"]) // 2],
        "max_hole_size": pp["max_hole_size"],
        "min_distance": pp["min_distance"],
    }
    if chosen:
        base.update({k: chosen[k] for k in PARAMETERS if k in chosen})
    return base


def instance_spec(task: Mapping[str, Any], chosen: Mapping[str, Any] | None) -> dict[str, Any]:
    """The instance step of an exported model's processing spec (``medseg export``)."""
    return {
        "settings": settings_from(task, chosen),
        "chosen_on_validation": bool(chosen),
        "how": "channels background / interior / border; foreground = 1 - p(background) > foreground_threshold, "
        "holes up to max_hole_size filled; seeds = connected regions of p(interior) > interior_threshold "
        "(markers interior) or distance-transform peaks min_distance apart (markers distance); watershed of "
        "-p(interior) (or -distance) from the seeds within the foreground; unreached foreground regions become "
        "objects; objects under min_size pixels dropped; ids 1..N (pipeline.instances.postprocess.postprocess)",
        "output": "uint16 id map (uint32 TIFF / NIfTI past 65,535 objects), 0 = background",
    }


def objects_csv_path(target: str | os.PathLike) -> Path:
    """``<stem>_objects.csv`` next to the label map ``target``."""
    target = Path(target)
    return target.with_name(split_suffix(target.name)[0] + "_objects.csv")


def csv_text(rows: list[dict[str, Any]], header: list[str]) -> str:
    """Rows as CSV text (floats with 6 significant digits)."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=header, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
    return buf.getvalue()


def write_instances(
    probabilities: Any,
    source: str | os.PathLike,
    target: str | os.PathLike,
    settings: Mapping[str, Any],
    *,
    objects: bool = True,
    channels: Sequence[int] | None = None,
) -> tuple[np.ndarray, list[Path]]:
    """Instances of one case from its probabilities, written next to ``target``.

    Args:
        probabilities: ``3 spatial`` class probabilities in the input file's geometry.
        source: the input image (its geometry, spacing and intensities).
        target: the label map's path (``<stem>.png`` / ``<name>.nii.gz``, as ``medseg infer`` names it).
        settings: post-processing settings (:func:`settings_from`).
        objects: also write ``<stem>_objects.csv``.
        channels: the image channels whose mean is ``mean_intensity`` (the config's
            ``transforms.channels``, so an RGBA picture's alpha is left out); None: all.

    Returns:
        The id map (uint16 / uint32) and the files written.
    """
    probs = np.asarray(probabilities.numpy() if hasattr(probabilities, "numpy") else probabilities, np.float32)
    ids = postprocess(probs, settings)
    nifti = file_kind(source) == "nifti"
    written = [write_instance_map(target, ids, like=source if nifti else None)]
    if objects:
        image = read_image(source)
        spacing = tuple(float(v) for v in image.pixdim[: ids.ndim]) if nifti else (1.0,) * ids.ndim
        pixels = np.asarray(image, dtype=np.float64)
        pixels = pixels[list(channels)] if channels is not None else pixels
        intensity = pixels.mean(axis=0).reshape(ids.shape)
        rows = objects_table(ids, image=intensity, spacing=spacing)
        written.append(atomic_write_text(objects_csv_path(target), csv_text(rows, columns(ids.ndim))))
    return ids, written
