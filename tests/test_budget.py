"""The time budget: a run shorter than its planned length ends its schedule when time runs out,
and a planned run takes about the time it was planned for."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest
import yaml
from _synthetic import subprocess_env, tiny_config, write_config, write_folders

from pipeline.engines.checkpoint import load_checkpoint
from pipeline.engines.run import run_training


@pytest.mark.slow
def test_time_budget_shorter_than_the_run_rescales_the_schedule(tmp_path):
    root = write_folders(tmp_path / "data", n=6, size=40)
    cfg = tiny_config(
        root,
        tmp_path / "run",
        train={"epochs": 500, "time_budget": 0.1, "val_every": 1},
        scheduler={"name": "cosine", "warmup": 0.05, "min_factor": 0.0},
    )
    summary = run_training(write_config(tmp_path / "cfg.yaml", cfg), [], progress=False)
    assert summary["stop_reason"].startswith("time budget") and summary["epochs"] < 500
    ckpt = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")
    steps = ckpt["train_state"]["steps"]
    assert steps == ckpt["scheduler"]["last_epoch"] and steps < 500 * 2
    # the rate is near the end of its cosine when time ran out (unscaled it would still be ~0.01:
    # a few dozen of 1000 steps, barely out of the warm-up)
    lr = ckpt["optimizer"]["param_groups"][0]["lr"]
    assert lr < 0.3 * 0.01, (lr, steps)
    rates = [float(line.split(",")[1]) for line in (tmp_path / "run" / "log.csv").read_text().splitlines()[1:]]
    assert max(rates) > 0.5 * 0.01  # it did warm up first


@pytest.mark.slow
def test_planned_run_honours_its_budget_within_ten_percent(tmp_path):
    """``medseg plan --budget-minutes 0.4`` then ``medseg train -c plan.yaml``: the whole process
    (start-up, caching, training, validation, checkpoints) takes the budget within 10 %."""
    root = write_folders(tmp_path / "data", n=8, size=48)
    plan = tmp_path / "plan.yaml"
    env = subprocess_env(threads=1)
    medseg = [sys.executable, "-m", "pipeline.cli"]
    subprocess.run([*medseg, "plan", str(root), "--budget-minutes", "0.4", "--output", str(plan)], env=env, check=True)
    planned = yaml.safe_load(plan.read_text())
    argv = [*medseg, "train", "-c", str(plan), "--output", str(tmp_path / "run"), "--set", "train.tensorboard=false"]
    start = time.perf_counter()
    subprocess.run(argv, env=env, check=True, cwd=tmp_path)
    wall = time.perf_counter() - start
    assert planned["train"]["epochs"] >= 1
    print(f"planned 24 s, took {wall:.1f} s")
    assert abs(wall - 24.0) <= 2.4, f"planned 24 s, took {wall:.1f} s"


@pytest.mark.slow
def test_a_run_the_budget_shortens_validates_about_as_often_as_configured(tmp_path):
    """``epochs: 500, val_every: 50`` asks for 10 validations; a budget that holds a few dozen
    epochs still gets several, not one at the end (plans are written for more epochs than fit)."""
    root = write_folders(tmp_path / "data", n=6, size=40)
    cfg = tiny_config(root, tmp_path / "run", train={"epochs": 500, "time_budget": 0.1, "val_every": 50})
    summary = run_training(write_config(tmp_path / "cfg.yaml", cfg), [], progress=False)
    assert summary["stop_reason"].startswith("time budget") and 5 < summary["epochs"] < 500
    rows = (tmp_path / "run" / "log.csv").read_text().splitlines()
    header = rows[0].split(",")
    validated = [r for r in rows[1:] if r.split(",")[header.index("val_dice")]]
    assert 4 <= len(validated) <= 14, (len(validated), summary["epochs"])
