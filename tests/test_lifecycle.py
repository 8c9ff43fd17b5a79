"""The run lifecycle under what clusters and bad files do to it: every fault ends as one line and
exit 2 in a separate process (so a crash at interpreter exit would show as 134, not pass)."""

from __future__ import annotations

import signal
import struct
import subprocess
import time

import numpy as np
import pytest
from _synthetic import PYTHON, ROOT, subprocess_env, tiny_config, write_config, write_folders


def _huge_header_nifti(path) -> None:
    """A NIfTI-1 header claiming 2000 x 2000 x 1000 float32 (16 GB) in a 4 KB file."""
    import nibabel as nib

    header = nib.Nifti1Header()
    header.set_data_shape((2000, 2000, 1000))
    header.set_data_dtype(np.float32)
    raw = header.binaryblock + struct.pack("<4x") + bytes(4096 - 352)
    path.write_bytes(raw)


@pytest.mark.slow
@pytest.mark.parametrize(("fault", "workers"), [("zero-byte png", 0), ("zero-byte png", 2), ("huge nifti header", 0)])
def test_bad_file_with_the_memory_cache_exits_2(tmp_path, fault, workers):
    dims = 2 if fault == "zero-byte png" else 3
    data = write_folders(tmp_path / "data", n=6, size=40 if dims == 2 else 16, dims=dims)
    if fault == "zero-byte png":
        bad = data / "images" / "case3.png"
        bad.write_bytes(b"")
    else:
        (data / "images" / "case3.nii.gz").unlink()
        _huge_header_nifti(data / "images" / "case3.nii")
    cfg = tiny_config(data, tmp_path / "run", dims=dims)
    cfg["train"].update(cache="memory", num_workers=workers)
    config = write_config(tmp_path / "cfg.yaml", cfg)
    done = subprocess.run(
        [PYTHON, "-m", "pipeline.cli", "train", "-c", config],
        cwd=ROOT,
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2, (done.returncode, lines[-5:])
    assert "terminate called" not in done.stderr
    assert lines and "case3" in lines[-1] and lines[-1].startswith("medseg: error:"), lines[-3:]
    assert not (tmp_path / "run").exists()


def _start_training(tmp_path, new_session: bool = False, **train) -> tuple[subprocess.Popen, str, object]:
    data = write_folders(tmp_path / "data", n=4, size=32)
    cfg = tiny_config(data, tmp_path / "run")
    cfg["train"].update(train)
    config = write_config(tmp_path / "cfg.yaml", cfg)
    child = subprocess.Popen(
        [PYTHON, "-m", "pipeline.cli", "train", "-c", config],
        cwd=ROOT,
        env=subprocess_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=new_session,  # its own process group, which a test may signal as a whole
    )
    return child, config, tmp_path / "run"


def _wait_for(predicate, child: subprocess.Popen, timeout: float = 240.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert child.poll() is None, child.communicate()
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.2)


@pytest.mark.slow
def test_a_second_run_into_the_same_folder_is_refused_and_a_stale_lock_does_not_block_resume(tmp_path, capsys):
    from pipeline.cli import main

    child, config, run = _start_training(tmp_path, epochs=1000)
    try:
        lock = run / ".medseg.lock"
        _wait_for(lambda: lock.exists() and lock.read_text().strip(), child)
        assert main(["train", "-c", config]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and f"is in use by another run (PID {child.pid} on " in err[0], err
        assert main(["train", "-c", config, "--resume"]) == 2  # resume too: never two writers
        capsys.readouterr()
    finally:
        child.send_signal(signal.SIGKILL)
        child.communicate()
    assert main(["train", "-c", config, "--resume", "--set", "train.epochs=1"]) == 0  # the dead run's lock is gone


@pytest.mark.slow
def test_sigterm_before_the_first_checkpoint_cleans_up_and_exits_143(tmp_path):
    child, config, run = _start_training(tmp_path, epochs=2, iterations_per_epoch=100000)
    _wait_for(lambda: (run / "config.yaml").exists(), child)
    child.send_signal(signal.SIGTERM)
    _, err = child.communicate(timeout=120)
    assert child.returncode == 143, err
    assert err.strip().splitlines()[-1].startswith("medseg: terminated (SIGTERM)")
    assert not run.exists(), "a run that never reached a checkpoint leaves nothing, so the rerun needs no --overwrite"


@pytest.mark.slow
def test_sigterm_after_a_checkpoint_keeps_it_and_resume_continues(tmp_path):
    from pipeline.cli import main

    child, config, run = _start_training(tmp_path, epochs=1000)
    _wait_for(lambda: (run / "checkpoints" / "last.pt").exists(), child)
    child.send_signal(signal.SIGTERM)
    _, err = child.communicate(timeout=120)
    assert child.returncode == 143 and "--resume" in err.strip().splitlines()[-1], err
    from pipeline.engines.checkpoint import load_checkpoint

    done = load_checkpoint(run / "checkpoints" / "last.pt")["train_state"]["epoch"]  # 1, or more on a slow machine
    assert main(["train", "-c", config, "--resume", "--set", f"train.epochs={done + 1}"]) == 0


@pytest.mark.slow
def test_sigusr1_to_the_whole_process_group_with_loader_workers_saves_and_resumes(tmp_path):
    """What ``srun`` does with ``--signal``: every process of the job step gets the signal, the
    data-loader workers too; they leave it to the trainer, which saves and exits 138."""
    import os

    from pipeline.cli import main
    from pipeline.engines.checkpoint import load_checkpoint

    child, config, run = _start_training(tmp_path, True, epochs=1000, num_workers=2, iterations_per_epoch=20)
    _wait_for(lambda: (run / "checkpoints" / "last.pt").exists(), child)
    time.sleep(0.5)
    os.killpg(child.pid, signal.SIGUSR1)
    _, err = child.communicate(timeout=120)
    last = err.strip().splitlines()[-1]
    assert child.returncode == 138 and last.startswith("medseg: preempted (SIGUSR1): saved "), err[-3000:]
    assert "Traceback" not in err and "DataLoader worker" not in err, err[-3000:]
    saved = load_checkpoint(run / "checkpoints" / "last.pt")
    done = saved["train_state"]["epoch"]
    assert (
        main(["train", "-c", config, "--resume", "--set", f"train.epochs={done + 1}", "--set", "train.num_workers=0"])
        == 0
    )
    assert load_checkpoint(run / "checkpoints" / "last.pt")["train_state"]["epoch"] == done + 1


@pytest.mark.parametrize("where", ["same", "inside", "containing", "file's folder"])  # a file's subfolder is fine
def test_infer_refuses_an_output_that_overlaps_its_inputs(tmp_path, capsys, where):
    from pipeline.cli import main

    images = write_folders(tmp_path / "data", n=2, size=32) / "images"
    before = {p.name: p.read_bytes() for p in images.iterdir()}
    source, output = {
        "same": (images, images),
        "inside": (images, images / "pred"),
        "containing": (images, images.parent),
        "file's folder": (images / "case0.png", images),
    }[where]
    argv = ["infer", "--checkpoint", str(tmp_path / "any.pt"), "--input", str(source), "--output", str(output)]
    assert main([*argv, "--overwrite"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "choose a folder apart from the inputs" in err[0], err
    assert {p.name: p.read_bytes() for p in images.iterdir()} == before


def test_training_prints_one_line_per_epoch_when_output_is_not_a_terminal(tmp_path, capsys):
    import re

    from pipeline.cli import main

    data = write_folders(tmp_path / "data", n=4, size=32)
    config = write_config(tmp_path / "cfg.yaml", tiny_config(data, tmp_path / "run", train={"iterations_per_epoch": 5}))
    assert main(["train", "-c", config]) == 0
    err = capsys.readouterr().out  # progress on stdout: stderr stays for warnings and the one-line errors
    lines = [line for line in err.splitlines() if line.startswith("epoch ")]
    assert len(lines) == 2, err
    # before the first epoch line: what the run is about to do, and its length measured from its first steps
    head = err.split("epoch 1/2")[0]
    assert re.search(r"training unet \(0\.\d\d M parameters\) on cpu, 1 thread\(s\): 3 training / 1 validation", head)
    assert "patch 32x32, batch 2 x 2 crop(s)" in head and "epochs 1-2" in head
    assert re.search(r"s per step over the first \d: about \d+(\.\d)? (s|min) of training left", head), head
    pattern = (
        r"^epoch 1/2  loss \d+\.\d{4}  val dice \d\.\d{4}  lr \d\.\d\de[-+]\d\d  \d+\.\d s/epoch  ETA \d+\.\d min$"
    )
    assert re.match(pattern, lines[0]), lines[0]
    assert "ETA" not in lines[1]


def test_a_bare_resume_continues_with_the_runs_own_config(tmp_path, capsys):
    from pipeline.cli import main
    from pipeline.engines.checkpoint import load_checkpoint

    data = write_folders(tmp_path / "data", n=4, size=32)
    config = write_config(tmp_path / "cfg.yaml", tiny_config(data, tmp_path / "run"))
    assert main(["train", "-c", config, "--set", "train.epochs=1", "--set", "transforms.num_samples=1"]) == 0
    assert main(["train", "-c", config, "--resume", "--set", "train.epochs=2"]) == 0  # no need to repeat --set
    assert (
        main(["train", "-c", config, "--resume", "--set", "train.epochs=3", "--set", "transforms.num_samples=1"]) == 0
    )
    ckpt = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")
    assert ckpt["train_state"]["epoch"] == 3 and ckpt["config"]["transforms"]["num_samples"] == 1
    capsys.readouterr()
    assert main(["train", "-c", config, "--resume", "--set", "optimizer.lr=0.1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--resume: the config differs" in err[0] and "optimizer.lr (0.01 -> 0.1)" in err[0], err


def test_a_run_finds_its_data_from_any_folder(tmp_path, monkeypatch):
    from pipeline.cli import main

    monkeypatch.chdir(tmp_path)
    write_folders(tmp_path / "data", n=4, size=32)
    cfg = tiny_config("data", "run")  # relative to the current folder
    config = write_config(tmp_path / "cfg.yaml", cfg)
    assert main(["train", "-c", config]) == 0
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    ckpt = str(tmp_path / "run" / "checkpoints" / "best.pt")
    assert main(["evaluate", "--checkpoint", ckpt, "--split", "val", "--output", "ev"]) == 0
    assert (elsewhere / "ev" / "summary.json").is_file()


@pytest.mark.slow
def test_infer_checks_every_input_first_and_continue_skips_finished_cases(tmp_path, capsys):
    from pipeline.cli import main

    data = write_folders(tmp_path / "data", n=4, size=32)
    config = write_config(tmp_path / "cfg.yaml", tiny_config(data, tmp_path / "run"))
    assert main(["train", "-c", config]) == 0
    ckpt = str(tmp_path / "run" / "checkpoints" / "best.pt")
    images, out = data / "images", tmp_path / "pred"
    good = (images / "case3.png").read_bytes()
    (images / "case3.png").write_bytes(good[: len(good) // 2])  # the last file is truncated
    argv = ["infer", "--checkpoint", ckpt, "--input", str(images), "--output", str(out)]
    assert main(argv) == 2
    assert "case3.png: cannot read" in capsys.readouterr().err
    assert not out.exists(), "nothing written, and no empty folder left behind"
    (images / "case3.png").write_bytes(good)
    (images / "case2.png").rename(tmp_path / "case2.png")  # a first run of three of the four
    assert main(argv) == 0 and len(list(out.iterdir())) == 3
    (tmp_path / "case2.png").rename(images / "case2.png")
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    assert main(argv) == 2  # existing outputs: --continue or --overwrite
    assert main([*argv, "--continue"]) == 0
    after = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    assert set(after) == {f"case{i}.png" for i in range(4)}
    assert all(after[name] == t for name, t in before.items()), "finished cases are not redone"


def test_extending_a_finished_cosine_run_follows_the_longer_curve_at_once(tmp_path):
    import csv
    import math

    from pipeline.cli import main

    data = write_folders(tmp_path / "data", n=4, size=32)
    cfg = tiny_config(data, tmp_path / "run", scheduler={"name": "cosine", "min_factor": 0.01})
    config = write_config(tmp_path / "cfg.yaml", cfg)
    assert main(["train", "-c", config, "--set", "train.epochs=3"]) == 0
    assert main(["train", "-c", config, "--resume", "--set", "train.epochs=6"]) == 0
    with open(tmp_path / "run" / "log.csv") as fh:
        lrs = [float(row["lr"]) for row in csv.DictReader(fh)]

    def cosine(epoch: int, epochs: int) -> float:
        t = min(1.0, epoch / max(1, epochs - 1))
        return 0.01 * (0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * t)))

    assert lrs[:3] == pytest.approx([cosine(e, 3) for e in range(3)], rel=1e-5)  # log.csv keeps 6 digits
    assert lrs[3:] == pytest.approx([cosine(e, 6) for e in range(3, 6)], rel=1e-5), "epoch 4 on the 6-epoch curve"


def test_the_time_budget_stops_inside_an_epoch(tmp_path, capsys):
    import time as clock

    from pipeline.cli import main
    from pipeline.engines.checkpoint import load_checkpoint

    data = write_folders(tmp_path / "data", n=4, size=32)
    # one epoch of 100,000 steps would take hours: the budget (3 s) must stop it inside the epoch
    cfg = tiny_config(data, tmp_path / "run", train={"epochs": 5, "iterations_per_epoch": 100000, "time_budget": 0.05})
    config = write_config(tmp_path / "cfg.yaml", cfg)
    start = clock.perf_counter()
    assert main(["train", "-c", config]) == 0
    assert clock.perf_counter() - start < 90
    assert "time budget of 0.05 min reached" in capsys.readouterr().out
    ckpt = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")
    assert ckpt["train_state"]["epoch"] == 1 and ckpt["train_state"]["best_epoch"] == 1  # validated, then saved


def _train_limited(config: str, limit: int | None, *extra: str) -> subprocess.CompletedProcess:
    import resource

    def cap() -> None:  # `ulimit -f`: no file may grow past `limit` bytes
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    env = {**subprocess_env(), "PYTHONDONTWRITEBYTECODE": "1"}
    return subprocess.run(
        [PYTHON, "-m", "pipeline.cli", "train", "-c", config, *extra],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        preexec_fn=cap if limit else None,
    )


@pytest.mark.slow
def test_a_full_disk_is_one_line_leaves_no_temporary_file_and_resume_works_after(tmp_path):
    data = write_folders(tmp_path / "data", n=4, size=32)
    cfg = tiny_config(data, tmp_path / "run", train={"epochs": 1})
    config = write_config(tmp_path / "cfg.yaml", cfg)
    assert _train_limited(config, None).returncode == 0
    run = tmp_path / "run"
    good = (run / "checkpoints" / "last.pt").read_bytes()
    size = len(good)
    done = _train_limited(config, size // 2, "--resume", "--set", "train.epochs=2")  # the next checkpoint cannot fit
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2, lines[-5:]
    assert "File too large" in lines[-1] and "MiB free there" in lines[-1] and "--resume" in lines[-1], lines[-1]
    assert (run / "checkpoints" / "last.pt").read_bytes() == good, "the earlier checkpoint is intact"
    assert not [p for p in run.rglob("*") if p.name.endswith(".tmp")], "no temporary file left"
    assert _train_limited(config, None, "--resume", "--set", "train.epochs=2").returncode == 0  # space freed
    from pipeline.engines.checkpoint import load_checkpoint

    assert load_checkpoint(run / "checkpoints" / "last.pt")["train_state"]["epoch"] == 2
