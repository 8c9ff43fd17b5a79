"""Accuracy of UNet / ResUNet / DenseUNet with and without the boundary loss, on synthetic data.

For each task (vessel2d: DRIVE-like retinal vessels; cell: DSB2018-like nuclei), network and loss
(DiceCE alone; DiceCE + Kervadec boundary term, the demo configs' compound loss), and seed:
train with the task's demo config, evaluate the best checkpoint on the held-out test split, and
report mean ± sd over seeds of test Dice, HD95 (mm), clDice and training minutes.

    python bench/accuracy.py                      # full grid: 2 tasks x 3 networks x 2 losses x 3 seeds
    python bench/accuracy.py --tasks vessel2d --networks unet --seeds 0   # one cell of it

Not a test: a full run takes about an hour on a 2-core CPU. Results also go to OUT/results.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline.data.synth import make_dataset  # noqa: E402
from pipeline.demo import DEMOS, config_dir  # noqa: E402
from pipeline.engines.predictor import evaluate_split  # noqa: E402
from pipeline.engines.run import run_training  # noqa: E402

LOSSES = {
    "dice_ce": ["loss={name: dice_ce, to_onehot_y: true, softmax: true}"],
    "dice_ce+boundary": [],  # the demo configs' compound loss
}

# the cell demo is an instance task (background / interior / border); this benchmark compares
# losses on the semantic nucleus mask, as the figures in the README were measured
SEMANTIC = {"cell": ["task.kind=semantic", "network.out_channels=2"]}


def _fmt(values: list[float], digits: int = 3) -> str:
    if not values:
        return "n/a"
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.{digits}f} ± {sd:.{digits}f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="+", default=["vessel2d", "cell"], choices=["vessel2d", "cell"])
    parser.add_argument("--networks", nargs="+", default=["unet", "resunet", "denseunet"])
    parser.add_argument("--losses", nargs="+", default=list(LOSSES), choices=list(LOSSES))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default="runs/bench-accuracy")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    results = []
    for task in args.tasks:
        data = make_dataset(task, out / "data" / task, DEMOS.get(task).n, 0, overwrite=True)
        config = config_dir() / DEMOS.get(task).config
        for network in args.networks:
            for loss in args.losses:
                for seed in args.seeds:
                    run = out / f"{task}-{network}-{loss}-s{seed}"
                    overrides = [f"data.root={data}", f"train.output={run}", f"seed={seed}",
                                 f"network.name={network}", f"train.threads={args.threads}", *LOSSES[loss],
                                 *SEMANTIC.get(task, [])]  # fmt: skip
                    t0 = time.perf_counter()
                    summary = run_training(config, overrides, overwrite=True, progress=False)
                    minutes = (time.perf_counter() - t0) / 60
                    ev = evaluate_split(
                        run / "checkpoints" / "best.pt", run / "test", config_path=config, overrides=overrides,
                        overwrite=True, progress=False, metrics=("dice", "hd95", "cldice"),
                    )  # fmt: skip
                    fg = ev.summary()["per_class"]["1"]
                    row = {"task": task, "network": network, "loss": loss, "seed": seed, "minutes": minutes}
                    row.update(epochs=summary["epochs"], **{m: fg[m]["mean"] for m in ("dice", "hd95", "cldice")})
                    results.append(row)
                    print(json.dumps(row), flush=True)
    (out / "results.json").write_text(json.dumps(results, indent=1))
    print("\n| task | network | loss | test Dice | HD95 (mm) | clDice | train min | seeds |")
    print("| --- | --- | --- | ---: | ---: | ---: | ---: | ---: |")
    for task in args.tasks:
        for network in args.networks:
            for loss in args.losses:
                rows = [r for r in results if (r["task"], r["network"], r["loss"]) == (task, network, loss)]
                print(
                    f"| {task} | {network} | {loss} | {_fmt([r['dice'] for r in rows])} | "
                    f"{_fmt([r['hd95'] for r in rows], 2)} | {_fmt([r['cldice'] for r in rows])} | "
                    f"{_fmt([r['minutes'] for r in rows], 1)} | {len(rows)} |"
                )


if __name__ == "__main__":
    main()
