from __future__ import annotations

import csv
import json
import math

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from pipeline.cli import main
from pipeline.engines.evaluator import Evaluator, evaluate_folder
from pipeline.errors import DataError
from pipeline.metrics import METRICS

SPACING = (0.5, 1.0, 2.0)
SHAPE = (12, 10, 8)


def _nifti(path, array, spacing=SPACING):
    nib.save(nib.Nifti1Image(array.astype(np.uint8), np.diag([*spacing, 1.0])), path)


def _read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture
def nifti_folders(tmp_path):
    """Two 3D cases: 'a' predicted perfectly; 'b' with class 2 missed and class 1 shifted by one voxel."""
    pred, label = tmp_path / "pred", tmp_path / "label"
    pred.mkdir()
    label.mkdir()
    a = np.zeros(SHAPE, np.uint8)
    a[2:6, 2:6, 2:5] = 1
    a[7:10, 5:8, 4:7] = 2
    _nifti(label / "a.nii.gz", a)
    _nifti(pred / "a.nii.gz", a)
    b = np.zeros(SHAPE, np.uint8)
    b[3:7, 3:7, 3:6] = 1
    b[8:10, 1:3, 1:3] = 2
    shifted = np.zeros(SHAPE, np.uint8)
    shifted[4:8, 3:7, 3:6] = 1  # shifted along axis 0 by one voxel (0.5 mm)
    _nifti(label / "b.nii", b)
    _nifti(pred / "b.nii.gz", shifted)
    return tmp_path


def test_cli_nifti_end_to_end(nifti_folders, capsys):
    out = nifti_folders / "out"
    args = ["evaluate", "--pred", str(nifti_folders / "pred"), "--label", str(nifti_folders / "label")]
    assert main([*args, "--output", str(out), "--nsd-tolerance", "0.5"]) == 0
    rows = _read_csv(out / "per_case.csv")
    assert list(rows[0]) == ["case", "class", *METRICS, "status"]
    assert [(r["case"], r["class"], r["status"]) for r in rows] == [
        ("a", "1", "ok"),
        ("a", "2", "ok"),
        ("b", "1", "ok"),
        ("b", "2", "missed"),
    ]
    a1, b1, b2 = rows[0], rows[2], rows[3]
    assert float(a1["dice"]) == 1.0 and float(a1["hd95"]) == 0.0
    assert float(b1["dice"]) == pytest.approx(2 * 36 / 96)
    assert float(b1["hd95"]) == pytest.approx(0.5)  # one voxel along the 0.5 mm axis: spacing was read
    assert float(b1["nsd"]) == 1.0  # every surface voxel within 0.5 mm
    diag = math.sqrt((12 * 0.5) ** 2 + (10 * 1.0) ** 2 + (8 * 2.0) ** 2)
    assert float(b2["hd95"]) == pytest.approx(diag) and float(b2["assd"]) == pytest.approx(diag)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_cases"] == 2 and summary["classes"] == [1, 2]
    assert summary["nsd_tolerance_mm"] == 0.5
    c2 = summary["per_class"]["2"]
    assert (c2["ok"], c2["missed"], c2["hallucinated"], c2["both_empty"]) == (1, 1, 0, 0)
    assert c2["dice"] == {"mean": 0.5, "std": 0.5, "median": 0.5}
    assert c2["hd95"]["mean"] == pytest.approx(diag / 2)
    assert summary["foreground_mean"]["dice"] == pytest.approx((summary["per_class"]["1"]["dice"]["mean"] + 0.5) / 2)
    printed = capsys.readouterr().out
    assert "0.5000 ± 0.5000" in printed and "1/0/0" not in printed and "0/1/0" in printed

    # existing outputs: refused without --overwrite (exit 2, the path named), replaced with it
    assert main([*args, "--output", str(out)]) == 2
    assert f"{out / 'per_case.csv'} exists; pass --overwrite" in capsys.readouterr().err
    assert main([*args, "--output", str(out), "--overwrite", "--classes", "1", "--metrics", "dice"]) == 0
    assert list(_read_csv(out / "per_case.csv")[0]) == ["case", "class", "dice", "status"]
    names = ["cases.json", "per_case.csv", "report.html", "summary.json"]
    assert sorted(p.name for p in out.iterdir()) == names  # no temp files left


def _gif(path, array):
    Image.fromarray(array.astype(np.uint8)).save(path)


def test_cli_drive_like_png_with_fov(tmp_path, capsys):
    """DRIVE naming (01_test.png / 01_manual1.gif / 01_test_mask.gif), 0/255 masks, a FOV."""
    for d in ("pred", "label", "fov"):
        (tmp_path / d).mkdir()
    yy, xx = np.mgrid[:32, :30]
    fov = ((yy - 16) ** 2 + (xx - 15) ** 2 < 13**2).astype(np.uint8) * 255
    for i in (1, 2):
        vessel = np.zeros((32, 30), np.uint8)
        vessel[14 + i : 17 + i, 4:26] = 255
        pred = vessel.copy()
        pred[0:3, 0:3] = 255  # outside the FOV: ignored only with --fov
        _gif(tmp_path / "label" / f"{i:02d}_manual1.gif", vessel)
        _gif(tmp_path / "fov" / f"{i:02d}_test_mask.gif", fov)
        Image.fromarray(pred).save(tmp_path / "pred" / f"{i:02d}_test.png")
    base = [
        "evaluate",
        "--pred",
        str(tmp_path / "pred"),
        "--label",
        str(tmp_path / "label"),
        "--case-regex",
        r"^(\d+)_",
    ]
    assert main([*base, "--output", str(tmp_path / "with"), "--fov", str(tmp_path / "fov")]) == 0
    assert main([*base, "--output", str(tmp_path / "without")]) == 0
    with_fov = _read_csv(tmp_path / "with" / "per_case.csv")
    without = _read_csv(tmp_path / "without" / "per_case.csv")
    assert [r["case"] for r in with_fov] == ["01", "02"]
    assert all(float(r["dice"]) == 1.0 and float(r["hd95"]) == 0.0 for r in with_fov)
    assert all(float(r["precision"]) == pytest.approx(66 / 75) for r in without)  # 66 vessel px + 9 outside


def test_cli_missing_pairs_exit_2_listing_files(tmp_path, capsys):
    (tmp_path / "pred").mkdir()
    (tmp_path / "label").mkdir()
    for i in range(8):
        _gif(tmp_path / "label" / f"case{i}.gif", np.zeros((4, 4)))
    _gif(tmp_path / "pred" / "case0.png", np.zeros((4, 4)))
    _gif(tmp_path / "pred" / "extra.png", np.zeros((4, 4)))
    code = main(["evaluate", "--pred", str(tmp_path / "pred"), "--label", str(tmp_path / "label"), "--output", "o"])
    err = capsys.readouterr().err
    assert code == 2
    assert "7 label(s)" in err and "case1.gif, case2.gif, case3.gif, case4.gif, case5.gif (+2 more)" in err
    assert "1 prediction(s)" in err and "extra.png" in err
    assert err.count("\n") == 1  # one line, no traceback


def test_cli_shape_mismatch_names_both_files(tmp_path, capsys):
    (tmp_path / "pred").mkdir()
    (tmp_path / "label").mkdir()
    _gif(tmp_path / "pred" / "x.png", np.zeros((4, 5)))
    _gif(tmp_path / "label" / "x.png", np.zeros((4, 4)))
    code = main(["evaluate", "--pred", str(tmp_path / "pred"), "--label", str(tmp_path / "label"), "--output", "o"])
    assert code == 2
    err = capsys.readouterr().err
    # shapes in pipeline.io's W H order: the 4-row, 5-column picture is (5, 4)
    assert "shape mismatch: prediction" in err and "(5, 4)" in err and "(4, 4)" in err and "label" in err


def test_cli_rejects_background_class(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["evaluate", "--pred", "p", "--label", "l", "--output", "o", "--classes", "0"])
    assert exc.value.code == 2
    assert "must be >= 1 (0 is background)" in capsys.readouterr().err


def test_different_affines_warn_and_label_spacing_wins(nifti_folders):
    label = nib.load(nifti_folders / "label" / "b.nii").get_fdata().astype(np.uint8)
    _nifti(nifti_folders / "pred" / "b.nii.gz", label, spacing=(1.0, 1.0, 1.0))
    with pytest.warns(UserWarning, match=r"different affines.*label's spacing \(0\.5, 1\.0, 2\.0\)"):
        ev = evaluate_folder(nifti_folders / "pred", nifti_folders / "label", nifti_folders / "out", metrics=["dice"])
    assert ev.results["b"][1]["dice"] == 1.0


def test_evaluate_folder_refuses_existing_output_before_work(tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "summary.json").write_text("{}")
    with pytest.raises(DataError, match=r"summary\.json exists; pass --overwrite"):
        evaluate_folder(tmp_path / "does-not-matter", tmp_path / "neither", tmp_path / "out")


def test_evaluator_in_memory_fills_absent_classes_and_merges():
    label = np.zeros((8, 8), np.uint8)
    label[1:4, 1:4] = 1
    other = np.zeros((8, 8), np.uint8)
    other[4:7, 4:7] = 3
    ev = Evaluator(metrics=("dice", "hd95"))
    ev.add("a", label, label)
    rank1 = Evaluator(metrics=("dice", "hd95"))
    rank1.add("b", other, other)
    ev.merge([rank1])
    assert ev.classes == (1, 3)
    assert [(r["case"], r["class"], r["status"], r["dice"]) for r in ev.rows()] == [
        ("a", 1, "ok", 1.0),
        ("a", 3, "both_empty", 1.0),
        ("b", 1, "both_empty", 1.0),
        ("b", 3, "ok", 1.0),
    ]
    assert ev.summary()["per_class"]["3"]["both_empty"] == 1
    with pytest.raises(ValueError, match="case 'a' was already added"):
        ev.add("a", label, label)
    with pytest.raises(ValueError, match=r"cases evaluated twice: \['b'\]"):
        ev.merge([rank1])
    with pytest.raises(ValueError, match="no cases to summarise"):
        Evaluator().summary()
    with pytest.raises(ValueError, match=r"classes must be a non-empty list of indices >= 1, got \[0\]"):
        Evaluator(classes=[0])
