"""``medseg plan`` against the shipped hand-written config, under the same budget.

For each synthetic kind and budget: write the data set (``medseg synth``), plan it
(``medseg plan --budget-minutes B``), train the plan (``medseg train -c plan.yaml``) and, beside
it, the shipped config for that family with ``--set train.time_budget=B``; evaluate both
checkpoints on the same held-out test cases (``medseg evaluate --checkpoint best.pt --split
test``). Everything runs as subprocesses, as a user would; the table shows the planned run's
predicted minutes, the measured wall time of each command, the peak resident memory of the
largest process of each command and the test Dice.

The shipped configs keep their own split fractions; both runs get ``data.test_fraction`` and
``data.val_fraction`` from here (DRIVE uses its own ``test/``), so they are scored on the same cases.
The shipped configs' ``train.time_budget`` stops training only; start-up and the final
validation come on top, as they do for any user.

Measured (2-core CPU shared with other jobs, load average 4-6; 20 synthetic cases, 4 test cases,
2-minute budget; ``--kinds cell vessel2d lung --budgets 2``)::

    | kind     | config  | plan (s) | predicted (min) | train wall (min) | train peak (GB) | test Dice |
    | cell     | planned |       24 |             2.0 |              1.7 |            0.68 |    0.9806 |
    | cell     | shipped |          |                 |              3.6 |            4.49 |    0.2317 |
    | vessel2d | planned |      102 |             2.0 |              2.2 |            0.56 |    0.8713 |
    | vessel2d | shipped |          |                 |              2.7 |            2.63 |    0.2019 |
    | lung     | planned |       74 |             2.0 |              1.5 |            0.93 |    0.6117 |

(shipped vessel2d from the run before the planner chose ``train.threads``; lung shipped not run:
its 250-iteration epochs cannot stop inside a 2-minute budget). On this machine one torch
thread ran a step 5-44x faster than two (oversubscribed OpenMP), which the planner now measures.

10-minute figures (planned configs, real / predicted time and per-class Dice columns):
bench/README.md, "Planning".

Usage:
    PYTHONPATH=. python bench/plan.py                                 # smoke: cell, 2 min
    PYTHONPATH=. python bench/plan.py --kinds vessel2d cell lung vessel3d --budgets 5 10 20
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = {
    "vessel2d": "vessel_drive.yaml",
    "cell": "cell_dsb.yaml",
    "lung": "lung_msd.yaml",
    "vessel3d": "vessel_hepatic.yaml",
}


def _timed(
    cmd: list[str], log: Path, timeout: float | None = None, env: dict[str, str] | None = None
) -> tuple[int, float, float]:
    """Run ``cmd`` with its output in ``log``; return (exit code, wall seconds, peak RSS GB of its largest process).

    A command still running after ``timeout`` seconds is killed (exit code -9).
    """
    start = time.perf_counter()
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT, env=env or {**os.environ})
        timer = threading.Timer(timeout, proc.kill) if timeout else None
        if timer:
            timer.start()
        _, status, usage = os.wait4(proc.pid, 0)
        if timer:
            timer.cancel()
    wall = time.perf_counter() - start
    return os.waitstatus_to_exitcode(status), wall, usage.ru_maxrss / 2**20


def _medseg(args: list[str], log: Path, timeout: float | None = None) -> tuple[int, float, float]:
    """Run ``medseg ARGS`` through :func:`_timed`."""
    return _timed([sys.executable, "-m", "pipeline.cli", *args], log, timeout)


def _suggested_patch(log: Path) -> str | None:
    """The ``transforms.patch_size=[...]`` that ``medseg train`` suggests when it refuses a patch
    larger than every training image, else None."""
    match = re.search(r"use (transforms\.patch_size=\[[\d, ]+\])", log.read_text(errors="replace"))
    return match.group(1) if match else None


def _per_class(summary: Path) -> dict[str, float]:
    """Mean test Dice per foreground class (``{}`` when the summary is missing)."""
    try:
        data = json.loads(summary.read_text())
    except (OSError, ValueError):
        return {}
    return {c: m["dice"]["mean"] for c, m in data["per_class"].items() if "dice" in m}


def _dice(summary: Path) -> float | None:
    values = list(_per_class(summary).values())
    return sum(values) / len(values) if values else None


def run(kind: str, budget: float, work: Path, n: int, network: str, which: tuple[str, ...]) -> list[dict]:
    data = work / "data" / kind
    if not data.exists():
        code, _, _ = _medseg(["synth", "--kind", kind, "--out", str(data), "--n", str(n)], work / f"synth_{kind}.log")
        if code:
            raise SystemExit(f"synth {kind} failed: see {work / f'synth_{kind}.log'}")
    out = work / kind / f"{budget:g}min"
    out.mkdir(parents=True, exist_ok=True)
    split = [] if kind == "vessel2d" else ["--set", "data.test_fraction=0.2"]
    split += ["--set", "data.val_fraction=0.2", "--set", "train.tensorboard=false"]
    rows = []
    plan = out / "plan.yaml"
    code, plan_s, plan_gb = _medseg(
        ["plan", str(data), "--budget-minutes", f"{budget:g}", "--network", network, "--output", str(plan)],
        out / "plan.log",
    )
    predicted = None
    if code == 0:
        for line in plan.read_text().splitlines():
            if line.startswith("# predicted run"):
                predicted = float(line.split()[3])
    configs = [("planned", str(plan), [])]
    shipped = ROOT / "configs" / SHIPPED[kind]
    configs.append(("shipped", str(shipped), ["--set", f"data.root={data}", "--set", f"train.time_budget={budget:g}"]))
    for name, config, extra in [c for c in configs if c[0] in which]:
        row = {"kind": kind, "budget": budget, "config": name, "plan_s": plan_s if name == "planned" else None}
        row["predicted_min"] = predicted if name == "planned" else None
        if name == "planned" and code:
            row["error"] = f"plan failed (exit {code}, {out / 'plan.log'})"
            rows.append(row)
            continue
        run_dir = out / f"run_{name}"
        train = ["train", "-c", config, "--output", str(run_dir), "--overwrite", *extra, *split]
        timeout = (3 * budget + 5) * 60  # a shipped config can overrun its budget by an epoch of hours
        tcode, train_s, train_gb = _medseg(train, out / f"train_{name}.log", timeout=timeout)
        fix = _suggested_patch(out / f"train_{name}.log") if tcode == 2 and name == "shipped" else None
        if fix:  # a patch larger than every image is refused with a suggestion: take it, as a user would
            extra = [*extra, "--set", fix]
            row["note"] = f"{fix}, as its refusal suggested"
            train = [*train, "--set", fix]
            tcode, train_s, train_gb = _medseg(train, out / f"train_{name}.log", timeout=timeout)
        row.update({"train_min": train_s / 60, "train_peak_gb": train_gb})
        if tcode:
            if tcode == -9:
                what = "killed after 3x budget + 5 min" if train_s >= timeout else "killed (SIGKILL: out of memory?)"
            else:
                what = f"train failed (exit {tcode})"
            row["error"] = f"{what}, {out / f'train_{name}.log'}"
            rows.append(row)
            continue
        ckpt = run_dir / "checkpoints" / "best.pt"
        if not ckpt.is_file():
            ckpt = run_dir / "checkpoints" / "last.pt"
        ev = out / f"eval_{name}"
        ecode, eval_s, eval_gb = _medseg(
            ["evaluate", "--checkpoint", str(ckpt), "--split", "test", "--output", str(ev), "--overwrite"]
            + ["--metrics", "dice", *extra, *split],
            out / f"eval_{name}.log",
        )
        row.update({"eval_min": eval_s / 60, "eval_peak_gb": eval_gb})
        row["test_dice"] = _dice(ev / "summary.json") if ecode == 0 else None
        row["per_class"] = _per_class(ev / "summary.json") if ecode == 0 else {}
        if ecode:
            row["error"] = f"evaluate failed (exit {ecode}, {out / f'eval_{name}.log'})"
        rows.append(row)
    return rows


def _cell(value, fmt: str) -> str:
    return "" if value is None else format(value, fmt)


def table(rows: list[dict]) -> str:
    lines = [
        "| kind | budget (min) | config | plan (s) | predicted (min) | train wall (min) | train peak (GB) "
        "| real / predicted | test Dice | per class | note |",
        "| --- | --: | --- | --: | --: | --: | --: | --: | --: | --- | --- |",
    ]
    for r in rows:
        ratio = r["train_min"] / r["predicted_min"] if r.get("predicted_min") and r.get("train_min") else None
        per_class = " ".join(f"{c}: {v:.3f}" for c, v in r.get("per_class", {}).items())
        lines.append(
            f"| {r['kind']} | {r['budget']:g} | {r['config']} | {_cell(r.get('plan_s'), '.0f')} "
            f"| {_cell(r.get('predicted_min'), '.1f')} | {_cell(r.get('train_min'), '.1f')} "
            f"| {_cell(r.get('train_peak_gb'), '.2f')} | {_cell(ratio, '.2f')} | {_cell(r.get('test_dice'), '.4f')} "
            f"| {per_class} | {'; '.join(x for x in (r.get('note'), r.get('error')) if x)} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kinds", nargs="+", default=["cell"], choices=sorted(SHIPPED))
    parser.add_argument("--budgets", nargs="+", type=float, default=[2.0], help="minutes (issue 12: 5 10 20)")
    parser.add_argument("--n", type=int, default=20, help="synthetic cases per kind")
    parser.add_argument("--network", default="unet", choices=("unet", "resunet", "denseunet"))
    parser.add_argument("--configs", nargs="+", default=["planned", "shipped"], choices=("planned", "shipped"))
    parser.add_argument("--work", default=None, help="work folder (default: a temporary one)")
    parser.add_argument("--json", default=None, help="also write the rows as JSON")
    args = parser.parse_args(argv)
    work = Path(args.work or tempfile.mkdtemp(prefix="bench_plan_"))
    work.mkdir(parents=True, exist_ok=True)
    rows = []
    for kind in args.kinds:
        for budget in args.budgets:
            new = run(kind, budget, work, args.n, args.network, tuple(args.configs))
            rows += new
            print("\n".join(table(new).splitlines()[2:]), flush=True)
    print(table(rows))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
