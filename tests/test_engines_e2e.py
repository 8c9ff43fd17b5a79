"""End to end on tiny synthetic data: train -> checkpoint -> resume -> evaluate -> infer."""

from __future__ import annotations

import csv
import json
import shutil

import nibabel as nib
import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from pipeline.cli import main
from pipeline.data.synth import make_dataset
from pipeline.engines.checkpoint import load_checkpoint

pytestmark = pytest.mark.slow


def _config(tmp_path, root, dims, name="cfg.yaml"):
    patch = [32, 32] if dims == 2 else [32, 32, 16]
    cfg = {
        "seed": 3,
        "network": {"name": "unet", "spatial_dims": dims, "in_channels": 1, "out_channels": 2, "channels": [4, 8, 16]},
        "loss": {
            "name": "compound",
            "region": {"name": "dice_ce", "to_onehot_y": True, "softmax": True},
            "boundary": {"name": "boundary", "to_onehot_y": True, "softmax": True, "include_background": False},
            "schedule": "linear",
            "alpha": 0.01,
            "alpha_end": 0.5,
            "ramp_epochs": 3,
        },
        "data": {"format": "drive" if dims == 2 else "msd", "root": str(root), "val_fraction": 0.25},
        "transforms": {"patch_size": patch, "num_samples": 2},
        "train": {"epochs": 3, "batch_size": 2, "num_workers": 0, "tensorboard": False},
        "optimizer": {"name": "adam", "lr": 0.01},
        "scheduler": {"name": "constant"},
        "infer": {"overlap": 0.25},
    }
    if dims == 2:
        cfg["transforms"].update(channels=[1], label_values=[0, 255])
    else:
        cfg["data"]["test_fraction"] = 0.25
    path = tmp_path / name
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.fixture(scope="module")
def vessel3d(tmp_path_factory):
    return make_dataset("vessel3d", tmp_path_factory.mktemp("v3d") / "data", 6, seed=2, size=[32, 32, 16])


def test_train_resume_evaluate_infer_3d(tmp_path, vessel3d, capsys):
    cfg = _config(tmp_path, vessel3d, 3)
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    assert main(["train", "-c", str(cfg), "--output", str(straight)]) == 0
    assert main(["train", "-c", str(cfg), "--output", str(resumed), "--epochs", "2"]) == 0
    assert load_checkpoint(resumed / "checkpoints" / "last.pt")["train_state"]["epoch"] == 2
    # a second start in the same folder is refused; --resume continues at epoch 3
    assert main(["train", "-c", str(cfg), "--output", str(resumed)]) == 2
    assert "pass --resume to continue it" in capsys.readouterr().err
    assert main(["train", "-c", str(cfg), "--output", str(resumed), "--resume", "--epochs", "3"]) == 0

    a = load_checkpoint(straight / "checkpoints" / "last.pt")
    b = load_checkpoint(resumed / "checkpoints" / "last.pt")
    assert b["train_state"]["epoch"] == 3
    for key, value in a["network"].items():
        assert torch.equal(value, b["network"][key]), key  # identical RNG streams and schedule
    # the weights of the last epoch run (index 2 of a 3-epoch linear ramp from 0.01 to 0.5)
    assert b["loss_schedule"] == a["loss_schedule"]
    assert b["loss_schedule"]["weights"]["boundary"] == pytest.approx(0.01 + 0.49 * 2 / 3)
    rows_a = list(csv.DictReader((straight / "log.csv").open()))
    rows_b = list(csv.DictReader((resumed / "log.csv").open()))
    assert [r["epoch"] for r in rows_b] == ["1", "2", "3"]
    assert [r["train_loss"] for r in rows_a] == [r["train_loss"] for r in rows_b]
    assert (resumed / "curves.png").stat().st_size > 0
    saved = yaml.safe_load((resumed / "config.yaml").read_text())
    assert saved["network"]["channels"] == [4, 8, 16] and saved["train"]["epochs"] == 3

    # evaluate the test split from the checkpoint (its own config), predictions in the input geometry
    best = resumed / "checkpoints" / "best.pt"
    out = tmp_path / "eval"
    assert main(["evaluate", "--checkpoint", str(best), "--output", str(out), "--save-predictions"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    rows = list(csv.DictReader((out / "per_case.csv").open()))
    assert summary["n_cases"] == len(rows) >= 1
    for row in rows:
        pred_img = nib.load(out / "predictions" / f"{row['case']}.nii.gz")
        label_img = nib.load(vessel3d / "labelsTr" / f"{row['case']}.nii.gz")
        image_img = nib.load(vessel3d / "imagesTr" / f"{row['case']}.nii.gz")
        assert pred_img.shape == image_img.shape
        np.testing.assert_allclose(pred_img.affine, image_img.affine)
        pred, label = np.asarray(pred_img.dataobj) > 0, np.asarray(label_img.dataobj) > 0
        dice = 2 * (pred & label).sum() / max(pred.sum() + label.sum(), 1)
        assert float(row["dice"]) == pytest.approx(dice, abs=1e-6)

    # the same numbers from comparing the written folders
    labels = tmp_path / "test_labels"
    labels.mkdir()
    for row in rows:
        shutil.copy(vessel3d / "labelsTr" / f"{row['case']}.nii.gz", labels)
    again = tmp_path / "again"
    assert main(["evaluate", "--pred", str(out / "predictions"), "--label", str(labels), "--output", str(again)]) == 0
    again_rows = {r["case"]: r for r in csv.DictReader((again / "per_case.csv").open())}
    for row in rows:
        assert float(again_rows[row["case"]]["dice"]) == pytest.approx(float(row["dice"]), abs=1e-9)
        assert float(again_rows[row["case"]]["hd95"]) == pytest.approx(float(row["hd95"]), rel=1e-6)

    # infer a folder: NIfTI with the input's affine and header; no silent overwrite
    pred_dir = tmp_path / "pred"
    args = ["infer", "--checkpoint", str(best), "--input", str(vessel3d / "imagesTr"), "--output", str(pred_dir)]
    assert main([*args, "--probabilities"]) == 0
    inputs = sorted((vessel3d / "imagesTr").glob("*.nii.gz"))
    for path in inputs:
        src, pred = nib.load(path), nib.load(pred_dir / path.name)
        assert pred.shape == src.shape and pred.get_data_dtype() == np.uint8
        np.testing.assert_array_equal(pred.affine, src.affine)
        np.testing.assert_allclose(pred.header.get_zooms(), src.header.get_zooms())
        probs = np.load(pred_dir / path.name.replace(".nii.gz", "_probabilities.npz"))["probabilities"]
        assert probs.shape == (2, *src.shape)
        # stored as float16: the argmax may flip only where the two classes tie
        differ = probs.argmax(0) != np.asarray(pred.dataobj)
        assert np.all(np.abs(probs[1] - probs[0])[differ] < 2e-3)
        np.testing.assert_allclose(probs.sum(0), 1.0, atol=2e-3)
    assert main(args) == 2
    assert "pass --overwrite" in capsys.readouterr().err
    assert main([*args, "--overwrite", "--tta"]) == 0


def test_train_and_infer_2d_png_at_input_size(tmp_path):
    root = make_dataset("vessel2d", tmp_path / "data", 6, seed=4, size=48)
    cfg = _config(tmp_path, root, 2)
    run = tmp_path / "run"
    assert main(["train", "-c", str(cfg), "--output", str(run), "--epochs", "2"]) == 0
    out = tmp_path / "pred"
    src = sorted((root / "test" / "images").glob("*.tif"))[0]
    assert main(["infer", "--checkpoint", str(run / "checkpoints" / "last.pt"), "--input", str(src),
                 "--output", str(out)]) == 0  # fmt: skip
    pred = np.asarray(Image.open(out / (src.stem + ".png")))
    assert pred.shape == np.asarray(Image.open(src)).shape[:2]
    assert set(np.unique(pred)) <= {0, 255}  # written back as the dataset's raw label values


def test_disk_cache_is_keyed_by_transform_settings(tmp_path):
    root = make_dataset("vessel2d", tmp_path / "data", 5, seed=5, size=48)
    cfg = _config(tmp_path, root, 2)
    cache = tmp_path / "cache"
    base = ["train", "-c", str(cfg), "--output", str(tmp_path / "run"), "--epochs", "1", "--overwrite",
            "--set", "train.cache=disk", "--set", f"train.cache_dir={cache}"]  # fmt: skip
    assert main(base) == 0
    assert main([*base, "--set", "transforms.intensity.mode=minmax"]) == 0
    folders = [p for p in cache.iterdir() if p.is_dir()]
    assert len(folders) == 2 and all(list((f / "train").glob("*.pt")) for f in folders)
