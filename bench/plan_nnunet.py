"""What nnU-Net v2's planner chooses for our synthetic data, beside ``medseg plan``.

For each 3D kind (MSD layout): ``medseg synth``, then in a separate venv that has ``nnunetv2``
(its torch pin differs from ours, so not the project venv) ``nnUNetv2_convert_MSD_dataset``,
``nnUNetv2_extract_fingerprint`` and ``nnUNetv2_plan_experiment`` (planning only, no
preprocessing or training), and ``medseg plan`` on the same folder; prints spacing, patch,
batch, stages, per-stage strides and kernels, and normalisation of both, side by side.

Usage:
    python3 -m venv /work/wt/nnunet-venv
    /work/wt/nnunet-venv/bin/pip install "torch==2.13.0,!=2.13.0+cpu" torchvision==0.28.0 nnunetv2
    PYTHONPATH=. python bench/plan_nnunet.py --kinds lung vessel3d --nnunet-venv /work/wt/nnunet-venv
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
TASKS = {"lung": (6, "Lung"), "vessel3d": (8, "HepaticVessel")}


def _run(cmd: list[str], env: dict[str, str] | None = None) -> None:
    done = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(
            f"{' '.join(cmd[:3])} failed (exit {done.returncode}):\n{done.stdout[-2000:]}{done.stderr[-2000:]}"
        )


def nnunet_plan(msd: Path, task: int, work: Path, venv: Path) -> dict:
    env = {**os.environ}
    for name in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        env[name] = str(work / name)
        (work / name).mkdir(parents=True, exist_ok=True)
    env["PATH"] = f"{venv / 'bin'}:{env['PATH']}"
    env.pop("PYTHONPATH", None)
    _run(["nnUNetv2_convert_MSD_dataset", "-i", str(msd), "-overwrite_id", str(task), "-np", "1"], env)
    _run(["nnUNetv2_extract_fingerprint", "-d", str(task), "-np", "1"], env)
    _run(["nnUNetv2_plan_experiment", "-d", str(task), "-npfp", "1"], env)
    (plans,) = (work / "nnUNet_preprocessed").glob(f"Dataset{task:03d}_*/nnUNetPlans.json")
    return json.loads(plans.read_text())


def summarise_nnunet(plans: dict) -> dict[str, dict]:
    out = {}
    for name, c in plans["configurations"].items():
        if "patch_size" not in c:
            continue  # 3d_cascade_fullres inherits
        arch = c.get("architecture", {}).get("arch_kwargs", {})
        out[name] = {
            "spacing": c["spacing"],
            "patch": c["patch_size"],
            "batch": c["batch_size"],
            "stages": arch.get("n_stages"),
            "strides": arch.get("strides"),
            "kernels": arch.get("kernel_sizes"),
            "norm": c["normalization_schemes"],
            "features": arch.get("features_per_stage"),
        }
    return out


def medseg_plan(data: Path, out: Path, budget: float) -> dict:
    plan = out / "plan.yaml"
    cmd = [sys.executable, "-m", "pipeline.cli", "plan", str(data), "--budget-minutes", f"{budget:g}"]
    _run([*cmd, "--output", str(plan)])
    cfg = yaml.safe_load(plan.read_text())
    t, net = cfg["transforms"], cfg["network"]
    return {
        "spacing": t.get("spacing"),
        "patch": t["patch_size"],
        "batch": cfg["train"]["batch_size"] * t["num_samples"],
        "stages": len(net["channels"]),
        "strides": net["strides"],
        "kernels": net["kernel_sizes"],
        "norm": t["intensity"],
        "features": net["channels"],
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--kinds", nargs="+", default=["lung"], choices=sorted(TASKS))
    p.add_argument("--n", type=int, default=20)
    p.add_argument("--budget", type=float, default=10.0, help="medseg plan --budget-minutes")
    p.add_argument("--nnunet-venv", type=Path, default=Path("/work/wt/nnunet-venv"))
    p.add_argument("--work", type=Path, default=None)
    args = p.parse_args(argv)
    work = args.work or Path(tempfile.mkdtemp(prefix="bench_plan_nnunet_"))
    for kind in args.kinds:
        task, name = TASKS[kind]
        msd = work / "msd" / f"Task{task:02d}_{name}"
        if not msd.exists():
            cmd = [sys.executable, "-m", "pipeline.cli", "synth", "--kind", kind, "--out", str(msd), "--n", str(args.n)]
            _run(cmd)
        ours = medseg_plan(msd, work / kind, args.budget)
        theirs = summarise_nnunet(nnunet_plan(msd, task, work / kind / "nnunet", args.nnunet_venv))
        print(f"## {kind} ({args.n} synthetic cases, MSD layout)")
        cols = [f"medseg plan (CPU, {args.budget:g} min)", *(f"nnU-Net {c}" for c in theirs)]
        print("| | " + " | ".join(cols) + " |")
        print("| --- |" + " --- |" * len(cols))
        for key in ("spacing", "patch", "batch", "stages", "strides", "kernels", "features", "norm"):
            row = [ours[key], *(c[key] for c in theirs.values())]
            print(f"| {key} | " + " | ".join(json.dumps(v) for v in row) + " |")
        shutil.rmtree(work / kind / "nnunet" / "nnUNet_raw", ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
