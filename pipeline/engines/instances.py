"""Instance runs end to end: thresholds chosen on validation after training, and instance evaluation.

- :func:`tune_postprocess` (called by :func:`pipeline.engines.run.run_training` after an instance
  run's last epoch): the best checkpoint segments every validation case
  (:class:`pipeline.engines.predictor.Predictor`, in the files' own geometry), and
  :func:`pipeline.instances.postprocess.select_thresholds` grids ``task.postprocess``'s seed
  thresholds and minimum sizes for the best mean AP (or AP@0.5) over those cases. The choice is
  written to ``<run>/postprocess.json`` and into ``best.pt`` / ``last.pt`` (key
  ``postprocess``), so ``medseg infer`` and ``medseg evaluate`` use it from the checkpoint alone.
- :func:`evaluate_instances_split` (``medseg evaluate --checkpoint`` on an instance run) and
  :func:`evaluate_instances_folder` (``medseg evaluate --instances --pred P --label L``): per
  image AP at IoU 0.5:0.05:0.95 (TP/(TP+FP+FN)), mean AP, F1 / precision / recall / PQ at 0.5,
  AJI and count error (:func:`pipeline.instances.metrics.instance_metrics`) in ``per_case.csv``,
  the means and pooled AP in ``summary.json``, and an outline picture per case in
  ``overlays/<case>.png`` (truth | prediction, each object in its colour) for the reports.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from pipeline.config import Config, load_config
from pipeline.data import load_datalist
from pipeline.engines.checkpoint import load_checkpoint, save_checkpoint
from pipeline.engines.evaluator import check_outputs
from pipeline.engines.members import checkpoint_paths
from pipeline.engines.predictor import Predictor, output_name
from pipeline.errors import DataError, MedsegError
from pipeline.instances.metrics import instance_metrics, summarise
from pipeline.instances.output import csv_text, settings_from
from pipeline.instances.postprocess import postprocess, select_thresholds
from pipeline.instances.render import overlay
from pipeline.instances.schema import is_instance
from pipeline.io import atomic_write, atomic_write_text, pair_folders, read_image, read_label, write_instance_map
from transforms import keys

__all__ = [
    "POSTPROCESS_JSON",
    "tune_postprocess",
    "true_instances",
    "InstanceEvaluation",
    "evaluate_instances_split",
    "evaluate_instances_folder",
    "checkpoint_is_instance",
    "run_instance_evaluation",
]

POSTPROCESS_JSON = "postprocess.json"
SUMMARY_KEYS = ("mean_ap", "ap_0.50", "ap_0.75", "f1", "precision", "recall", "aji", "pq", "count_error")


def checkpoint_is_instance(checkpoint: str | os.PathLike | Sequence[str | os.PathLike]) -> bool:
    """Whether a checkpoint's saved config is an instance task (of an ensemble: its first member's)."""
    return is_instance(load_checkpoint(checkpoint_paths(checkpoint)[0])["config"])


def true_instances(item: Mapping[str, Any], spatial_dims: int) -> np.ndarray:
    """The reference id map of a datalist item in its file's loaded geometry (``instance``, else ``label``)."""
    from transforms.dictionary import LoadCased

    key = keys.INSTANCE if keys.INSTANCE in item else keys.LABEL
    if key not in item:
        raise DataError(f"datalist item {item.get(keys.CASE)!r} has no label or instance masks")
    load = LoadCased(
        [key], reader=read_image, spatial_dims=spatial_dims, required=[key], image_key=key, instance_keys=(key,)
    )
    return np.asarray(load({key: item[key]})[key])[0].astype(np.int64)


def _source(item: Mapping[str, Any]) -> str:
    image = item[keys.IMAGE]
    return str(image[0] if isinstance(image, (list, tuple)) else image)


def tune_postprocess(config: Config, run_dir: str | os.PathLike, *, progress: bool = True) -> dict[str, Any] | None:
    """Choose the post-processing thresholds on the validation split and save them with the run.

    Uses ``best.pt`` (else ``last.pt``); without validation cases the training cases stand in
    (said in the log line and in ``split`` of the JSON). Returns the chosen settings (None when
    the run has no checkpoint).
    """
    run_dir = Path(run_dir)
    ckpts = [run_dir / "checkpoints" / f"{name}.pt" for name in ("best", "last")]
    ckpts = [p for p in ckpts if p.exists()]
    if not ckpts:
        return None
    splits = load_datalist(config["data"])
    split = "val" if splits.get("val") else "train"
    items = splits.get(split) or []
    if not items:
        return None
    start = time.perf_counter()
    predictor = Predictor(ckpts[0], config, device=config["train"]["device"])
    pairs = []
    for item in tqdm(items, desc=f"post-processing on {split}", disable=None if progress else True, leave=False):
        probs = predictor(item).probabilities.numpy()
        true = true_instances(item, config.spatial_dims)
        if true.shape != probs.shape[1:]:
            raise DataError(f"{_source(item)}: instance masks {true.shape} differ from the image {probs.shape[1:]}")
        pairs.append((probs, true))
    pp = config["task"]["postprocess"]
    chosen = select_thresholds(
        pairs,
        interior_thresholds=pp["interior_thresholds"],
        min_sizes=pp["min_sizes"],
        markers=pp["markers"],
        foreground_threshold=pp["foreground_threshold"],
        max_hole_size=pp["max_hole_size"],
        min_distance=pp["min_distance"],
        metric=pp["metric"],
    )
    chosen = {**chosen, "split": split, "checkpoint": ckpts[0].name}
    atomic_write_text(run_dir / POSTPROCESS_JSON, json.dumps(chosen, indent=2) + "\n")
    for path in ckpts:
        state = load_checkpoint(path)
        state["postprocess"] = {k: v for k, v in chosen.items() if k != "grid"}
        state.pop("format", None)
        save_checkpoint(state, path, keep_previous=False)
    edges = [
        f"task.postprocess.{key}"
        for key, value, grid in (
            ("interior_thresholds", chosen["interior_threshold"], pp["interior_thresholds"]),
            ("min_sizes", chosen["min_size"], pp["min_sizes"]),
        )
        if len(grid) > 1 and value == max(grid) and (key != "interior_thresholds" or pp["markers"] == "interior")
    ]
    note = f"; the best is the largest value of {' and '.join(edges)}: larger ones may score higher" if edges else ""
    print(
        f"post-processing chosen on {len(pairs)} {split} case(s) in {time.perf_counter() - start:.1f} s: "
        f"interior_threshold {chosen['interior_threshold']}, min_size {chosen['min_size']} "
        f"({pp['metric']} {chosen['score']:.4f}); saved in {run_dir / POSTPROCESS_JSON} and the checkpoints{note}",
        file=sys.stdout,
        flush=True,
    )
    return chosen


def _picture(image: np.ndarray | None, true: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """Truth | prediction outlines, rows first (a 2D map transposed from W H, a volume's middle slice)."""

    def view(a: np.ndarray) -> np.ndarray:
        return a[..., a.shape[-1] // 2].T if a.ndim == 3 else a.T

    t, p = view(true), view(pred)
    base = view(image) if image is not None else (t > 0).astype(np.float32) * 0.3
    gap = np.full((t.shape[0], 4, 3), 255, np.uint8)
    return np.concatenate([overlay(base, t, mode="outline"), gap, overlay(base, p, mode="outline")], axis=1)


class InstanceEvaluation:
    """Per-image instance metrics and their summary, written like :class:`pipeline.engines.evaluator.Evaluator`."""

    def __init__(self) -> None:
        self.cases: list[str] = []
        self.rows: list[dict[str, float]] = []
        self.pictures: dict[str, np.ndarray] = {}

    def add(self, case: str, true: np.ndarray, pred: np.ndarray, image: np.ndarray | None = None) -> dict[str, float]:
        if true.shape != pred.shape:
            raise DataError(f"case {case}: label shape {true.shape} differs from the prediction's {pred.shape}")
        row = instance_metrics(true, pred)
        self.cases.append(case)
        self.rows.append(row)
        self.pictures[case] = _picture(image, true, pred)
        return row

    def summary(self) -> dict[str, Any]:
        return {"task": "instance", "n_cases": len(self.rows), "metrics": summarise(self.rows)}

    def table(self) -> str:
        s = self.summary()["metrics"]
        if not s:
            return "no cases"
        lines = [f"{'metric':<14}{'mean':>8}"]
        for key in SUMMARY_KEYS:
            lines.append(f"{key:<14}{s['mean_' + key]:>8.4f}")
        lines.append(f"{'|count error|':<14}{s['mean_abs_count_error']:>8.4f}")
        lines.append(f"{'pooled AP@0.5':<14}{s['pooled_ap_0.50']:>8.4f}")
        return "\n".join(lines) + f"\nmean over {len(self.rows)} images (AP = TP/(TP+FP+FN), DSB2018)"

    def write(self, output_dir: str | os.PathLike, *, overwrite: bool = False) -> tuple[Path, Path]:
        """``per_case.csv``, ``summary.json`` and ``overlays/<case>.png``, atomically."""
        from PIL import Image

        csv_path, json_path = check_outputs(output_dir, overwrite)
        header = ["case", *(self.rows[0] if self.rows else [])]
        rows = [{"case": c, **r} for c, r in zip(self.cases, self.rows, strict=True)]
        for case, picture in self.pictures.items():
            with atomic_write(Path(output_dir) / "overlays" / f"{case}.png") as fh:
                Image.fromarray(picture).save(fh, format="PNG")
        atomic_write_text(csv_path, csv_text(rows, header))
        atomic_write_text(json_path, json.dumps(self.summary(), indent=2) + "\n")
        return csv_path, json_path


def evaluate_instances_split(
    checkpoint: str | os.PathLike,
    output: str | os.PathLike,
    *,
    split: str = "test",
    config_path: str | os.PathLike | None = None,
    overrides: Sequence[str] = (),
    device: str | None = None,
    tta: bool | None = None,
    save_predictions: bool = False,
    overwrite: bool = False,
    progress: bool = True,
) -> InstanceEvaluation:
    """Segment a split of an instance run's dataset into objects and evaluate them (``medseg evaluate -c``).

    Raises:
        MedsegError: an empty split or existing outputs; DataError: unreadable files.
    """
    ckpt = load_checkpoint(checkpoint_paths(checkpoint)[0])  # an ensemble's settings: its first member's
    config = load_config(config_path, overrides, base=None if config_path is not None else ckpt["config"])
    if not is_instance(config):
        raise MedsegError(f"{checkpoint}: not an instance run (task.kind is {config['task']['kind']!r})")
    items = load_datalist(config["data"]).get(split) or []
    if not items:
        raise MedsegError(f"data: the {split!r} split is empty; check data.root and the split fractions")
    check_outputs(output, overwrite)
    settings = settings_from(config["task"], ckpt.get("postprocess"))
    predictor = Predictor(checkpoint, config, device=device, tta=tta)
    evaluation = InstanceEvaluation()
    for item in tqdm(items, desc=f"evaluating {split}", disable=None if progress else True):
        source = _source(item)
        pred = postprocess(predictor(item).probabilities.numpy(), settings)
        image = np.asarray(read_image(source), np.float32)
        channels = config["transforms"]["channels"]
        image = (image[list(channels)] if channels is not None else image).mean(axis=0)
        evaluation.add(str(item.get(keys.CASE)), true_instances(item, config.spatial_dims), pred, image)
        if save_predictions:
            like = source if source.lower().endswith((".nii", ".nii.gz")) else None
            write_instance_map(Path(output) / "predictions" / output_name(source), pred, like=like)
    evaluation.write(output, overwrite=overwrite)
    return evaluation


def evaluate_instances_folder(
    pred_dir: str | os.PathLike,
    label_dir: str | os.PathLike,
    output_dir: str | os.PathLike,
    *,
    case_regex: str | None = None,
    overwrite: bool = False,
    progress: bool = False,
) -> InstanceEvaluation:
    """Instance metrics of every predicted id map in ``pred_dir`` against the id map of the same
    case in ``label_dir`` (``medseg evaluate --instances --pred P --label L``).

    Raises:
        DataError: outputs exist, unpaired files, unreadable files, shape mismatches.
    """
    check_outputs(output_dir, overwrite)
    evaluation = InstanceEvaluation()
    for files in tqdm(pair_folders(pred_dir, label_dir, None, case_regex), desc="evaluate", disable=not progress):
        pred, true = read_label(files.pred).array, read_label(files.label).array
        if pred.shape != true.shape:
            raise DataError(f"{files.pred}: shape {pred.shape} differs from the label {files.label} {true.shape}")
        evaluation.add(files.case, true.astype(np.int64), pred.astype(np.int64))
    evaluation.write(output_dir, overwrite=overwrite)
    return evaluation


def run_instance_evaluation(args: Any, *, progress: bool = False) -> InstanceEvaluation | None:
    """``medseg evaluate`` for instances: with ``--instances``, or automatically for a checkpoint
    of an instance run; None when the command is a semantic evaluation (the caller's route).

    Raises:
        MedsegError: ``--instances`` with a semantic checkpoint, or without --pred/--label or --checkpoint.
    """
    if args.checkpoint and not (args.pred or args.label):
        if not checkpoint_is_instance(args.checkpoint):
            if args.instances:
                raise MedsegError(f"--instances: {args.checkpoint} is not an instance run (task.kind semantic)")
            return None
        if getattr(args, "data", None):
            raise MedsegError("--data: an instance run scores a split of its own dataset (--split), not a root")
        return evaluate_instances_split(
            args.checkpoint,
            args.output,
            split=args.split or "test",
            config_path=args.config,
            overrides=args.set,
            device=args.device,
            tta=args.tta,
            save_predictions=args.save_predictions,
            overwrite=args.overwrite,
            progress=progress,
        )
    if not (args.pred and args.label) or args.checkpoint:
        raise MedsegError("--instances needs --pred and --label folders of id maps, or --checkpoint alone")
    return evaluate_instances_folder(
        args.pred, args.label, args.output, case_regex=args.case_regex, overwrite=args.overwrite, progress=progress
    )
