"""DDP under torchrun on the CPU (gloo, 2 processes): the same result as one process with the same
global batch, one set of outputs, resume, and a bad file in one rank's shard stopping every rank.

"Same global batch": ``train.batch_size`` is per process, and every item gives
``transforms.num_samples`` crops, so one optimiser step sees ``batch_size × num_samples ×
world_size`` crops. One process with batch 4 therefore compares with two processes with batch 2.
The UNet uses instance norm, which normalises each sample on its own, so splitting a batch across
ranks changes nothing (batch norm would see half-batch statistics; SyncBatchNorm would be needed).

To compare within 0.01 of Dice on a tiny dataset, the run is made deterministic in what may
legitimately differ between the two set-ups: which items share a step (the whole training set
is one global batch) and the per-rank random augmentation streams (augmentation off, crops the
size of the image). What is left is DDP's own arithmetic: gradient averaging, validation split
across ranks with the Dice all-reduced, rank-0-only writes and resume. The optimiser is SGD, whose
step is proportional to the gradient: Adam divides by the gradient's running RMS, so it turns the
rounding noise of near-zero gradients (conv biases before instance norm) into full-size steps,
and two runs that are equal in exact arithmetic drift apart in weights (0.1 after 40 steps,
measured) while their Dice stays within 0.003.
"""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from _synthetic import ROOT, subprocess_env, tiny_config, write_config, write_folders

from pipeline.cli import main
from pipeline.data.loaders import shard
from pipeline.engines.checkpoint import load_checkpoint

AUGMENT_OFF = {k: {"prob": 0.0} for k in ("rotate", "scale", "flip", "elastic", "gamma", "noise", "contrast")}


def _torchrun(*args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    cmd += ["-m", "pipeline.cli", *args]
    return subprocess.run(cmd, cwd=ROOT, env=subprocess_env(1), capture_output=True, text=True, timeout=timeout)


def _log(run: Path) -> list[dict[str, str]]:
    return list(csv.DictReader((run / "log.csv").open()))


@pytest.fixture(scope="module")
def config(tmp_path_factory) -> tuple[Path, str]:
    base = tmp_path_factory.mktemp("ddp")
    root = write_folders(base / "data", n=6, size=40)  # 4 training cases, 2 validation cases
    cfg = tiny_config(
        root,
        base / "single",
        # fp32: the comparison is about the gradient average, not bf16 rounding (train.amp auto is bf16 on such CPUs)
        train={"epochs": 4, "val_every": 1, "batch_size": 4, "iterations_per_epoch": 10, "amp": "off"},
        transforms={"patch_size": [40, 40], "num_samples": 1, "label_values": [0, 1], "augment": AUGMENT_OFF},
        optimizer={"name": "sgd", "lr": 0.1, "momentum": 0.9},
    )
    return base, write_config(base / "cfg.yaml", cfg)


@pytest.mark.parametrize(("n", "world"), [(1, 4), (3, 2), (5, 4), (8, 2), (7, 3)])
def test_shards_cover_every_item_with_equal_counts(n, world):
    items = [{"case": i} for i in range(n)]
    shards = [shard(items, rank, world) for rank in range(world)]
    assert len({len(s) for s in shards}) == 1  # every rank takes the same number of steps
    assert {d["case"] for s in shards for d in s} == set(range(n))
    assert sum(map(len, shards)) == -(-n // world) * world  # padding repeats as few items as needed
    assert shard(items, 0, 1) == items


@pytest.mark.slow
def test_ddp_two_processes_match_one_process_and_resume(config, capsys):
    base, cfg = config
    single, ddp = base / "single", base / "ddp"
    assert main(["train", "-c", cfg]) == 0

    per_rank = ["train", "-c", cfg, "--output", str(ddp), "--set", "train.batch_size=2"]
    first = _torchrun(*per_rank, "--epochs", "2")
    assert first.returncode == 0, first.stderr[-3000:]
    assert first.stdout.count("trained 2 epochs") == 1  # rank 0 reports, rank 1 is silent
    second = _torchrun(*per_rank, "--resume", "--epochs", "4")  # resumes epoch 3 and 4 under DDP
    assert second.returncode == 0, second.stderr[-3000:]
    assert second.stdout.count("trained 4 epochs") == 1

    # exactly one set of outputs, written by rank 0 only
    files = ["checkpoints", "config.yaml", "curves.png", "log.csv"]
    assert sorted(p.name for p in ddp.iterdir()) == [".medseg.lock", *files]  # the lock: rank 0 only
    assert {p.name for p in (ddp / "checkpoints").iterdir()} == {"best.pt", "last.pt", "last.prev.pt"}
    rows_ddp, rows_single = _log(ddp), _log(single)
    assert [r["epoch"] for r in rows_ddp] == ["1", "2", "3", "4"]

    dice_single = [float(r["val_dice"]) for r in rows_single]
    dice_ddp = [float(r["val_dice"]) for r in rows_ddp]
    print(f"validation Dice per epoch: 1 process {dice_single}, 2 processes (DDP) {dice_ddp}")  # pytest -s shows it
    assert dice_single[-1] > 0.5  # the comparison is about a network that learnt something
    assert max(abs(a - b) for a, b in zip(dice_single, dice_ddp, strict=True)) < 0.01, (dice_single, dice_ddp)
    for a, b in zip(rows_single, rows_ddp, strict=True):
        assert abs(float(a["train_loss"]) - float(b["train_loss"])) < 1e-4
    w_single = load_checkpoint(single / "checkpoints" / "last.pt")["network"]
    w_ddp = load_checkpoint(ddp / "checkpoints" / "last.pt")["network"]
    diff = max(float((w_single[k] - w_ddp[k]).abs().max()) for k in w_single)
    assert diff < 1e-4, diff  # 5e-7 measured: float rounding only
    assert load_checkpoint(ddp / "checkpoints" / "last.pt")["config"]["train"]["batch_size"] == 2


@pytest.mark.slow
def test_bad_file_in_one_shard_stops_every_rank_with_its_line(config, tmp_path):
    base, cfg = config
    root = write_folders(tmp_path / "data", n=6, size=40)
    bad = root / "images" / "case0.png"
    bad.write_bytes(bad.read_bytes()[:60])
    run = tmp_path / "run"
    result = _torchrun("train", "-c", cfg, "--output", str(run), "--set", f"data.root={root}", timeout=120)
    assert result.returncode != 0
    errors = [line for line in result.stderr.splitlines() if line.startswith("medseg: error:")]
    assert len(errors) == 2, result.stderr[-3000:]  # one line per rank, no hang
    assert sum(f"{bad}: cannot read" in line for line in errors) == 1
    assert sum("could not set up (its error is printed above); stopping" in line for line in errors) == 1
    assert not run.exists()


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 CUDA devices")
@pytest.mark.gpu
@pytest.mark.parametrize("network", ["unet", "resunet"])  # resunet: batch norm, synchronised on CUDA
def test_ddp_nccl_two_gpus(config, tmp_path, network):
    _, cfg = config
    run = tmp_path / "run"
    args = ["--output", str(run), "--device", "cuda", "--epochs", "1", "--set", f"network.name={network}"]
    result = _torchrun("train", "-c", cfg, *args)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (run / "checkpoints" / "last.pt").is_file()


@pytest.mark.slow
def test_ddp_time_budget_fits_the_schedule_on_every_rank(config):
    """A budget shorter than the run under DDP: the ranks agree on the fitted length (an
    all-reduce every rank joins), stop together, and the rate ends near its curve's end."""
    base, cfg = config
    run = base / "ddp_budget"
    sets = ["train.epochs=400", "train.time_budget=0.25", "train.batch_size=2", "train.val_every=5"]
    args = ["train", "-c", cfg, "--output", str(run)]
    for s in [*sets, "scheduler.name=cosine", "scheduler.min_factor=0.0"]:
        args += ["--set", s]
    done = _torchrun(*args)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("time budget of 0.25 min reached") == 1
    ckpt = load_checkpoint(run / "checkpoints" / "last.pt")
    assert ckpt["train_state"]["epoch"] < 400
    assert ckpt["optimizer"]["param_groups"][0]["lr"] < 0.3 * 0.1, ckpt["optimizer"]["param_groups"][0]["lr"]
