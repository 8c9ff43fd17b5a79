"""``medseg evaluate --checkpoint best.pt --data ROOT``: every case of a held-out dataset root of
the run's layout, no split, the same per_case.csv / summary.json as ``--split``."""

from __future__ import annotations

import csv
import json

import pytest
from _synthetic import tiny_config, write_config, write_folders

from pipeline.cli import main


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    base = tmp_path_factory.mktemp("evaldata")
    root = write_folders(base / "data", n=6, size=40)
    cfg = write_config(base / "cfg.yaml", tiny_config(root, base / "run", train={"epochs": 1}))
    assert main(["train", "-c", cfg]) == 0
    return base, base / "run" / "checkpoints" / "best.pt"


@pytest.mark.slow
def test_evaluate_scores_every_case_of_a_held_out_root(trained, capsys):
    base, best = trained
    held_out = write_folders(base / "held_out", n=5, size=40, seed=7)  # not the training data, 5 cases
    out = base / "scores"
    assert main(["evaluate", "--checkpoint", str(best), "--data", str(held_out), "--output", str(out)]) == 0
    rows = list(csv.DictReader((out / "per_case.csv").open()))
    assert sorted({r["case"] for r in rows}) == [f"case{i}" for i in range(5)]  # all, not a split of them
    summary = json.loads((out / "summary.json").read_text())
    assert summary  # same writer as --split
    # the split path writes the same files with the same columns
    split_out = base / "split_scores"
    assert main(["evaluate", "--checkpoint", str(best), "--split", "val", "--output", str(split_out)]) == 0
    assert list(csv.DictReader((split_out / "per_case.csv").open()))[0].keys() == rows[0].keys()
    assert "wrote" in capsys.readouterr().out


def test_evaluate_data_errors_are_one_line(trained, tmp_path, capsys):
    _, best = trained
    missing = tmp_path / "nowhere"
    assert main(["evaluate", "--checkpoint", str(best), "--data", str(missing), "--output", str(tmp_path / "o")]) == 2
    assert f"--data {missing}: not a folder" in capsys.readouterr().err
    argv = ["evaluate", "--checkpoint", str(best), "--data", str(tmp_path), "--split", "val", "--output", "o"]
    assert main(argv) == 2
    assert "give --data or --split, not both" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
