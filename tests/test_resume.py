"""Interruption and checkpoints: SIGKILL at random points and inside checkpoint writes, then
``--resume``, ends with weights bit-identical to an uninterrupted run; damaged checkpoints are
detected with a clear line and the previous one is used."""

from __future__ import annotations

import csv
import random
import re
import shutil
import time
from pathlib import Path

import pytest
import torch
from _synthetic import cli_context, run_cli, tiny_config, write_config, write_folders

from pipeline.cli import main
from pipeline.engines.checkpoint import load_checkpoint

EPOCHS = 3


def _launch(
    ctx, argv: list[str], fault: str | None = None, at: int = 1, kill_after: float | None = None, stderr=None
) -> int:
    """``medseg argv`` in a child; SIGKILL it after ``kill_after`` seconds if still running."""
    proc = ctx.Process(target=run_cli, args=(argv, fault, at, None if stderr is None else str(stderr)))
    proc.start()
    proc.join(kill_after)
    if proc.is_alive():
        proc.kill()
        proc.join()
    return proc.exitcode


def _weights(run: Path, name: str = "last.pt") -> dict[str, torch.Tensor]:
    return load_checkpoint(run / "checkpoints" / name)["network"]


def _assert_identical(run: Path, reference: Path) -> None:
    for name in ("last.pt", "best.pt"):
        got, want = _weights(run, name), _weights(reference, name)
        assert got.keys() == want.keys()
        different = [k for k in want if not torch.equal(got[k], want[k])]
        assert not different, f"{name}: {len(different)} tensors differ, e.g. {different[:3]}"
    rows = [{k: v for k, v in r.items() if k != "time_min"} for r in csv.DictReader((run / "log.csv").open())]
    want = [{k: v for k, v in r.items() if k != "time_min"} for r in csv.DictReader((reference / "log.csv").open())]
    assert rows == want


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """Data, config, a forkserver context and an uninterrupted reference run (with its duration)."""
    base = tmp_path_factory.mktemp("resume")
    root = write_folders(base / "data", n=6, size=40)
    config = write_config(
        base / "cfg.yaml", tiny_config(root, base / "reference", train={"epochs": EPOCHS, "val_every": 1})
    )
    ctx = cli_context()
    assert _launch(ctx, ["--version"]) == 0  # starts the fork server (imports torch once)
    start = time.perf_counter()
    assert _launch(ctx, ["train", "-c", config]) == 0
    return {"base": base, "config": config, "ctx": ctx, "duration": time.perf_counter() - start}


def _output(setup, name: str) -> list[str]:
    return ["train", "-c", setup["config"], "--output", str(setup["base"] / name)]


def _epochs_logged(run: Path) -> int:
    try:  # log.csv is replaced atomically after each epoch's checkpoint
        return len((run / "log.csv").read_text().splitlines()) - 1
    except FileNotFoundError:
        return 0


def _kill_during(ctx, argv: list[str], run: Path, epoch: int, fraction: float, seconds: float) -> int:
    """Start ``medseg argv``; SIGKILL it ``fraction`` of an epoch's time after ``epoch`` epochs were
    logged (``epoch`` 0: after the start), so the kill lands inside the run whatever the load."""
    proc = ctx.Process(target=run_cli, args=(argv,))
    proc.start()
    while proc.is_alive() and _epochs_logged(run) < epoch:
        time.sleep(0.005)
    proc.join(fraction * seconds)
    if proc.is_alive():
        proc.kill()
        proc.join()
    return proc.exitcode


@pytest.mark.slow
def test_sigkill_at_random_points_then_resume_is_bit_identical(setup):
    rng = random.Random(1234)
    per_epoch = setup["duration"] / (EPOCHS + 1)  # setup (loading, caching) takes about an epoch
    codes = []
    for trial in range(3):
        argv = _output(setup, f"killed{trial}")
        epoch, fraction = rng.randrange(EPOCHS), rng.random()
        codes.append(_kill_during(setup["ctx"], argv, setup["base"] / f"killed{trial}", epoch, fraction, per_epoch))
        assert _launch(setup["ctx"], [*argv, "--resume"]) == 0
        _assert_identical(setup["base"] / f"killed{trial}", setup["base"] / "reference")
    assert codes.count(-9) >= 2, codes  # the kills land inside the runs, not after them


@pytest.mark.slow
@pytest.mark.parametrize(("fault", "at"), [("write", 2), ("rename", 1)])  # both in the save of epoch 2
def test_sigkill_inside_a_checkpoint_write_then_resume_is_bit_identical(setup, fault, at):
    run = setup["base"] / f"fault-{fault}"
    assert _launch(setup["ctx"], _output(setup, run.name), fault=fault, at=at) == -9
    ckpt = run / "checkpoints"
    assert (ckpt / ".last.pt.tmp").exists()
    if fault == "write":  # the half-written file is the temporary one; last.pt is epoch 1, whole
        assert load_checkpoint(ckpt / "last.pt")["train_state"]["epoch"] == 1
    else:  # killed between the renames: only last.prev.pt (epoch 1) is left to resume from
        assert not (ckpt / "last.pt").exists()
        assert load_checkpoint(ckpt / "last.prev.pt")["train_state"]["epoch"] == 1
    assert _launch(setup["ctx"], [*_output(setup, run.name), "--resume"]) == 0
    _assert_identical(run, setup["base"] / "reference")
    assert not (ckpt / ".last.pt.tmp").exists()


def test_truncated_last_checkpoint_falls_back_to_the_previous_one(setup):
    run = setup["base"] / "truncated"
    shutil.copytree(setup["base"] / "reference", run)
    last = run / "checkpoints" / "last.pt"
    last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])
    warning = r"last\.pt: checkpoint is truncated or corrupt .*resuming from \S+last\.prev\.pt"
    with pytest.warns(UserWarning, match=warning):
        assert main([*_output(setup, run.name), "--resume"]) == 0
    _assert_identical(run, setup["base"] / "reference")  # epoch 3 trained again from epoch 2's state
    # the damaged file was moved aside, so the save of epoch 3 did not rotate it over the good one
    assert (run / "checkpoints" / "last.damaged.pt").is_file()
    assert load_checkpoint(run / "checkpoints" / "last.prev.pt")["train_state"]["epoch"] == 2


def test_both_checkpoints_damaged_is_one_line_exit_2(setup, capsys):
    run = setup["base"] / "both-damaged"
    shutil.copytree(setup["base"] / "reference", run)
    for name in ("last.pt", "last.prev.pt"):
        (run / "checkpoints" / name).write_bytes(b"PK\x03\x04 not a checkpoint")
    assert main([*_output(setup, run.name), "--resume"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    pattern = r"no usable checkpoint: \S+/last\.pt: checkpoint is truncated .*/last\.prev\.pt: checkpoint is truncated"
    assert len(err) == 1 and re.search(pattern, err[0]), err
    assert (run / "checkpoints" / "last.pt").is_file()  # nothing moved or deleted


def test_infer_with_a_truncated_checkpoint_exits_2(setup, capsys, tmp_path):
    bad = tmp_path / "truncated.pt"
    good = setup["base"] / "reference" / "checkpoints" / "best.pt"
    bad.write_bytes(good.read_bytes()[:1000])
    image = next((setup["base"] / "data" / "images").iterdir())
    rc = main(["infer", "--checkpoint", str(bad), "--input", str(image), "--output", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1, err
    assert re.search(r"truncated\.pt: checkpoint is truncated or corrupt \(", err[0]), err
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_resume_refuses_a_changed_config(setup, capsys):
    run = setup["base"] / "changed"
    shutil.copytree(setup["base"] / "reference", run)
    rc = main([*_output(setup, run.name), "--resume", "--set", "optimizer.lr=0.1"])
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert re.search(r"--resume: the config differs .*: optimizer\.lr \(0\.01 -> 0\.1\)", err), err


def test_resume_before_the_first_checkpoint_starts_again(setup, capsys):
    # what a kill during the first epoch leaves: the resolved config and an empty checkpoints folder
    run = setup["base"] / "no-checkpoint-yet"
    (run / "checkpoints").mkdir(parents=True)
    shutil.copy(setup["base"] / "reference" / "config.yaml", run / "config.yaml")
    with pytest.warns(UserWarning, match=r"holds no checkpoint yet; starting the run again"):
        assert main([*_output(setup, run.name), "--resume", "--epochs", "1"]) == 0
    assert load_checkpoint(run / "checkpoints" / "last.pt")["train_state"]["epoch"] == 1


@pytest.fixture(scope="module")
def long_epochs(setup):
    """A reference run whose epochs are 5 steps over a loader of 2 batches (each epoch passes the
    loader three times), so a preemption can land in a later pass of an epoch."""
    base = setup["base"]
    raw = tiny_config(base / "data", base / "long-reference", train={"epochs": 3, "iterations_per_epoch": 5})
    config = write_config(base / "long.yaml", raw)
    assert _launch(setup["ctx"], ["train", "-c", config]) == 0
    return config


@pytest.mark.slow
@pytest.mark.parametrize(
    ("signame", "code", "step", "where"),
    [
        ("SIGUSR1", 138, 8, "epoch 2, step 3"),  # the second epoch's second pass over the loader
        ("SIGTERM", 143, 10, "epoch 2, step 5"),  # the last step of an epoch: the resume only validates it
        ("SIGTERM", 143, 12, "epoch 3, step 2"),
    ],
)
def test_a_preempted_run_saves_mid_epoch_and_resumes_bit_identically(setup, long_epochs, signame, code, step, where):
    run = setup["base"] / f"preempted-{signame}-{step}"
    argv = ["train", "-c", long_epochs, "--output", str(run)]
    err = setup["base"] / f"{run.name}.err"
    assert _launch(setup["ctx"], argv, fault=signame, at=step, stderr=err) == code
    line = err.read_text().strip().splitlines()[-1]
    assert line.startswith(f"medseg: preempted ({signame}): saved {run.resolve()}/checkpoints/last.pt at "), line
    assert f"at {where};" in line and line.endswith(f"medseg train -c {long_epochs} --output {run.resolve()} --resume")
    saved = load_checkpoint(run / "checkpoints" / "last.pt")
    mid = saved.get("mid_epoch")
    assert (mid["epoch"], mid["step"], len(mid["losses"])) == ((step - 1) // 5, (step - 1) % 5 + 1, (step - 1) % 5 + 1)
    assert _launch(setup["ctx"], [*argv, "--resume"]) == 0
    _assert_identical(run, setup["base"] / "long-reference")


@pytest.mark.slow
def test_sigusr1_before_the_first_checkpoint_stops_at_once_and_leaves_nothing(setup, long_epochs):
    run = setup["base"] / "usr1-first-epoch"
    err = setup["base"] / "usr1-first-epoch.err"
    assert _launch(setup["ctx"], ["train", "-c", long_epochs, "--output", str(run)], "SIGUSR1", 2, stderr=err) == 138
    assert err.read_text().strip().splitlines()[-1].startswith("medseg: terminated (SIGUSR1)")
    assert not run.exists()


def test_the_preemption_line_of_a_demo_points_at_the_runs_own_config(tmp_path):
    import argparse

    from pipeline.cli import _preempted_line
    from pipeline.engines.preemption import Preempted

    err = Preempted(10, str(tmp_path / "run" / "checkpoints" / "last.pt"), 4, 0)
    line = _preempted_line(err, argparse.Namespace(command="demo"))
    assert line == (
        f"medseg: preempted (SIGUSR1): saved {tmp_path}/run/checkpoints/last.pt at the end of epoch 3; "
        f"continue with: medseg train -c {tmp_path}/run/config.yaml --output {tmp_path}/run --resume"
    )
