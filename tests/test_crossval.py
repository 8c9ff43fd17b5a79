"""Cross-validation, ensembles, post-processing chosen on OOF Dice, select, sharded inference.

Fast tests build checkpoints and run folders by hand (an untrained tiny UNet, label maps written
as the OOF predictions); the end-to-end tests train 2 folds of 1-2 epochs on 32² images.
"""

from __future__ import annotations

import csv
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from _synthetic import ROOT, subprocess_env, tiny_config, write_config, write_folders

from pipeline.cli import main
from pipeline.config import dump_config, resolve
from pipeline.data import load_datalist
from pipeline.data.splits import kfold, split_cases
from pipeline.engines import factory
from pipeline.engines.checkpoint import save_checkpoint
from pipeline.engines.crossval import _parallel_folds, fold_state
from pipeline.engines.postprocessing import apply_postprocessing, choose_postprocessing, smallest_components
from pipeline.engines.predictor import Predictor, run_inference
from pipeline.engines.selection import check_same_folds, select_runs
from pipeline.errors import MedsegError
from pipeline.io import read_label, write_label

# --------------------------------------------------------------------------- folds


def test_folds_are_disjoint_cover_the_non_test_cases_and_keep_the_test_set():
    cases = [f"c{i:02d}" for i in range(23)]
    k = 5
    splits = [split_cases(cases, test_fraction=0.2, seed=3, num_folds=k, fold=f) for f in range(k)]
    tests = {tuple(s["test"]) for s in splits}
    assert len(tests) == 1  # one test set for every fold
    vals = [set(s["val"]) for s in splits]
    pool = set(cases) - set(splits[0]["test"])
    assert set().union(*vals) == pool  # covering
    assert sum(map(len, vals)) == len(pool)  # disjoint
    assert max(map(len, vals)) - min(map(len, vals)) <= 1
    for s, v in zip(splits, vals, strict=True):
        assert set(s["train"]) == pool - v


def test_fold_assignment_is_not_stable_when_cases_are_added():
    # documented behaviour (pipeline/engines/crossval.py): Fisher–Yates over all ids reshuffles every
    # fold when a case is added, so a run keeps the folds it was trained on and select checks them
    before = kfold([f"c{i:02d}" for i in range(20)], 5, seed=0)
    after = kfold([f"c{i:02d}" for i in range(21)], 5, seed=0)
    fold_of = {c: f for f, cases in enumerate(after) for c in cases}
    moved = [c for f, cases in enumerate(before) for c in cases if fold_of[c] != f]
    assert moved  # most cases change fold
    assert kfold([f"c{i:02d}" for i in range(20)], 5, seed=0) == before  # but fixed for fixed cases


# --------------------------------------------------------------------------- post-processing


def _disc(shape, centre, radius):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return (yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 <= radius**2


def test_postprocessing_that_hurts_is_rejected_and_one_that_helps_is_kept():
    shape = (40, 40)
    # class 1: references have two real components, predictions match them: keep_largest would hurt
    ref1 = (_disc(shape, (10, 10), 5) | _disc(shape, (30, 30), 4)).astype(np.uint8)
    # class 2 (a second structure): one real component, predictions add a spurious speck
    ref = ref1.copy()
    ref[_disc(shape, (10, 30), 5)] = 2
    pred = ref.copy()
    pred[30:32, 8:10] = 2  # a 4-pixel false positive of class 2
    cases = [(pred, ref, (1.0, 1.0)), (pred.copy(), ref.copy(), (1.0, 1.0))]
    spec = choose_postprocessing(cases, [1, 2])
    assert spec["evaluation"]["1"]["kept"] is None
    assert spec["evaluation"]["1"]["keep_largest"] < spec["evaluation"]["1"]["baseline"]
    assert spec["steps"] == [{"class": 2, "op": "keep_largest"}]
    fixed = apply_postprocessing(pred, spec, (1.0, 1.0))
    assert np.array_equal(fixed, ref)


def test_remove_small_uses_the_smallest_training_component_in_mm():
    shape = (40, 40)
    # two real components per case (so keep_largest hurts), the smallest of 13 pixels; the prediction
    # adds a 2-pixel speck
    ref = (_disc(shape, (10, 10), 5) | _disc(shape, (30, 30), 2)).astype(np.uint8)
    pred = ref.copy()
    pred[2, 30:32] = 1
    sizes = smallest_components([(ref, (0.5, 0.5))], [1])
    assert sizes == {1: 13 * 0.25}
    spec = choose_postprocessing([(pred, ref, (0.5, 0.5))], [1])
    assert spec["steps"] == [{"class": 1, "op": "remove_small", "min_size": 13 * 0.25}]
    assert np.array_equal(apply_postprocessing(pred, spec, (0.5, 0.5)), ref)


# --------------------------------------------------------------------------- ensembles


def _checkpoint(path: Path, root: Path, seed: int, **network) -> Path:
    cfg = tiny_config(root, path.parent / "run", train={"device": "cpu", "threads": 1})
    cfg["network"].update(network)
    cfg["transforms"]["label_values"] = list(range(cfg["network"]["out_channels"]))
    config = resolve(cfg)
    torch.manual_seed(seed)
    net = factory.build_network(config)
    save_checkpoint({"config": config.to_dict(), "network": net.state_dict()}, path)
    return path


@pytest.fixture(scope="module")
def members(tmp_path_factory):
    base = tmp_path_factory.mktemp("ens")
    root = write_folders(base / "data", n=3, size=32)
    return root, [_checkpoint(base / f"m{i}.pt", root, seed=i) for i in range(2)]


@pytest.mark.slow
def test_an_ensemble_of_one_member_equals_the_member(members):
    root, (a, b) = members
    image = root / "images" / "case0.png"
    single = Predictor(a)(image)
    one = Predictor([a])(image)
    twice = Predictor([a, a])(image)  # (p + p) / 2 == p exactly in floating point
    assert torch.equal(single.probabilities, one.probabilities)
    assert torch.equal(single.probabilities, twice.probabilities)
    assert np.array_equal(single.labels, twice.labels)
    pair = Predictor([a, b])(image)
    expected = (single.probabilities + Predictor(b)(image).probabilities) / 2
    assert torch.allclose(pair.probabilities, expected, atol=1e-6)


def test_ensemble_members_that_disagree_on_classes_are_refused(members, tmp_path):
    root, (a, _) = members
    three = _checkpoint(tmp_path / "three.pt", root, seed=0, out_channels=3)
    with pytest.raises(MedsegError, match="ensemble members must agree on classes: .*three.pt has 3"):
        Predictor([a, three])


def test_parts_write_every_input_once_and_continue(members, tmp_path):
    root, (a, _) = members
    whole = run_inference(a, root / "images", tmp_path / "whole", progress=False)
    parts = [run_inference(a, root / "images", tmp_path / "parts", part=k, parts=2, progress=False) for k in (0, 1)]
    assert sorted(p.name for p in parts[0] + parts[1]) == sorted(p.name for p in whole)
    assert not {p.name for p in parts[0]} & {p.name for p in parts[1]}
    for p in whole:
        assert (tmp_path / "parts" / p.name).read_bytes() == p.read_bytes()
    (tmp_path / "parts" / parts[0][0].name).unlink()
    again = run_inference(a, root / "images", tmp_path / "parts", part=0, parts=2, resume=True, progress=False)
    assert [p.name for p in again] == [parts[0][0].name]
    with pytest.raises(MedsegError, match="--part 2 --parts 2: need 0 <= part < parts"):
        run_inference(a, root / "images", tmp_path / "x", part=2, parts=2)


# --------------------------------------------------------------------------- select


def _fake_cv_run(run: Path, root: Path, quality: str, probabilities: bool) -> None:
    """A finished 2-fold run whose OOF predictions are the references (``good``) or empty (``bad``)."""
    for f in range(2):
        folder = run / f"fold_{f}"
        cfg = tiny_config(root, folder, data={"format": "folders", "root": str(root), "num_folds": 2, "fold": f})
        config = resolve(cfg)
        (folder / "validation" / "predictions").mkdir(parents=True)
        (folder / "checkpoints").mkdir()
        (folder / "checkpoints" / "best.pt").write_bytes(b"")  # select only names the members
        dump_config(config, folder / "config.yaml")
        rows = []
        for item in load_datalist(config["data"])["val"]:
            label = read_label(item["label"]).array
            pred = label if quality == "good" else np.zeros_like(label)
            name = Path(item["label"]).name
            write_label(folder / "validation" / "predictions" / name, pred)
            if probabilities:
                p1 = pred.astype(np.float16)
                np.savez_compressed(
                    folder / "validation" / "predictions" / name.replace(".png", "_probabilities.npz"),
                    probabilities=np.stack([1 - p1, p1]),
                )
            rows.append({"case": item["case"], "class": 1, "dice": 1.0, "status": "ok"})
        with (folder / "validation" / "per_case.csv").open("w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=["case", "class", "dice", "status"])
            writer.writeheader()
            writer.writerows(rows)
        (folder / "validation" / "summary.json").write_text(
            json.dumps({"n_cases": len(rows), "metrics": ["dice"], "foreground_mean": {"dice": 1.0}})
        )


def test_select_picks_the_better_run_and_checks_the_folds(tmp_path):
    root = write_folders(tmp_path / "data", n=6, size=32)
    _fake_cv_run(tmp_path / "bad", root, "bad", probabilities=True)
    _fake_cv_run(tmp_path / "good", root, "good", probabilities=False)
    plan = select_runs([tmp_path / "bad", tmp_path / "good"], tmp_path / "plan.json")
    assert plan["runs"] == [str((tmp_path / "good").resolve())]
    assert plan["members"] == [
        str((tmp_path / "good" / f"fold_{f}" / "checkpoints" / "best.pt").resolve()) for f in (0, 1)
    ]
    assert plan["expected"]["mean"] == pytest.approx(1.0)
    table = {r["candidate"]: r for r in plan["table"]}
    assert table["bad"]["dice_cases"]["mean"] == pytest.approx(0.0)
    assert not table["bad + good"]["available"]  # good has no OOF probabilities
    assert json.loads((tmp_path / "plan.json").read_text())["members"] == plan["members"]

    other = write_folders(tmp_path / "other", n=8, size=32)  # different cases: different folds
    _fake_cv_run(tmp_path / "elsewhere", other, "good", probabilities=False)
    with pytest.raises(MedsegError, match="validates on other cases"):
        check_same_folds([tmp_path / "good", tmp_path / "elsewhere"])


# --------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def cv_config(tmp_path_factory):
    base = tmp_path_factory.mktemp("cv")
    root = write_folders(base / "data", n=6, size=32)
    cfg = tiny_config(
        root, base / "run", data={"format": "folders", "root": str(root), "num_folds": 2}, train={"epochs": 1}
    )
    return base, root, write_config(base / "cfg.yaml", cfg)


@pytest.mark.slow
def test_cv_trains_folds_resumes_summarizes_and_infers_as_an_ensemble(cv_config, capsys):
    base, root, cfg = cv_config
    run = base / "run"
    assert main(["train", "-c", cfg, "--fold", "0"]) == 0
    assert main(["train", "-c", cfg, "--fold", "2"]) == 2  # one line: out of range
    assert "--fold 2: must be in [0, 2)" in capsys.readouterr().err
    shutil.rmtree(run / "fold_0" / "validation")  # as if killed before its OOF predictions
    assert fold_state(run / "fold_0") == "predict"  # trained, OOF missing
    assert fold_state(run / "fold_0", epochs=2) == "train"  # 1 of 2 epochs: resumed
    assert main(["cv", "-c", cfg, "--epochs", "2", "--probabilities"]) == 0
    out = capsys.readouterr().out
    assert "to do: 0 (train), 1 (train)" in out
    assert [r["epoch"] for r in csv.DictReader((run / "fold_0" / "log.csv").open())] == ["1", "2"]  # resumed
    for f in (0, 1):
        preds = run / f"fold_{f}" / "validation" / "predictions"
        assert len(list(preds.glob("*.png"))) == 3 and len(list(preds.glob("*_probabilities.npz"))) == 3
    summary = json.loads((run / "cv_summary.json").read_text())
    assert summary["finished_folds"] == [0, 1] and summary["n_cases"] == 6
    assert (run / "postprocessing.json").is_file() and (run / "cv_summary.csv").is_file()
    assert main(["cv", "-c", cfg, "--epochs", "2"]) == 0
    assert "to do: none" in capsys.readouterr().out  # finished folds are skipped
    assert main(["cv", "summarize", str(run), "--no-postprocessing"]) == 0
    assert "± folds" in capsys.readouterr().out

    assert main(["infer", "--checkpoint", str(run), "--input", str(root / "images"), "--output", str(base / "p")]) == 0
    assert len(list((base / "p").glob("*.png"))) == 6
    args = ["evaluate", "--checkpoint", str(run), "--split", "val", "--output", str(base / "ev"), "--no-postprocessing"]
    assert main(args) == 0


@pytest.mark.slow
def test_two_torchrun_processes_write_the_files_of_one_byte_identical(members, tmp_path):
    root, (a, _) = members
    single = tmp_path / "single"
    assert main(["infer", "--checkpoint", str(a), "--input", str(root / "images"), "--output", str(single)]) == 0
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m"]
    cmd += ["pipeline.cli", "infer", "--checkpoint", str(a), "--input", str(root / "images"), "--output"]
    result = subprocess.run(
        [*cmd, str(tmp_path / "ddp")], cwd=ROOT, env=subprocess_env(1), capture_output=True, text=True, timeout=240
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert sorted(re.findall(r"wrote (\d+) file", result.stdout)) == ["1", "2"]  # 3 cases: ranks take 2 and 1
    names = sorted(p.name for p in single.iterdir())
    assert sorted(p.name for p in (tmp_path / "ddp").iterdir()) == names
    for name in names:
        assert (tmp_path / "ddp" / name).read_bytes() == (single / name).read_bytes()


@pytest.mark.slow
def test_one_process_per_device_runs_every_fold(cv_config, tmp_path, capsys):
    # the one-fold-per-GPU path, on the CPU: each fold a `train --fold K --resume` child process
    # (with CUDA_VISIBLE_DEVICES=K, meaningless here); the device binding itself needs 2 GPUs
    _, _, cfg = cv_config
    run = tmp_path / "par"
    _parallel_folds(cfg, [f"train.output={run}"], [0, 1], 2, run, probabilities=False)
    out = capsys.readouterr().out
    assert "fold 0 started on cuda:0" in out and "fold 1 started on cuda:1" in out
    assert [fold_state(run / f"fold_{f}") for f in (0, 1)] == ["done", "done"]
    assert "out-of-fold predictions of 3 cases" in (run / "fold_1.log").read_text()
