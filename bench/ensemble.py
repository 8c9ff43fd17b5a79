"""One fold vs the 5-fold ensemble vs the ensemble with post-processing chosen on cross-validation.

For each synthetic set (vessel2d: DRIVE layout with its own test/; cell: DSB2018 layout, 20 % of
the cases held out) and each seed: write the data (``medseg synth``'s generators), run
``medseg cv`` (5 folds, tiny UNet, a few epochs: this measures the method, not a tuned model),
then segment the held-out test cases with

- **fold 0**: fold 0's best checkpoint alone (what a single train/validation split gives);
- **ensemble**: the mean of the 5 folds' probabilities (``medseg infer --checkpoint RUN
  --no-postprocessing``);
- **ensemble + pp**: the same with ``RUN/postprocessing.json`` (chosen on the out-of-fold
  predictions, never on the test cases).

It prints, per set, test Dice and HD95 (mean over test cases, then mean ± sd over seeds) and the
inference time of each variant over that of fold 0 (median over seeds of the ratio measured in
the same run). The machine was shared by six jobs on two cores; ratios measured in one process
are what to read.

    PYTHONPATH=. python bench/ensemble.py [--seeds 0 1] [--epochs 12] [--kinds vessel2d cell]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from pipeline.config import load_config
from pipeline.data import load_datalist
from pipeline.data.labels import fill_label_values
from pipeline.data.synth import make_dataset
from pipeline.engines.crossval import run_cv
from pipeline.engines.evaluator import Evaluator
from pipeline.engines.members import checkpoint_paths, resolve_postprocessing
from pipeline.engines.predictor import Predictor, _load_reference

ROOT = Path(__file__).resolve().parents[1]
SETS = {
    "vessel2d": ("demo_vessel2d.yaml", 12, []),
    "cell": ("demo_cell.yaml", 16, ["data.test_fraction=0.2", "data.val_fraction=0.2"]),
}
VARIANTS = ("fold 0", "ensemble", "ensemble + pp")


def _overrides(data: Path, run: Path, seed: int, epochs: int) -> list[str]:
    return [
        f"data.root={data}",
        f"train.output={run}",
        f"seed={seed}",
        f"data.split_seed={seed}",
        "data.num_folds=5",
        f"train.epochs={epochs}",
        "train.val_every=2",
        "train.threads=1",
        "train.device=cpu",
        "train.tensorboard=false",
        "train.num_workers=0",
        "scheduler.warmup_epochs=0",
        "network.channels=[8, 16, 32]",
        "transforms.patch_size=[48, 48]",
        "transforms.num_samples=2",
        "infer.roi_size=[64, 64]",
        "infer.device=cpu",
        "infer.tta=false",
    ]


def _score(predictor: Predictor, items, config) -> tuple[float, float, float]:
    evaluator = Evaluator([1], metrics=("dice", "hd95"))
    seconds = 0.0
    for item in items:
        start = time.perf_counter()
        result = predictor(item)
        seconds += time.perf_counter() - start
        label, spacing, fov = _load_reference(config, item)
        evaluator.add(str(item["case"]), result.labels, label, spacing=spacing, fov=fov)
    fg = evaluator.summary()["foreground_mean"]
    return fg["dice"], fg["hd95"], seconds


def one(kind: str, seed: int, epochs: int, work: Path) -> dict[str, tuple[float, float, float]]:
    config_name, n, extra = SETS[kind]
    data, run = work / f"{kind}-{seed}" / "data", work / f"{kind}-{seed}" / "run"
    make_dataset(kind, data, n, seed, size=64)
    overrides = _overrides(data, run, seed, epochs) + extra
    with contextlib.redirect_stdout(io.StringIO()):
        run_cv(ROOT / "configs" / config_name, overrides, progress=False)
    config = fill_label_values(load_config(ROOT / "configs" / config_name, overrides))
    items = load_datalist(config["data"])["test"]
    spec = resolve_postprocessing(run, None)
    folds = checkpoint_paths(run)
    out = {}
    for name, members, pp in (("fold 0", folds[:1], None), ("ensemble", folds, None), ("ensemble + pp", folds, spec)):
        out[name] = _score(Predictor(members, postprocessing=pp), items, config)
    steps = ", ".join(f"{s['op']}" for s in (spec or {}).get("steps", [])) or "none"
    print(
        f"{kind} seed {seed}: {len(items)} test cases; post-processing kept: {steps}; "
        + "; ".join(f"{k} Dice {v[0]:.4f} HD95 {v[1]:.2f}" for k, v in out.items()),
        flush=True,
    )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--kinds", nargs="+", choices=list(SETS), default=list(SETS))
    args = parser.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        results = {k: [one(k, s, args.epochs, Path(tmp)) for s in args.seeds] for k in args.kinds}
    print(f"\n{len(args.seeds)} seed(s), {args.epochs} epochs per fold, 5 folds; mean ± sd over seeds (shared machine)")
    print(f"{'set':<9} {'variant':<14} {'test Dice':>16} {'test HD95':>14} {'time / fold 0':>14}")
    for kind, runs in results.items():
        for v in VARIANTS:
            dice = np.array([r[v][0] for r in runs])
            hd = np.array([r[v][1] for r in runs])
            ratio = float(np.median([r[v][2] / r["fold 0"][2] for r in runs]))
            print(
                f"{kind:<9} {v:<14} {dice.mean():>8.4f} ± {dice.std():.4f} {hd.mean():>7.2f} ± {hd.std():.2f} "
                f"{ratio:>13.2f}x"
            )


if __name__ == "__main__":
    main()
