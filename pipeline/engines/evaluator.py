"""Evaluation engine: per-case metrics accumulated into a per-case CSV, a summary JSON and a table.

:class:`Evaluator` takes in-memory class-index maps one case at a time (the trainer's validation,
inference followed by evaluation); :func:`evaluate_folder` pairs two folders of label images by case
id and feeds them to it (``medseg evaluate --pred DIR --label DIR --output DIR``), mapping the raw
values of predictions and labels to classes with one table: the values of all the label files
together (:func:`folder_label_values`), never decided per file.

Outputs in ``output_dir``, written atomically (temp file + rename), never over existing files
unless ``overwrite``:

- ``per_case.csv``: header ``case,class,<metric>...,status``; one row per case and class, classes
  ascending; ``status`` is ``ok``, ``both_empty``, ``missed`` or ``hallucinated``.
- ``summary.json``: ``n_cases``, ``classes``, ``metrics``, ``nsd_tolerance_mm``, ``per_class``
  (class id as a string -> ``{metric: {mean, std, median}}`` plus the counts ``n_cases``, ``ok``,
  ``both_empty``, ``missed``, ``hallucinated``) and ``foreground_mean`` (metric -> mean over classes
  of the class means). Statistics are over every case, both-empty ones included with the values in
  :mod:`pipeline.metrics`; ``std`` is the population standard deviation (``ddof=0``).
"""

from __future__ import annotations

import csv
import io
import json
import os
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import torch
from monai.data import MetaTensor

from pipeline.engines import html_report
from pipeline.errors import DataError, list_some
from pipeline.io import (
    CaseFiles,
    atomic_write_text,
    label_values_of,
    list_label_files,
    pair_folders,
    read_label,
    read_mask,
)
from pipeline.metrics import BOTH_EMPTY, METRICS, STATUSES, check_metrics, empty_result, evaluate_case
from transforms.array import MapLabels

PER_CASE_CSV = "per_case.csv"
SUMMARY_JSON = "summary.json"


def output_paths(output_dir: str | os.PathLike) -> tuple[Path, Path]:
    """``(per_case.csv, summary.json)`` paths inside ``output_dir``."""
    return Path(output_dir) / PER_CASE_CSV, Path(output_dir) / SUMMARY_JSON


def check_outputs(output_dir: str | os.PathLike, overwrite: bool = False) -> tuple[Path, Path]:
    """Fail before any work if the outputs exist (and ``overwrite`` is off) or cannot be created.

    Raises:
        DataError: naming the existing file, or the output path that is not a directory.
    """
    output_dir = Path(output_dir)
    if output_dir.exists() and not output_dir.is_dir():
        raise DataError(f"{output_dir}: output path exists and is not a directory")
    paths = output_paths(output_dir)
    for path in paths:
        if path.exists() and not overwrite:
            raise DataError(f"{path} exists; pass --overwrite (overwrite=True) to replace it")
    return paths


class Evaluator:
    """Per-case, per-class metrics accumulated over a dataset.

    Args:
        classes: class indices (>= 1) to report. None: every class found in any prediction or
            label so far; a case that lacks a class found elsewhere gets a ``both_empty`` row.
        nsd_tolerance: NSD tolerance in mm.
        metrics: names from :data:`pipeline.metrics.METRICS` (e.g. ``("dice",)`` for a fast
            validation); default: all.

    Example:
        >>> ev = Evaluator(classes=[1], metrics=("dice", "hd95"))
        >>> label = np.zeros((16, 16), np.uint8); label[4:12, 4:12] = 1
        >>> _ = ev.add("case0", label, label, spacing=(0.5, 0.5))
        >>> ev.summary()["per_class"]["1"]["dice"]["mean"]
        1.0
    """

    def __init__(
        self,
        classes: Iterable[int] | None = None,
        *,
        nsd_tolerance: float = 1.0,
        metrics: Iterable[str] | None = None,
    ) -> None:
        self.metrics = check_metrics(METRICS.names() if metrics is None else metrics)
        self.fixed_classes = None if classes is None else tuple(sorted({int(c) for c in classes}))
        if self.fixed_classes is not None and (not self.fixed_classes or self.fixed_classes[0] < 1):
            raise ValueError(f"classes must be a non-empty list of indices >= 1, got {classes!r}")
        if not (np.isfinite(nsd_tolerance) and nsd_tolerance >= 0):
            raise ValueError(f"nsd_tolerance must be a finite number >= 0 (mm), got {nsd_tolerance!r}")
        self.nsd_tolerance = float(nsd_tolerance)
        self.results: dict[str, dict[int, dict[str, float | str]]] = {}

    @property
    def classes(self) -> tuple[int, ...]:
        if self.fixed_classes is not None:
            return self.fixed_classes
        return tuple(sorted({c for res in self.results.values() for c in res}))

    def reset(self) -> None:
        """Forget every case (e.g. at the start of each validation)."""
        self.results = {}

    def add(
        self, case: str, pred, label, spacing: Sequence[float] | float | None = None, fov=None
    ) -> dict[int, dict[str, float | str]]:
        """Evaluate one case; arguments as :func:`pipeline.metrics.evaluate_case`. Returns its results.

        Raises:
            ValueError: ``case`` was added before, or bad arrays (see ``evaluate_case``).
        """
        case = str(case)
        if case in self.results:
            raise ValueError(f"case {case!r} was already added")
        res = evaluate_case(
            pred, label, spacing, self.fixed_classes, fov, nsd_tolerance=self.nsd_tolerance, metrics=self.metrics
        )
        self.results[case] = res
        return res

    def merge(self, others: Iterable[Evaluator]) -> None:
        """Add the cases of other evaluators (e.g. gathered from DDP ranks with ``all_gather_object``)."""
        for other in others:
            if other.metrics != self.metrics or other.nsd_tolerance != self.nsd_tolerance:
                raise ValueError("can only merge evaluators with the same metrics and nsd_tolerance")
            if dup := sorted(set(other.results) & set(self.results)):
                raise ValueError(f"cases evaluated twice: {dup[:5]}")
            self.results.update(other.results)

    def rows(self) -> list[dict[str, float | str | int]]:
        """One dict per case and class: ``case``, ``class``, each metric, ``status``."""
        classes = self.classes
        rows = []
        for case, res in self.results.items():
            for c in classes:
                rows.append({"case": case, "class": c, **(res.get(c) or empty_result(BOTH_EMPTY, self.metrics))})
        return rows

    def summary(self) -> dict:
        """Statistics per class (see the module docstring for the layout).

        Raises:
            ValueError: no case was added.
        """
        if not self.results:
            raise ValueError("no cases to summarise; call add() first")
        rows = self.rows()
        per_class = {}
        for c in self.classes:
            mine = [r for r in rows if r["class"] == c]
            stats: dict = {"n_cases": len(mine), **{s: sum(r["status"] == s for r in mine) for s in STATUSES}}
            for m in self.metrics:
                values = np.array([r[m] for r in mine], dtype=np.float64)
                stats[m] = {
                    "mean": float(values.mean()),
                    "std": float(values.std()),
                    "median": float(np.median(values)),
                }
            per_class[str(c)] = stats
        foreground = {m: float(np.mean([s[m]["mean"] for s in per_class.values()])) for m in self.metrics}
        return {
            "n_cases": len(self.results),
            "classes": list(self.classes),
            "metrics": list(self.metrics),
            "nsd_tolerance_mm": self.nsd_tolerance,
            "per_class": per_class,
            "foreground_mean": foreground if per_class else {},
        }

    def table(self) -> str:
        """Mean ± std per class and metric, with the empty/missed/hallucinated counts, as text."""
        summary = self.summary()
        header = ["class", "cases", "empty/miss/hall", *self.metrics]
        lines = []
        for c, s in summary["per_class"].items():
            cells = [c, str(s["n_cases"]), f"{s[BOTH_EMPTY]}/{s['missed']}/{s['hallucinated']}"]
            lines.append(cells + [_mean_std(m, s[m]["mean"], s[m]["std"]) for m in self.metrics])
        if len(lines) > 1:
            fg = summary["foreground_mean"]
            lines.append(["mean", "", "", *(_mean_std(m, fg[m], None) for m in self.metrics)])
        widths = [max(len(row[i]) for row in [header, *lines]) for i in range(len(header))]
        fmt = "  ".join(f"{{:<{w}}}" if i == 0 else f"{{:>{w}}}" for i, w in enumerate(widths))
        arrows = " ".join(f"{m}{'↑' if METRICS.get(m).higher_is_better else '↓'}" for m in self.metrics)
        note = f"mean ± std over {summary['n_cases']} cases ({arrows}; distances in mm); "
        note += "empty/miss/hall: cases with the class in neither / only the label / only the prediction"
        return "\n".join([fmt.format(*header), *(fmt.format(*row) for row in lines), note])

    def write(self, output_dir: str | os.PathLike, *, overwrite: bool = False) -> tuple[Path, Path]:
        """Write ``per_case.csv`` and ``summary.json`` atomically; returns their paths.

        Raises:
            DataError: an output exists and ``overwrite`` is False.
        """
        csv_path, json_path = check_outputs(output_dir, overwrite)
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=["case", "class", *self.metrics, "status"], lineterminator="\n")
        writer.writeheader()
        writer.writerows(self.rows())
        summary = self.summary()
        atomic_write_text(csv_path, buf.getvalue())
        atomic_write_text(json_path, json.dumps(summary, indent=2) + "\n")
        return csv_path, json_path


def _mean_std(metric: str, mean: float, std: float | None) -> str:
    digits = METRICS.get(metric).digits
    return f"{mean:.{digits}f}" + ("" if std is None else f" ± {std:.{digits}f}")


def load_case(
    files: CaseFiles, label_values: Sequence[float] | None = None
) -> tuple[np.ndarray, np.ndarray, tuple[float, ...], np.ndarray | None]:
    """Read one case's prediction, label (its spacing is used) and FOV, checking their shapes.

    Args:
        files: the case's files.
        label_values: the raw value of each class (the dataset's one table), applied to the
            prediction and the label alike; None keeps the raw values as class indices.

    Raises:
        DataError: unreadable files, shapes that differ (naming both files and shapes), values
            that are not in ``label_values``.
    """
    pred, label = read_label(files.pred), read_label(files.label)
    if pred.array.shape != label.array.shape:
        raise DataError(
            f"shape mismatch: prediction {files.pred} is {pred.array.shape}, label {files.label} is {label.array.shape}"
        )
    if pred.affine is not None and label.affine is not None and not np.allclose(pred.affine, label.affine, atol=1e-3):
        warnings.warn(
            f"{files.pred} and {files.label} have different affines (spacing, orientation or origin); "
            f"voxels are compared index by index and distances use the label's spacing {label.spacing}",
            stacklevel=2,
        )
    fov = None
    if files.fov is not None:
        fov = read_mask(files.fov)
        if fov.shape != label.array.shape:
            raise DataError(
                f"shape mismatch: FOV mask {files.fov} is {fov.shape}, label {files.label} is {label.array.shape}"
            )
    if label_values is None:
        return pred.array, label.array, label.spacing, fov
    table = MapLabels(label_values, len(label_values))
    classes = [_to_classes(table, x.array, x.path) for x in (pred, label)]
    return classes[0], classes[1], label.spacing, fov


def _to_classes(table: MapLabels, array: np.ndarray, path: Path) -> np.ndarray:
    """Raw values -> class indices with the dataset's table (the training chain's MapLabels)."""
    unknown = sorted(set(np.unique(array).tolist()) - {int(v) for v in table.values})
    if unknown:
        known = ", ".join(f"{v:g}" for v in table.values)
        raise DataError(
            f"{path}: values {list_some(unknown)} are not among the label values ({known}) of the labels; "
            "predictions must be written with the labels' values (medseg infer does)"
        )
    values = MetaTensor(torch.from_numpy(array.astype(np.float32)), meta={"filename_or_obj": str(path)})
    return table(values).numpy().astype(np.int64)


def folder_label_values(label_dir: str | os.PathLike, case_regex: str | None = None) -> list[float]:
    """The one table of raw label values of a folder of labels: every file's values together.

    Background 0 is always a class; a folder whose labels are all background is read as a
    binary task (0 and 1).
    """
    found = {0}
    for path in list_label_files(label_dir, case_regex).values():
        found |= label_values_of(path)
    table = sorted(float(v) for v in found)
    return table if len(table) > 1 else [0.0, 1.0]


def evaluate_folder(
    pred_dir: str | os.PathLike,
    label_dir: str | os.PathLike,
    output_dir: str | os.PathLike,
    *,
    fov_dir: str | os.PathLike | None = None,
    classes: Iterable[int] | None = None,
    nsd_tolerance: float = 1.0,
    metrics: Iterable[str] | None = None,
    case_regex: str | None = None,
    label_values: Sequence[float] | None = None,
    overwrite: bool = False,
    progress: bool = False,
) -> Evaluator:
    """Evaluate every prediction in ``pred_dir`` against the label of the same case in ``label_dir``.

    Args:
        pred_dir: predicted label images (NIfTI / PNG / GIF / TIFF, see :mod:`pipeline.io`).
        label_dir: reference label images; their spacing is used for distances.
        output_dir: where ``per_case.csv`` and ``summary.json`` go (created if missing).
        fov_dir: optional field-of-view masks, paired by the same case id.
        classes, nsd_tolerance, metrics: as :class:`Evaluator`.
        case_regex: how case ids are taken from file names (:func:`pipeline.io.list_label_files`);
            None pairs identical stems. DRIVE: ``r"^(\\d+)_"`` pairs ``01_test.png``,
            ``01_manual1.gif`` and ``01_test_mask.gif``.
        label_values: the raw label value of each class (the run's ``transforms.label_values``);
            None: the values found in all of ``label_dir``'s files together, sorted (0/255
            labels: 255 is class 1; 0/128/255: classes 1 and 2). Predictions and labels are mapped
            with that one table, never per file.
        overwrite: replace existing outputs.
        progress: show a progress bar on stderr.

    Returns:
        The filled :class:`Evaluator` (``.table()`` for printing, ``.summary()``).

    Raises:
        DataError: outputs exist, unpaired files, unreadable files, shape mismatches.
    """
    from tqdm import tqdm

    check_outputs(output_dir, overwrite)
    pairs = pair_folders(pred_dir, label_dir, fov_dir, case_regex)
    table = list(label_values) if label_values is not None else folder_label_values(label_dir, case_regex)
    evaluator = Evaluator(classes, nsd_tolerance=nsd_tolerance, metrics=metrics)
    for files in tqdm(pairs, desc="evaluate", unit="case", disable=not progress):
        pred, label, spacing, fov = load_case(files, table)
        evaluator.add(files.case, pred, label, spacing, fov)
    evaluator.write(output_dir, overwrite=overwrite)
    cases = [{"case": f.case, "image": None, "label": f.label, "prediction": f.pred} for f in pairs]
    html_report.write_case_index(output_dir, cases, table)
    html_report.build_report(output_dir)
    return evaluator
