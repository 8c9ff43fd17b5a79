"""bf16 autocast against fp32 for CPU training under the same wall-clock budget: steps and test Dice.

For each synthetic kind: write the data set (``medseg synth``), then train the demo config of that
kind twice, ``--set train.amp=off`` and ``--set train.amp=bf16``, each with
``train.time_budget=B`` minutes and one torch thread; evaluate both ``best.pt`` on the same
held-out test cases (``medseg evaluate --split test``). Each run's ``train.epochs`` is fitted to
the budget from a 3-epoch probe of the same settings (seconds per epoch, validation included,
and 10 % spare), as nnU-Net's epochs were fitted in the issue's comparison, so the learning-rate
schedule ends inside the budget and the faster run gets more epochs.
The two runs of a kind go side by side by default (``--serial`` for one after the other), so the
other jobs on a shared machine slow both alike. Everything runs as subprocesses, as a user would.

The table shows, per run: epochs and optimiser steps reached in the budget, steps per minute,
the test Dice, and bf16 / fp32 for steps and Dice. ``train.amp: auto`` picks bf16 on a CPU with
native bf16 (:func:`pipeline.runtime.cpu_has_bf16`) because of what this measures; a CPU without
it runs fp32 (and this script's bf16 rows there say what emulated bf16 would cost).

Usage:
    PYTHONPATH=. python bench/amp.py                                   # vessel2d and cell, 2.5 min
    PYTHONPATH=. python bench/amp.py --kinds cell --budget 5 --serial
"""

from __future__ import annotations

import argparse
import csv
import json
import re
import sys
import tempfile
import threading
from pathlib import Path

from bench.plan import _dice, _medseg

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = {"vessel2d": "demo_vessel2d.yaml", "cell": "demo_cell.yaml"}
AMPS = ("off", "bf16")


def _steps(run_dir: Path, log: Path) -> tuple[int, int]:
    """(epochs finished, optimiser steps) of a run, from its ``log.csv`` and its start summary line."""
    try:
        with open(run_dir / "log.csv", newline="") as f:
            epochs = sum(1 for _ in csv.DictReader(f))
    except OSError:
        epochs = 0
    match = re.search(r"(\d+) steps per epoch", log.read_text(errors="replace"))
    return epochs, epochs * int(match.group(1)) if match else 0


def _train(kind: str, amp: str, data: Path, out: Path, threads: int, extra: list[str]) -> tuple[list[str], Path]:
    config = ROOT / "configs" / CONFIGS[kind]
    common = ["--set", f"data.root={data}", "--set", "train.tensorboard=false"]
    train = ["train", "-c", str(config), "--output", str(out), "--overwrite", *common]
    train += ["--set", f"train.amp='{amp}'", "--set", f"train.threads={threads}", *extra]  # quoted: YAML's off is False
    return train, out


def probe(kind: str, amp: str, data: Path, out: Path, budget: float, threads: int) -> int:
    """Epochs that fit in ``budget`` minutes: seconds per epoch over a 3-epoch run (validating once)."""
    cmd, run_dir = _train(kind, amp, data, out / f"probe_{amp}", threads, ["--set", "train.epochs=3"])
    cmd += ["--set", "train.val_every=3"]
    log = out / f"probe_{amp}.log"
    code, wall, _ = _medseg(cmd, log, timeout=budget * 60)
    per_epoch = re.findall(r"([0-9.]+) s/epoch", log.read_text(errors="replace"))
    if code or not per_epoch:
        raise SystemExit(f"probe {kind} amp={amp} failed (exit {code}): see {log}")
    return max(1, int(0.9 * budget * 60 / float(per_epoch[-1])))


def run_one(kind: str, amp: str, data: Path, out: Path, budget: float, threads: int, epochs: int) -> dict:
    """Train one config with ``train.amp=amp`` for ``budget`` minutes, evaluate it on the test split."""
    extra = ["--set", f"train.time_budget={budget:g}", "--set", f"train.epochs={epochs}"]
    train, run_dir = _train(kind, amp, data, out / f"run_{amp}", threads, extra)
    common = ["--set", f"data.root={data}", "--set", "train.tensorboard=false"]
    log = out / f"train_{amp}.log"
    code, wall, peak = _medseg(train, log, timeout=(3 * budget + 5) * 60)
    row = {"kind": kind, "amp": amp, "train_min": wall / 60, "peak_gb": peak, "planned_epochs": epochs}
    row["epochs"], row["steps"] = _steps(run_dir, log)
    if code:
        row["error"] = f"train failed (exit {code}, {log})"
        return row
    ckpt = run_dir / "checkpoints" / "best.pt"
    if not ckpt.is_file():
        ckpt = run_dir / "checkpoints" / "last.pt"
    ev = out / f"eval_{amp}"
    ecode, _, _ = _medseg(
        ["evaluate", "--checkpoint", str(ckpt), "--split", "test", "--output", str(ev), "--overwrite", *common]
        + ["--metrics", "dice"],
        out / f"eval_{amp}.log",
    )
    row["test_dice"] = _dice(ev / "summary.json") if ecode == 0 else None
    if ecode:
        row["error"] = f"evaluate failed (exit {ecode}, {out / f'eval_{amp}.log'})"
    return row


def _each(job, serial: bool) -> None:
    """``job(amp)`` for every amp setting, side by side in threads unless ``serial``."""
    if serial:
        for amp in AMPS:
            job(amp)
        return
    workers = [threading.Thread(target=job, args=(amp,)) for amp in AMPS]
    for w in workers:
        w.start()
    for w in workers:
        w.join()


def compare(kind: str, data: Path, out: Path, args: argparse.Namespace) -> list[dict]:
    """Probe, train and evaluate both amp settings of one kind; one row per setting."""
    epochs: dict[str, int] = {}
    found: dict[str, dict] = {}

    def fit(amp: str) -> None:
        epochs[amp] = probe(kind, amp, data, out, args.budget, args.threads)

    def one(amp: str) -> None:
        found[amp] = run_one(kind, amp, data, out, args.budget, args.threads, epochs[amp])

    _each(fit, args.serial)
    _each(one, args.serial)
    return [found[amp] for amp in AMPS]


def table(rows: list[dict], budget: float) -> str:
    lines = [
        "| kind | amp | epochs (fitted) | steps | steps/min | test Dice | steps bf16/fp32 | Dice bf16 - fp32 | note |",
        "| --- | --- | --: | --: | --: | --: | --: | --: | --- |",
    ]
    by = {(r["kind"], r["amp"]): r for r in rows}
    for r in rows:
        base = by.get((r["kind"], "off"), {})
        ratio = diff = ""
        if r["amp"] != "off" and base.get("steps") and r.get("steps"):
            ratio = f"{r['steps'] / base['steps']:.2f}"
        if r["amp"] != "off" and base.get("test_dice") is not None and r.get("test_dice") is not None:
            diff = f"{r['test_dice'] - base['test_dice']:+.4f}"
        dice = "" if r.get("test_dice") is None else f"{r['test_dice']:.4f}"
        lines.append(
            f"| {r['kind']} | {r['amp']} | {r['epochs']} ({r['planned_epochs']}) | {r['steps']} "
            f"| {r['steps'] / budget:.1f} | {dice} "
            f"| {ratio} | {diff} | {r.get('error', '')} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kinds", nargs="+", default=list(CONFIGS), choices=sorted(CONFIGS))
    parser.add_argument("--budget", type=float, default=2.5, help="train.time_budget of every run (minutes)")
    parser.add_argument("--n", type=int, default=20, help="synthetic training cases per kind")
    parser.add_argument("--threads", type=int, default=1, help="train.threads of every run")
    parser.add_argument("--serial", action="store_true", help="fp32 then bf16 instead of side by side")
    parser.add_argument("--work", default=None, help="work folder (default: a temporary one)")
    parser.add_argument("--json", default=None, help="also write the rows as JSON")
    args = parser.parse_args(argv)
    work = Path(args.work or tempfile.mkdtemp(prefix="bench_amp_"))
    work.mkdir(parents=True, exist_ok=True)
    rows: list[dict] = []
    for kind in args.kinds:
        data = work / "data" / kind
        if not data.exists():
            code, _, _ = _medseg(["synth", "--kind", kind, "--out", str(data), "--n", str(args.n)], work / "synth.log")
            if code:
                raise SystemExit(f"synth {kind} failed: see {work / 'synth.log'}")
        out = work / kind
        out.mkdir(parents=True, exist_ok=True)
        rows += compare(kind, data, out, args)
        print("\n".join(table(rows, args.budget).splitlines()[-2:]), flush=True)
    print(table(rows, args.budget))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
