"""nnU-Net v2's own trainer beside ``medseg plan`` → ``train``, same data, same wall-clock budget.

Issue 17's comparison, as a user would run each tool: a synthetic DRIVE-layout vessel set
(``medseg synth --kind vessel2d``; the same 20 training and 5 test images ``bench/plan.py``
uses), then, one tool at a time on the same machine:

- **nnU-Net v2**: the images converted to its raw format (RGB PNG, labels 0/1),
  ``nnUNetv2_plan_and_preprocess -c 2d``, ``nnUNetv2_train DATASET 2d 0 -device cpu`` with a
  trainer subclass found through ``nnUNet_extTrainer`` (the issue's recipe: 50 training
  iterations per epoch, the stock 1000-epoch poly schedule refitted after every epoch to the
  epochs that fit the budget, counted from the trainer's construction), ``nnUNetv2_predict``
  with its defaults (mirroring TTA, ``checkpoint_final.pth``) on the test images;
- **medseg**: ``medseg plan --budget-minutes B`` → ``medseg train -c plan.yaml`` (the budget
  counts from the command's start) → ``medseg evaluate --checkpoint best.pt --split test``;

and both tools' test predictions scored by the same code, ``medseg evaluate --pred --label
--fov`` (inside DRIVE's field-of-view mask). nnU-Net's preprocessing and medseg's planning are
outside the budget for both; the table shows their wall time.

nnU-Net needs its own virtual environment (its torch pin and torchvision differ from ours):

    python3 -m venv /work/wt/nnunet-venv
    /work/wt/nnunet-venv/bin/pip install "torch==2.13.0,!=2.13.0+cpu" torchvision==0.28.0 nnunetv2

Usage:
    PYTHONPATH=. python bench/nnunet_train.py --minutes 10 --nnunet-venv /work/wt/nnunet-venv
    PYTHONPATH=. python bench/nnunet_train.py --minutes 1 --skip medseg   # nnU-Net plumbing only
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import yaml
from PIL import Image

from bench.plan import _dice, _medseg, _timed
from bench.plan import run as plan_run
from pipeline.engines.checkpoint import load_checkpoint

ROOT = Path(__file__).resolve().parents[1]
DATASET = 517
NAME = f"Dataset{DATASET}_SynthVessel"

TRAINER = '''
import os
import time

import torch

from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer


class nnUNetTrainerBudget(nnUNetTrainer):
    """The stock trainer, 50 iterations per epoch, its poly schedule fitted to a wall-clock budget."""

    def __init__(self, plans, configuration, fold, dataset_json, device=torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.budget_s = float(os.environ["MEDSEG_BENCH_BUDGET_S"])
        self.started = time.perf_counter()
        self.num_iterations_per_epoch = 50
        self.steps_done = 0
        self.train_s = 0.0  # training iterations only (batch wait + step), epochs after the first
        self.steady_steps = 0

    def train_step(self, batch):
        self.steps_done += 1
        return super().train_step(batch)

    def on_epoch_end(self):
        super().on_epoch_end()  # current_epoch += 1
        elapsed = time.perf_counter() - self.started
        per_epoch = elapsed / self.current_epoch
        fit = int(self.budget_s / per_epoch)
        self.num_epochs = max(self.current_epoch, min(fit, 1000))
        self.lr_scheduler.max_steps = self.num_epochs
        self.print_to_log_file(
            f"budget: {elapsed:.0f} of {self.budget_s:.0f} s after {self.current_epoch} epochs, "
            f"{self.steps_done} steps; epochs fitted to {self.num_epochs}"
        )

    def run_training(self):
        self.on_train_start()
        while self.current_epoch < self.num_epochs:
            self.on_epoch_start()
            self.on_train_epoch_start()
            start = time.perf_counter()
            outputs = [self.train_step(next(self.dataloader_train)) for _ in range(self.num_iterations_per_epoch)]
            if self.current_epoch > 0:  # steady state: the first epoch starts the augmentation workers
                self.train_s += time.perf_counter() - start
                self.steady_steps += self.num_iterations_per_epoch
            self.on_train_epoch_end(outputs)
            with torch.no_grad():
                self.on_validation_epoch_start()
                batches = range(self.num_val_iterations_per_epoch)
                val = [self.validation_step(next(self.dataloader_val)) for _ in batches]
                self.on_validation_epoch_end(val)
            self.on_epoch_end()
        self.on_train_end()
        with open(os.environ["MEDSEG_BENCH_STEPS"], "w") as f:
            loop = time.perf_counter() - self.started
            f.write(f"{self.steps_done} {self.current_epoch} {loop:.1f} {self.steady_steps} {self.train_s:.1f}")
'''


def _gray(path: Path) -> np.ndarray:
    return (np.asarray(Image.open(path).convert("L")) > 0).astype(np.uint8)


def convert_drive(drive: Path, raw: Path, truth: Path, fov: Path) -> None:
    """DRIVE layout → nnU-Net raw (``imagesTr``, ``labelsTr``, ``imagesTs``); test truth and FOV as 0/1 PNGs."""
    for d in (raw / "imagesTr", raw / "labelsTr", raw / "imagesTs", truth, fov):
        d.mkdir(parents=True, exist_ok=True)
    n_train = 0
    for image in sorted((drive / "training" / "images").iterdir()):
        case = image.name.split("_")[0]
        Image.open(image).convert("RGB").save(raw / "imagesTr" / f"v{case}_0000.png")
        label = drive / "training" / "1st_manual" / f"{case}_manual1.gif"
        Image.fromarray(_gray(label)).save(raw / "labelsTr" / f"v{case}.png")
        n_train += 1
    for image in sorted((drive / "test" / "images").iterdir()):
        case = image.name.split("_")[0]
        Image.open(image).convert("RGB").save(raw / "imagesTs" / f"v{case}_0000.png")
        Image.fromarray(_gray(drive / "test" / "1st_manual" / f"{case}_manual1.gif")).save(truth / f"v{case}.png")
        Image.fromarray(_gray(drive / "test" / "mask" / f"{case}_test_mask.gif")).save(fov / f"v{case}.png")
    dataset = {
        "channel_names": {"0": "R", "1": "G", "2": "B"},
        "labels": {"background": 0, "vessel": 1},
        "numTraining": n_train,
        "file_ending": ".png",
    }
    (raw / "dataset.json").write_text(json.dumps(dataset, indent=1))


def run_nnunet(drive: Path, work: Path, minutes: float, venv: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    for name in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        env[name] = str(work / name)
        (work / name).mkdir(parents=True, exist_ok=True)
    ext = work / "trainer"
    ext.mkdir(exist_ok=True)
    (ext / "nnUNetTrainerBudget.py").write_text(TRAINER)
    env["nnUNet_extTrainer"] = str(ext)
    env["MEDSEG_BENCH_BUDGET_S"] = str(minutes * 60)
    env["MEDSEG_BENCH_STEPS"] = str(work / "steps.txt")
    env["PATH"] = f"{venv / 'bin'}:{env['PATH']}"
    env.setdefault("nnUNet_def_n_proc", str(os.cpu_count() or 1))  # its export pools default to 8 processes
    raw = work / "nnUNet_raw" / NAME
    truth, fov = work / "test_truth", work / "test_fov"
    convert_drive(drive, raw, truth, fov)
    row: dict = {"tool": "nnU-Net v2 (2d, nnUNetTrainer, 50 it/epoch)"}

    def step(name: str, cmd: list[str], timeout: float | None = None) -> tuple[bool, float, float]:
        """Run one nnU-Net command (log ``work/NAME.log``); on failure note it in the row."""
        code, seconds, peak = _timed(cmd, work / f"{name}.log", timeout=timeout, env=env)
        if code:
            row["error"] = f"{name} failed (exit {code}, {work / f'{name}.log'})"
        return not code, seconds, peak

    ok, pre_s, _ = step(
        "preprocess", ["nnUNetv2_plan_and_preprocess", "-d", str(DATASET), "-c", "2d", "-np", "1", "-npfp", "1"]
    )
    row["prepare_min"] = pre_s / 60
    if not ok:
        return row
    c2d = json.loads((work / "nnUNet_preprocessed" / NAME / "nnUNetPlans.json").read_text())["configurations"]["2d"]
    widths = c2d["architecture"]["arch_kwargs"]["features_per_stage"]
    row["setup"] = (
        f"patch {'x'.join(map(str, c2d['patch_size']))}, batch {c2d['batch_size']}, "
        f"{len(widths)} stages, widths {widths[0]}-{widths[-1]}"
    )
    train = ["nnUNetv2_train", str(DATASET), "2d", "0", "-tr", "nnUNetTrainerBudget", "-device", "cpu"]
    ok, train_s, train_gb = step("train", train, timeout=(3 * minutes + 10) * 60)
    row.update({"train_min": train_s / 60, "train_peak_gb": train_gb})
    if not ok:
        return row
    steps, epochs, loop_s, steady, steady_s = (work / "steps.txt").read_text().split()
    row.update({"steps": int(steps), "epochs": int(epochs), "loop_min": float(loop_s) / 60})
    if int(steady):  # its training iterations alone, without its 50 validation iterations per epoch
        row["train_step_s"] = float(steady_s) / int(steady)
    pred = work / "pred"
    predict = ["nnUNetv2_predict", "-i", str(raw / "imagesTs"), "-o", str(pred), "-d", str(DATASET), "-c", "2d"]
    ok, pred_s, _ = step(
        "predict", predict + ["-f", "0", "-tr", "nnUNetTrainerBudget", "-device", "cpu", "-npp", "1", "-nps", "1"]
    )
    row["predict_min"] = pred_s / 60
    if not ok:
        return row
    row["test_dice"] = score(pred, truth, fov, work / "eval")
    return row


def score(pred: Path, truth: Path, fov: Path, out: Path) -> float | None:
    """Mean test Dice of a folder of 0/1 PNGs, by ``medseg evaluate --pred --label --fov``."""
    code, _, _ = _medseg(
        ["evaluate", "--pred", str(pred), "--label", str(truth), "--fov", str(fov), "--output", str(out)]
        + ["--metrics", "dice", "--overwrite"],
        out.with_suffix(".log"),
    )
    return _dice(out / "summary.json") if code == 0 else None


def run_medseg(work: Path, minutes: float, n: int) -> dict:
    """``bench/plan.py``'s planned run of the vessel2d set in ``work/data/vessel2d``, with its step count."""
    (row,) = plan_run("vessel2d", minutes, work, n, "unet", ("planned",))
    out = {
        "tool": "medseg (plan → train)",
        **{k: v for k, v in row.items() if k in ("train_min", "train_peak_gb", "test_dice", "error")},
    }
    out["prepare_min"] = (row.get("plan_s") or 0) / 60
    out["predict_min"] = row.get("eval_min")
    folder = work / "vessel2d" / f"{minutes:g}min"
    plan = yaml.safe_load((folder / "plan.yaml").read_text())
    crops = plan["transforms"].get("num_samples", 1) * plan["train"]["batch_size"]
    widths = plan["network"]["channels"]
    out["setup"] = (
        f"patch {'x'.join(map(str, plan['transforms']['patch_size']))}, {crops} crops/step, "
        f"{len(widths)} stages, widths {widths[0]}-{widths[-1]}"
    )
    last = folder / "run_planned" / "checkpoints" / "last.pt"
    if last.is_file():
        state = load_checkpoint(last)["train_state"]
        out.update({"steps": state["steps"], "epochs": state["epoch"], "loop_min": state["elapsed"] / 60})
    return out


def table(rows: list[dict]) -> str:
    def cell(v, fmt):
        return "" if v is None else format(v, fmt)

    lines = [
        "| tool | setup | prepare (min) | train wall (min) | training loop (min) | epochs | optimizer steps "
        "| steps/min | s per training iteration | train peak (GB) "
        "| predict (min) | test Dice | note |",
        "| --- | --- | --: | --: | --: | --: | --: | --: | --: | --: | --: | --: | --- |",
    ]
    for r in rows:
        rate = r["steps"] / r["loop_min"] if r.get("steps") and r.get("loop_min") else None
        lines.append(
            f"| {r['tool']} | {r.get('setup', '')} | {cell(r.get('prepare_min'), '.1f')} "
            f"| {cell(r.get('train_min'), '.1f')} | {cell(r.get('loop_min'), '.1f')} "
            f"| {cell(r.get('epochs'), 'd')} | {cell(r.get('steps'), 'd')} | {cell(rate, '.1f')} "
            f"| {cell(r.get('train_step_s'), '.3f')} "
            f"| {cell(r.get('train_peak_gb'), '.2f')} | {cell(r.get('predict_min'), '.1f')} "
            f"| {cell(r.get('test_dice'), '.4f')} | {r.get('error', '')} |"
        )
    base = {r["tool"].split()[0]: r for r in rows}
    if "medseg" in base and "nnU-Net" in base and base["medseg"].get("test_dice") and base["nnU-Net"].get("test_dice"):
        ours, theirs = base["medseg"], base["nnU-Net"]
        lines.append(f"\ntest Dice medseg - nnU-Net: {ours['test_dice'] - theirs['test_dice']:+.4f}")
        if ours.get("steps") and theirs.get("steps") and ours.get("loop_min") and theirs.get("loop_min"):
            ratio = (ours["steps"] / ours["loop_min"]) / (theirs["steps"] / theirs["loop_min"])
            lines.append(f"steps/min medseg / nnU-Net: {ratio:.2f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0, help="training budget of each tool")
    parser.add_argument("--n", type=int, default=20, help="synthetic training images (5 more test)")
    parser.add_argument("--nnunet-venv", default="/work/wt/nnunet-venv", help="venv with nnunetv2 installed")
    parser.add_argument("--skip", nargs="*", default=[], choices=("medseg", "nnunet"))
    parser.add_argument("--work", default=None, help="work folder (default: a temporary one)")
    parser.add_argument("--json", default=None, help="also write the rows as JSON")
    args = parser.parse_args(argv)
    work = Path(args.work or tempfile.mkdtemp(prefix="bench_nnunet_"))
    work.mkdir(parents=True, exist_ok=True)
    drive = work / "data" / "vessel2d"  # where bench/plan.py writes (and reuses) the same set
    if not drive.exists():
        code, _, _ = _medseg(
            ["synth", "--kind", "vessel2d", "--out", str(drive), "--n", str(args.n)], work / "synth.log"
        )
        if code:
            raise SystemExit(f"synth failed: see {work / 'synth.log'}")
    venv = Path(args.nnunet_venv)
    if "nnunet" not in args.skip and not (venv / "bin" / "nnUNetv2_train").is_file():
        raise SystemExit(f"--nnunet-venv {venv}: no nnUNetv2_train there (see this script's docstring)")
    rows = []
    if "nnunet" not in args.skip:
        rows.append(run_nnunet(drive, work / "nnunet", args.minutes, venv))
        print(table(rows[-1:]), flush=True)
    if "medseg" not in args.skip:
        rows.append(run_medseg(work, args.minutes, args.n))
        print(table(rows[-1:]), flush=True)
    print(table(rows))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
