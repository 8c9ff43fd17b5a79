"""k-fold cross-validation: ``medseg train --fold k``, ``medseg cv``, ``medseg cv summarize``.

A cross-validation run folder ``RUN`` (``train.output``, default ``runs/<config stem>``) holds one
ordinary run folder per fold::

    RUN/fold_<k>/            config.yaml (data.fold = k), checkpoints/, log.csv, .medseg.lock
    RUN/fold_<k>/validation/ per_case.csv, summary.json, predictions/<case>.png|.nii.gz
                             (+ <case>_probabilities.npz, float16, with --probabilities)
    RUN/cv_summary.json, RUN/cv_summary.csv, RUN/postprocessing.json

Folds come from ``data.num_folds`` (the schema's one name for K) and ``data.split_seed``: a seeded
Fisher–Yates shuffle of the sorted non-test case ids cut into K parts
(:func:`pipeline.data.splits.kfold`), identical on every machine. Adding cases reshuffles every
fold (and the test set), so the assignment is not stable under additions: a run's folds are
those its fold folders were trained on, recorded per case in ``validation/per_case.csv``, and
``medseg select`` refuses runs whose folds differ. A hash of each case id would keep old cases in
their folds, but gives folds whose sizes differ by about the square root of their size (not by at
most one) and would need a second rule for the test set; a dataset that grows is retrained anyway.

Each fold trains as ``medseg train`` does (its own lock, resumable), then predicts its validation
cases with full-image sliding windows from its best checkpoint: the out-of-fold (OOF) predictions,
evaluated into ``validation/``. A fold is finished when ``validation/summary.json`` exists;
``medseg cv`` skips finished folds, resumes interrupted ones, and with several CUDA devices
visible (and not under torchrun) trains one fold per device, each in its own process with
``CUDA_VISIBLE_DEVICES`` (the advice of nnU-Net's maintainers over DDP for small datasets).
"""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipeline.config import Config, ConfigError, load_config
from pipeline.data import load_datalist
from pipeline.engines.evaluator import PER_CASE_CSV, SUMMARY_JSON
from pipeline.engines.members import fold_dirs, run_checkpoint
from pipeline.engines.postprocessing import POSTPROCESSING_JSON, choose_postprocessing, write_postprocessing
from pipeline.engines.predictor import _load_reference, evaluate_split, output_name
from pipeline.engines.run import run_dir_for, run_training
from pipeline.errors import MedsegError
from pipeline.io import atomic_write_text, file_kind, split_suffix
from pipeline.metrics import METRICS
from transforms import keys

__all__ = [
    "CV_SUMMARY",
    "fold_dir",
    "fold_state",
    "load_oof",
    "oof_cases",
    "oof_index",
    "read_oof_labels",
    "read_oof_probabilities",
    "run_cv",
    "summarize_cv",
    "train_fold",
    "write_oof",
]

CV_SUMMARY = "cv_summary"
VALIDATION = "validation"


def _cv_config(config_path: str | os.PathLike, overrides: Sequence[str]) -> tuple[Config, Path]:
    config = load_config(config_path, overrides)
    return config, run_dir_for(config, config_path)


def fold_dir(run: str | os.PathLike, fold: int) -> Path:
    return Path(run) / f"fold_{fold}"


def _has_probabilities(folder: Path) -> bool:
    return any(folder.glob("*_probabilities.npz"))


def fold_state(folder: Path, probabilities: bool = False, epochs: int | None = None) -> str:
    """``done`` (OOF predictions evaluated), ``predict`` (trained to ``epochs``, default its own
    ``train.epochs``, but OOF missing or without the probabilities asked for) or ``train`` (not
    started, or interrupted: resumed)."""
    val = folder / VALIDATION
    if (val / SUMMARY_JSON).is_file():
        return "predict" if probabilities and not _has_probabilities(val / "predictions") else "done"
    from pipeline.engines.checkpoint import load_checkpoint

    try:
        ckpt = load_checkpoint(folder / "checkpoints" / "last.pt")
    except MedsegError:  # none yet, or damaged: training resumes (from last.prev.pt) or starts
        return "train"
    target = int(ckpt["config"]["train"]["epochs"]) if epochs is None else epochs
    return "predict" if int(ckpt["train_state"]["epoch"]) >= target else "train"


def write_oof(folder: Path, *, probabilities: bool = False, progress: bool = False) -> dict[str, Any]:
    """Predict a trained fold's validation cases (best checkpoint, full-image sliding windows) and
    evaluate them into ``folder/validation``; returns the evaluation summary."""
    ckpt = run_checkpoint(folder)
    if ckpt is None:
        raise MedsegError(f"{folder}: no checkpoint to predict the validation cases with")
    out = folder / VALIDATION
    evaluator = evaluate_split(
        ckpt,
        out,
        split="val",
        save_predictions=True,
        save_probabilities=probabilities,
        overwrite=True,
        progress=progress,
        use_postprocessing=False,
    )
    return evaluator.summary()


def train_fold(
    config_path: str | os.PathLike,
    overrides: Sequence[str] = (),
    fold: int = 0,
    *,
    resume: bool = False,
    overwrite: bool = False,
    probabilities: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Train fold ``fold`` into ``RUN/fold_<fold>`` and write its OOF predictions; returns the
    training summary with ``oof`` (the validation summary; None on ranks other than 0).

    Raises:
        ConfigError: ``fold`` outside ``[0, data.num_folds)``.
    """
    config, run = _cv_config(config_path, overrides)
    k = config["data"]["num_folds"]
    if not 0 <= fold < k:
        raise ConfigError(f"--fold {fold}: must be in [0, {k}) (data.num_folds = {k})")
    folder = fold_dir(run, fold)
    sets = [*overrides, f"data.fold={fold}", f"train.output={folder}"]
    summary = run_training(config_path, sets, resume=resume, overwrite=overwrite, progress=progress)
    summary["oof"] = None
    if summary["rank"] == 0:
        summary["oof"] = _oof_line(folder, fold, probabilities)
    return summary


def _oof_line(folder: Path, fold: int, probabilities: bool) -> dict[str, Any]:
    oof = write_oof(folder, probabilities=probabilities)
    dice = oof["foreground_mean"].get("dice")
    shown = "" if dice is None else f", Dice {dice:.4f}"
    print(f"fold {fold}: out-of-fold predictions of {oof['n_cases']} cases in {folder / VALIDATION}{shown}", flush=True)
    return oof


def _devices(config: Config) -> int:
    """CUDA devices to spread folds over: several visible, not under torchrun, not forced to CPU."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 or config["train"]["device"] == "cpu":
        return 0
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def run_cv(
    config_path: str | os.PathLike,
    overrides: Sequence[str] = (),
    *,
    probabilities: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Train every fold that is not finished (one after another, or one per CUDA device), then
    summarise the run (:func:`summarize_cv`); returns the summary."""
    config, run = _cv_config(config_path, overrides)
    k = config["data"]["num_folds"]
    epochs = config["train"]["epochs"]
    states = {f: fold_state(fold_dir(run, f), probabilities, epochs) for f in range(k)}
    todo = [f for f, s in states.items() if s != "done"]
    done = [f for f, s in states.items() if s == "done"]
    print(
        f"cv: {k} folds in {run}; finished: {', '.join(map(str, done)) or 'none'}; "
        f"to do: {', '.join(f'{f} ({states[f]})' for f in todo) or 'none'}",
        flush=True,
    )
    gpus = _devices(config)
    if gpus > 1 and len([f for f in todo if states[f] == "train"]) > 1:
        _parallel_folds(config_path, overrides, todo, gpus, run, probabilities)
    else:
        for f in todo:
            if states[f] == "predict":
                _oof_line(fold_dir(run, f), f, probabilities)
            else:
                print(f"cv: fold {f} of {k}", flush=True)
                train_fold(config_path, overrides, f, resume=True, probabilities=probabilities, progress=progress)
    if int(os.environ.get("RANK", "0")) != 0:  # under torchrun: rank 0 summarises
        return {}
    return summarize_cv(run)


def _parallel_folds(
    config_path: str | os.PathLike,
    overrides: Sequence[str],
    folds: Sequence[int],
    gpus: int,
    run: Path,
    probabilities: bool,
) -> None:
    """One ``medseg train --fold k --resume`` process per CUDA device until every fold is done;
    each child's output goes to ``RUN/fold_<k>.log``."""
    queue = list(folds)
    running: dict[int, tuple[int, subprocess.Popen, Any]] = {}  # device -> (fold, process, log)
    failed: list[str] = []
    run.mkdir(parents=True, exist_ok=True)
    while queue or running:
        for device in range(gpus):
            if device not in running and queue:
                fold = queue.pop(0)
                cmd = [sys.executable, "-m", "pipeline.cli", "train", "-c", str(config_path), "--fold", str(fold)]
                cmd += ["--resume", *(a for o in overrides for a in ("--set", o))]
                cmd += ["--probabilities"] if probabilities else []
                log = (run / f"fold_{fold}.log").open("a", encoding="utf-8")
                env = {**os.environ, "CUDA_VISIBLE_DEVICES": str(device), "PYTHONUNBUFFERED": "1"}
                running[device] = (fold, subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env), log)
                print(f"cv: fold {fold} started on cuda:{device} (log {log.name})", flush=True)
        for device, (fold, proc, log) in list(running.items()):
            if proc.poll() is not None:
                log.close()
                del running[device]
                status = "finished" if proc.returncode == 0 else f"failed (exit {proc.returncode})"
                print(f"cv: fold {fold} {status} on cuda:{device}", flush=True)
                if proc.returncode:
                    failed.append(f"fold {fold} (see {run / f'fold_{fold}.log'})")
        time.sleep(1.0)
    if failed:
        raise MedsegError(f"cv: {', '.join(failed)} did not finish; rerun medseg cv to resume them")


# --------------------------------------------------------------------------- summaries


def _read_per_case(path: Path) -> list[dict[str, Any]]:
    with path.open(encoding="utf-8", newline="") as fh:
        return list(csv.DictReader(fh))


def _case_means(rows: Sequence[Mapping[str, Any]], metrics: Sequence[str]) -> dict[str, dict[str, float]]:
    """Per case, each metric's mean over its classes."""
    by_case: dict[str, dict[str, list[float]]] = {}
    for row in rows:
        cell = by_case.setdefault(row["case"], {m: [] for m in metrics})
        for m in metrics:
            cell[m].append(float(row[m]))
    return {case: {m: float(np.mean(v)) for m, v in values.items()} for case, values in by_case.items()}


def _stats(values: Sequence[float]) -> dict[str, float]:
    arr = np.asarray(values, dtype=np.float64)
    return {"mean": float(arr.mean()), "std": float(arr.std()), "n": int(arr.size)}


def oof_cases(run: str | os.PathLike) -> dict[int, list[str]]:
    """The validation case ids of each finished fold of a cross-validation run (its folds)."""
    out: dict[int, list[str]] = {}
    for folder in fold_dirs(run):
        path = folder / VALIDATION / PER_CASE_CSV
        if (folder / VALIDATION / SUMMARY_JSON).is_file() and path.is_file():
            out[int(folder.name.split("_")[1])] = sorted({r["case"] for r in _read_per_case(path)})
    return out


def summarize_cv(run: str | os.PathLike, *, postprocessing: bool = True) -> dict[str, Any]:
    """Per-fold and pooled OOF metrics of a cross-validation run, written as ``RUN/cv_summary.json``
    and ``RUN/cv_summary.csv``, without retraining; then (``postprocessing``) chooses the
    post-processing on the OOF predictions (``RUN/postprocessing.json``).

    ``folds``: each metric's mean over classes and cases of each fold, and their mean ± sd over
    folds; ``pooled``: each case's mean over classes, mean ± sd over all OOF cases (sd: ``ddof=0``).

    Raises:
        MedsegError: no finished fold in ``run``.
    """
    run = Path(run)
    finished = oof_cases(run)
    if not finished:
        raise MedsegError(f"{run}: no finished fold (fold_<k>/{VALIDATION}/{SUMMARY_JSON}); run medseg cv -c CONFIG")
    expected = _num_folds(run)
    missing = [f for f in range(expected) if f not in finished]
    per_fold: dict[str, dict[str, Any]] = {}
    pooled_cases: dict[str, dict[str, float]] = {}
    metrics: list[str] = []
    for f in sorted(finished):
        folder = fold_dir(run, f) / VALIDATION
        summary = json.loads((folder / SUMMARY_JSON).read_text(encoding="utf-8"))
        metrics = metrics or list(summary["metrics"])
        per_fold[str(f)] = {"n_cases": summary["n_cases"], **summary["foreground_mean"]}
        pooled_cases.update(_case_means(_read_per_case(folder / PER_CASE_CSV), metrics))
    out = {
        "run": str(run),
        "num_folds": expected,
        "finished_folds": sorted(finished),
        "missing_folds": missing,
        "metrics": metrics,
        "per_fold": per_fold,
        "over_folds": {m: _stats([v[m] for v in per_fold.values()]) for m in metrics},
        "pooled": {m: _stats([v[m] for v in pooled_cases.values()]) for m in metrics},
        "n_cases": len(pooled_cases),
    }
    atomic_write_text(run / f"{CV_SUMMARY}.json", json.dumps(out, indent=2) + "\n")
    atomic_write_text(run / f"{CV_SUMMARY}.csv", _summary_csv(out))
    print(cv_table(out))
    if missing:
        print(f"cv: folds {', '.join(map(str, missing))} of {expected} are not finished; figures cover the others")
    if postprocessing:
        out["postprocessing"] = choose_run_postprocessing(run)
    return out


def _num_folds(run: Path) -> int:
    for folder in fold_dirs(run):
        if (folder / "config.yaml").is_file():
            return int(load_config(folder / "config.yaml")["data"]["num_folds"])
    return len(fold_dirs(run))


def _summary_csv(summary: Mapping[str, Any]) -> str:
    buf = io.StringIO()
    metrics = summary["metrics"]
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["fold", "n_cases", *metrics])
    for f, row in summary["per_fold"].items():
        writer.writerow([f, row["n_cases"], *(row[m] for m in metrics)])
    for name in ("over_folds", "pooled"):
        writer.writerow([f"{name}_mean", "", *(summary[name][m]["mean"] for m in metrics)])
        writer.writerow([f"{name}_std", "", *(summary[name][m]["std"] for m in metrics)])
    return buf.getvalue()


def cv_table(summary: Mapping[str, Any]) -> str:
    """The summary as text: one line per fold, then mean ± sd over folds and over cases."""
    metrics = summary["metrics"]

    def fmt(m: str, v: float) -> str:
        return f"{v:.{METRICS.get(m).digits}f}"

    header = ["fold", "cases", *metrics]
    lines = [[f, str(r["n_cases"]), *(fmt(m, r[m]) for m in metrics)] for f, r in summary["per_fold"].items()]
    for name, label, n in (("over_folds", "folds", len(summary["per_fold"])), ("pooled", "cases", summary["n_cases"])):
        stats = summary[name]
        cells = [f"{fmt(m, stats[m]['mean'])} ± {fmt(m, stats[m]['std'])}" for m in metrics]
        lines.append([f"± {label}", str(n), *cells])
    widths = [max(len(row[i]) for row in [header, *lines]) for i in range(len(header))]
    form = "  ".join(f"{{:<{w}}}" if i == 0 else f"{{:>{w}}}" for i, w in enumerate(widths))
    note = "out-of-fold metrics: mean over classes; '± folds': mean ± sd of the fold means; '± cases': over all cases"
    return "\n".join([form.format(*header), *(form.format(*row) for row in lines), note])


# --------------------------------------------------------------------------- OOF predictions


def _fold_items(folder: Path) -> tuple[Config, list[dict[str, Any]]]:
    config = load_config(folder / "config.yaml")
    return config, load_datalist(config["data"])["val"]


def _source(item: Mapping[str, Any]) -> str:
    image = item[keys.IMAGE]
    return image[0] if isinstance(image, (list, tuple)) else image


def oof_index(run: str | os.PathLike) -> dict[str, tuple[Config, dict[str, Any], Path]]:
    """Every finished fold's OOF cases of a run: case id -> (fold config, datalist item,
    prediction file in ``validation/predictions/``).

    Raises:
        MedsegError: no finished fold, or a finished fold whose prediction files are missing.
    """
    run = Path(run)
    out: dict[str, tuple[Config, dict[str, Any], Path]] = {}
    for f in sorted(oof_cases(run)):
        folder = fold_dir(run, f)
        config, items = _fold_items(folder)
        for item in items:
            pred_path = folder / VALIDATION / "predictions" / output_name(_source(item))
            if not pred_path.is_file():
                raise MedsegError(f"{pred_path}: out-of-fold prediction missing; rerun medseg cv to predict it again")
            out[str(item[keys.CASE])] = (config, item, pred_path)
    if not out:
        raise MedsegError(f"{run}: no finished fold (fold_<k>/{VALIDATION}/{SUMMARY_JSON}); run medseg cv -c CONFIG")
    return out


def read_oof_labels(config: Config, pred_path: Path) -> np.ndarray:
    """An OOF label file as class indices, in the loaded geometry of the labels."""
    return _load_reference(config, {keys.LABEL: str(pred_path)})[0]


def read_oof_probabilities(config: Config, pred_path: Path) -> torch.Tensor | None:
    """The OOF probabilities saved beside a prediction (``K`` + the loaded geometry, fp32), or None."""
    path = pred_path.with_name(split_suffix(pred_path.name)[0] + "_probabilities.npz")
    if not path.is_file():
        return None
    with np.load(path) as data:
        arr = data["probabilities"].astype(np.float32)
    if file_kind(pred_path) != "nifti":  # written rows first (K H W) like the PNG: back to the loaded W H
        arr = np.swapaxes(arr, 1, 2)
    return torch.from_numpy(np.ascontiguousarray(arr))


def load_oof(run: str | os.PathLike) -> tuple[Config, list[tuple[str, np.ndarray, np.ndarray, tuple | None]]]:
    """Every finished fold's OOF cases: ``(case, prediction, reference, spacing)``, class indices
    in the label's loaded geometry."""
    out = []
    config = None
    for case, (config, item, pred_path) in oof_index(run).items():
        label, spacing, _ = _load_reference(config, item)
        out.append((case, read_oof_labels(config, pred_path), label, spacing))
    return config, out


def choose_run_postprocessing(run: str | os.PathLike) -> dict[str, Any]:
    """Choose post-processing on a run's OOF predictions and write ``RUN/postprocessing.json``."""
    run = Path(run)
    config, cases = load_oof(run)
    spec = choose_postprocessing(
        [(pred, ref, spacing) for _, pred, ref, spacing in cases], list(range(1, config.num_classes))
    )
    write_postprocessing(spec, run / POSTPROCESSING_JSON)
    print(postprocessing_lines(spec, run / POSTPROCESSING_JSON))
    return spec


def postprocessing_lines(spec: Mapping[str, Any], path: Path) -> str:
    lines = []
    for c, rec in spec["evaluation"].items():
        tried = ", ".join(f"{op} {rec[op]:.4f}" for op in ("keep_largest", "remove_small") if op in rec)
        lines.append(f"  class {c}: OOF Dice {rec['baseline']:.4f}; {tried}; kept: {rec['kept'] or 'none'}")
    return "\n".join([f"post-processing chosen on the out-of-fold predictions ({path}):", *lines])
