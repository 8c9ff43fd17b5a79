"""Instance runs end to end through the CLI: train (thresholds chosen on validation) -> infer (id map +
objects.csv in the input's geometry) -> evaluate --instances; threshold selection; uint32 id maps."""

from __future__ import annotations

import csv
import json
import subprocess

import numpy as np
import pytest
import torch
import yaml
from _synthetic import PYTHON, subprocess_env
from PIL import Image

from pipeline.config import resolve
from pipeline.errors import ConfigError
from pipeline.instances.postprocess import select_thresholds
from pipeline.io import read_label, write_instance_map
from transforms.chains import ChainSettings, build_transforms

NET = {"name": "unet", "spatial_dims": 2, "in_channels": 1, "out_channels": 3, "channels": [4, 8, 16]}


def _cli(*args: str) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [PYTHON, "-m", "pipeline.cli", *args], capture_output=True, text=True, env=subprocess_env(), timeout=300
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


@pytest.mark.slow
def test_train_infer_evaluate_instances_2d(tmp_path):
    data = tmp_path / "cells"
    _cli("synth", "--kind", "cell", "--dense", "--out", str(data), "--n", "6", "--size", "48")
    cfg = {
        "seed": 0,
        "task": {"kind": "instance", "postprocess": {"interior_thresholds": [0.4, 0.6], "min_sizes": [0, 8]}},
        "network": NET,
        "data": {"format": "dsb2018", "root": str(data), "val_fraction": 0.34},
        "transforms": {"patch_size": [32, 32], "channels": [0], "num_samples": 1},
        "train": {"epochs": 2, "batch_size": 2, "threads": 1, "num_workers": 0, "tensorboard": False},
    }
    config = tmp_path / "cfg.yaml"
    config.write_text(yaml.safe_dump(cfg))
    run = tmp_path / "run"
    out = _cli("train", "-c", str(config), "--output", str(run)).stdout
    assert "post-processing chosen on 2 val case(s)" in out
    chosen = json.loads((run / "postprocess.json").read_text())
    assert chosen["interior_threshold"] in (0.4, 0.6) and chosen["min_size"] in (0, 8) and chosen["split"] == "val"
    best = run / "checkpoints" / "best.pt"
    saved = torch.load(best, weights_only=True)["postprocess"]
    assert saved["interior_threshold"] == chosen["interior_threshold"]

    image = next((data / "stage1_train").glob("*/images/*.png"))
    _cli("infer", "--checkpoint", str(best), "--input", str(image), "--output", str(tmp_path / "pred"))
    pred_png = tmp_path / "pred" / image.name
    ids = np.asarray(Image.open(pred_png))
    assert ids.dtype == np.uint16 and ids.shape == np.asarray(Image.open(image)).shape[:2]
    with open(pred_png.with_name(image.stem + "_objects.csv")) as fh:
        rows = list(csv.DictReader(fh))
    present = sorted(int(v) for v in np.unique(ids) if v)
    assert [int(r["id"]) for r in rows] == present
    for r in rows:  # the area is the pixel count; the bounding box holds the object
        k = int(r["id"])
        assert float(r["area"]) == (ids == k).sum()
        ys, xs = np.nonzero(ids == k)  # pipeline.io's axis 0 is x (the column)
        assert int(r["bbox_min_0"]) == xs.min() and int(r["bbox_max_1"]) == ys.max() + 1
        assert 0 <= float(r["mean_intensity"]) <= 255

    ev = tmp_path / "eval"
    text = _cli("evaluate", "--checkpoint", str(best), "--split", "val", "--output", str(ev)).stdout
    assert "mean_ap" in text and "aji" in text
    summary = json.loads((ev / "summary.json").read_text())
    assert summary["task"] == "instance" and summary["n_cases"] == 2
    for key in ("mean_mean_ap", "mean_ap_0.50", "mean_ap_0.95", "mean_f1", "mean_aji", "mean_pq", "mean_count_error"):
        assert 0 <= abs(summary["metrics"][key]) <= 10, key
    with open(ev / "per_case.csv") as fh:
        per_case = list(csv.DictReader(fh))
    assert len(per_case) == 2 and {"case", "ap_0.50", "mean_ap", "aji", "pq", "count_error"} <= set(per_case[0])
    assert len(list((ev / "overlays").glob("*.png"))) == 2

    # the folder route: predicted id maps against reference id maps of the same names
    labels = tmp_path / "labels"
    labels.mkdir()
    write_instance_map(labels / pred_png.name, read_label(pred_png).array)
    _cli("evaluate", "--instances", "--pred", str(tmp_path / "pred"), "--label", str(labels), "--output", str(ev / "f"))
    folder = json.loads((ev / "f" / "summary.json").read_text())["metrics"]
    assert folder["mean_mean_ap"] == 1.0 and folder["mean_count_error"] == 0.0


def test_threshold_selection_picks_the_threshold_that_splits_touching_objects():
    ids = np.zeros((20, 30), int)
    ids[3:17, 2:15], ids[3:17, 15:28] = 1, 2
    probs = np.zeros((3, 20, 30), np.float32)
    probs[0] = 1.0
    fg = ids > 0
    probs[0][fg], probs[1][fg], probs[2][fg] = 0.1, 0.8, 0.1
    probs[:, 3:17, 14:16] = np.array([0.1, 0.45, 0.45], np.float32)[:, None, None]  # the contact: a weak border
    probs[:, 0:2, 0:2] = np.array([0.0, 1.0, 0.0], np.float32)[:, None, None]  # a 4-pixel speck
    chosen = select_thresholds([(probs, ids)], interior_thresholds=(0.3, 0.5), min_sizes=(0, 8))
    # 0.3 seeds the contact too (one merged object); 0.5 splits them; min_size 8 drops the speck
    assert (chosen["interior_threshold"], chosen["min_size"], chosen["score"]) == (0.5, 8, 1.0)
    assert chosen["grid"]["scores"][0][1] < 1.0 and chosen["grid"]["scores"][1][0] < 1.0
    at_half = select_thresholds([(probs, ids)], interior_thresholds=(0.3, 0.5), min_sizes=(0, 8), metric="ap_0.50")
    assert at_half["metric"] == "ap_0.50" and at_half["interior_threshold"] == 0.5
    with pytest.raises(ValueError, match="metric"):
        select_thresholds([(probs, ids)], metric="dice")


def test_instance_maps_beyond_65535_objects_are_uint32(tmp_path):
    import nibabel as nib
    import tifffile

    ids = np.arange(1, 70_001, dtype=np.int64).reshape(280, 250)  # W H: 70,000 objects
    out = write_instance_map(tmp_path / "many.png", ids)
    assert out.name == "many.tif"  # a PNG holds 16 bits
    on_disk = tifffile.imread(out)
    assert on_disk.dtype == np.uint32 and on_disk.shape == (250, 280) and np.array_equal(on_disk.T, ids)
    assert np.array_equal(read_label(out).array, ids)
    few = write_instance_map(tmp_path / "few.png", ids % 65_536)
    assert few.suffix == ".png" and np.asarray(Image.open(few)).dtype == np.uint16
    vol = write_instance_map(tmp_path / "many.nii.gz", ids.reshape(280, 25, 10))
    assert nib.load(vol).get_data_dtype() == np.uint32
    with pytest.raises(ValueError, match=">= 0"):
        write_instance_map(tmp_path / "bad.png", -ids)


def test_instance_task_config_and_chain(tmp_path):
    with pytest.raises(ConfigError, match="out_channels"):
        resolve({"network": {**NET, "out_channels": 2}, "task": {"kind": "instance"}})
    cfg = resolve({"network": NET, "task": {"kind": "instance", "border_width": 1.0}})
    assert cfg["task"]["postprocess"]["metric"] == "mean_ap"
    # a folders dataset whose label is an id map: the chain makes the 3-class target from it
    from pipeline.io import write_image

    ids = np.zeros((24, 24), np.uint16)
    ids[2:10, 2:12], ids[2:10, 12:22], ids[14:22, 5:15] = 1, 2, 300
    write_image(tmp_path / "img.png", (ids > 0).astype(np.uint8) * 200)
    write_instance_map(tmp_path / "lab.png", ids)
    from pipeline.data.loaders import chain_settings
    from pipeline.io import read_image

    settings = chain_settings(cfg)
    assert isinstance(settings, ChainSettings) and settings.instance == {"border_width": 1.0, "border": "all"}
    out = build_transforms(settings, "val", reader=read_image)({"image": str(tmp_path / "img.png"),
                                                                 "label": str(tmp_path / "lab.png")})  # fmt: skip
    label = out["label"][0].numpy()
    assert set(np.unique(label)) == {0.0, 1.0, 2.0} and label[6, 7] == 1 and label[6, 11] == 2 and label[6, 12] == 2
    assert int(out["instance"].max()) == 300


@pytest.mark.slow
def test_instances_3d_nifti_geometry_and_physical_units(tmp_path):
    import nibabel as nib

    data = tmp_path / "c3"
    _cli("synth", "--kind", "cell3d", "--out", str(data), "--n", "3", "--size", "32,32,16")
    cfg = {
        "task": {"kind": "instance", "postprocess": {"interior_thresholds": [0.5], "min_sizes": [0, 4]}},
        "network": {**NET, "spatial_dims": 3},
        "data": {"format": "folders", "root": str(data), "val_fraction": 0.34},
        "transforms": {"patch_size": [16, 16, 16], "num_samples": 1},
        "train": {"epochs": 1, "batch_size": 1, "threads": 1, "num_workers": 0, "tensorboard": False},
    }
    config = tmp_path / "cfg3.yaml"
    config.write_text(yaml.safe_dump(cfg))
    assert "no problems" in _cli("check-data", "-c", str(config)).stdout  # id maps are not class labels
    run = tmp_path / "run"
    _cli("train", "-c", str(config), "--output", str(run))
    pred = tmp_path / "pred"
    _cli(
        "infer",
        "--checkpoint",
        str(run / "checkpoints" / "best.pt"),
        "--input",
        str(data / "images"),
        "--output",
        str(pred),
    )
    for src in sorted((data / "images").glob("*.nii.gz")):
        out, ref = nib.load(pred / src.name), nib.load(src)
        assert out.get_data_dtype() == np.uint16 and out.shape == ref.shape and np.allclose(out.affine, ref.affine)
        ids = np.asarray(out.dataobj)
        with open(pred / (src.name[: -len(".nii.gz")] + "_objects.csv")) as fh:
            rows = list(csv.DictReader(fh))
        assert len(rows) == len(np.unique(ids[ids > 0]))  # one row per object, background or not
        for r in rows[:5]:  # volume in µm³: voxels x 0.5 x 0.5 x 1.0
            assert float(r["volume"]) == pytest.approx((ids == int(r["id"])).sum() * 0.25)
    ev = tmp_path / "ev"
    _cli("evaluate", "--instances", "--pred", str(pred), "--label", str(data / "labels"), "--output", str(ev))
    summary = json.loads((ev / "summary.json").read_text())
    assert summary["n_cases"] == 3 and 0 <= summary["metrics"]["mean_aji"] <= 1


@pytest.mark.slow
def test_cell_demo_shows_objects_with_their_count(tmp_path):
    out = tmp_path / "demo"
    text = _cli("demo", "--kind", "cell", "--quick", "--out", str(out)).stdout
    assert "[5/5] writing the report" in text and "test AP@0.5" in text
    report = (out / "report.md").read_text()
    assert "nuclei found" in report and "Outlines: truth | prediction" in report
    assert list((out / "overlays").glob("*.png")) and list((out / "test" / "overlays").glob("*.png"))
    assert list((out / "infer").glob("*_objects.csv"))


def test_plan_task_makes_an_instance_plan_for_touching_instance_masks():
    from pipeline.engines.planner import plan_task, plan_values

    def plan() -> dict:
        return {"network": {"out_channels": 2}}

    touching, sparse, semantic = {"touching_fraction_median": 0.14}, {"touching_fraction_median": 0.0}, {}
    auto = plan()
    plan_task(auto, touching, "auto")
    assert plan_values(auto)["task"]["kind"] == "instance" and plan_values(auto)["network"]["out_channels"] == 3
    for fp, task in ((sparse, "auto"), (semantic, "auto"), (touching, "semantic")):
        kept = plan()
        plan_task(kept, fp, task)
        assert kept == plan()
    forced = plan()
    plan_task(forced, semantic, "instance")  # labels read as id maps
    assert plan_values(forced)["task"]["kind"] == "instance"
    with pytest.raises(ValueError, match="task must be"):
        plan_task(plan(), touching, "panoptic")
