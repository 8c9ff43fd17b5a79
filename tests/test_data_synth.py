"""Synthetic datasets: deterministic, in their real layout, readable, with plausible statistics."""

from __future__ import annotations

import hashlib
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from _synthetic import data_cfg
from PIL import Image
from skimage.filters import threshold_otsu

from pipeline.config import resolve
from pipeline.data import load_datalist
from pipeline.data.labels import fill_label_values
from pipeline.data.loaders import build_chain
from pipeline.data.synth import SYNTH_KINDS, make_dataset
from pipeline.data.synth.vessel2d import fundus
from pipeline.errors import DataError

SMALL = {"vessel2d": 64, "cell": 64, "vessel3d": (32, 32, 16), "lung": (32, 32, 16)}


def _digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.md5(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.mark.parametrize("kind", ["vessel2d", "vessel3d", "lung", "cell"])
def test_deterministic_and_readable_by_the_layout_reader(kind, tmp_path):
    a = make_dataset(kind, tmp_path / "a", n=2, seed=3, size=SMALL[kind])
    b = make_dataset(kind, tmp_path / "b", n=2, seed=3, size=SMALL[kind])
    assert _digest(a) == _digest(b)
    c = make_dataset(kind, tmp_path / "c", n=3, seed=3, size=SMALL[kind])
    da, dc = _digest(a), _digest(c)
    if kind in ("vessel3d", "lung"):  # case i does not depend on n
        assert (
            da["imagesTr/" + sorted(p.name for p in (a / "imagesTr").iterdir())[0]]
            == dc["imagesTr/" + sorted(p.name for p in (c / "imagesTr").iterdir())[0]]
        )
    assert _digest(make_dataset(kind, tmp_path / "d", n=2, seed=4, size=SMALL[kind])) != da
    splits = load_datalist(data_cfg({"format": SYNTH_KINDS.get(kind).format, "root": str(a), "val_fraction": 0.5}))
    assert len(splits["train"]) == 1 and len(splits["val"]) == 1


def test_vessel2d_drive_layout_statistics_and_otsu_fails():
    dices, fractions = [], []
    for seed in range(3):
        rgb, vessels, fov = fundus(np.random.default_rng(seed), 128)
        assert rgb.shape == (128, 128, 3) and rgb.dtype == np.uint8
        assert set(np.unique(vessels)) == {0, 255} and set(np.unique(fov)) == {0, 255}
        inside = fov > 0
        assert 0.55 < inside.mean() < 0.75  # a circle of radius 0.46 * size
        assert rgb[~inside].mean() < 10 and rgb[..., 0][inside].mean() > rgb[..., 2][inside].mean()
        fractions.append((vessels[inside] > 0).mean())
        green = rgb[..., 1].astype(float)
        pred = (green < threshold_otsu(green[inside])) & inside
        truth = vessels > 0
        dices.append(2 * (pred & truth).sum() / (pred.sum() + truth.sum()))
    assert all(0.04 < f < 0.25 for f in fractions), fractions  # DRIVE: ~12 % of the field of view
    assert max(dices) <= 0.75, dices  # thresholding does not solve it


def test_vessel2d_files_and_drive_test_split(tmp_path):
    root = make_dataset("vessel2d", tmp_path, n=4, seed=0, size=64)
    assert (root / "training/images/21_training.tif").is_file()
    assert (root / "test/1st_manual/01_manual1.gif").is_file() and (root / "test/mask/01_test_mask.gif").is_file()
    assert Image.open(root / "training/images/21_training.tif").mode == "RGB"
    splits = load_datalist(data_cfg({"format": "drive", "root": str(root)}))
    assert [d["case"] for d in splits["test"]] == ["01_test"] and len(splits["train"]) == 3
    cfg = {
        "data": {"format": "drive", "root": str(root)},
        "network": {"name": "unet", "spatial_dims": 2, "in_channels": 1, "out_channels": 2},
        "transforms": {"channels": [1]},
    }
    cfg = fill_label_values(resolve(cfg))  # the DRIVE layout's table: 0/255
    assert cfg["transforms"]["label_values"] == [0.0, 255.0]
    d = build_chain(cfg, "val")(splits["train"][0])
    assert d["image"].shape == d["label"].shape == d["fov"].shape == (1, 64, 64)
    assert set(np.unique(d["label"])) == {0.0, 1.0}


def test_lung_ct_has_realistic_hu_and_labels(tmp_path):
    root = make_dataset("lung", tmp_path, n=1, seed=1, size=(48, 48, 24))
    img = nib.load(str(root / "imagesTr/lung_001.nii.gz"))
    lab = np.asarray(nib.load(str(root / "labelsTr/lung_001.nii.gz")).dataobj)
    hu = np.asarray(img.dataobj)
    assert hu.dtype == np.int16 and set(np.unique(lab)) <= {0, 1, 2}
    zooms = img.header.get_zooms()
    assert zooms[2] > 1.5 * zooms[0]  # anisotropic
    assert np.median(hu[0]) < -900  # air at the edge of the field of view
    assert -950 < np.median(hu[lab == 1]) < -700  # aerated lung parenchyma
    assert 0.03 < (lab == 1).mean() < 0.35
    assert hu.max() > 300  # bone
    body = (hu > -300) & (lab == 0)
    assert -150 < np.median(hu[body]) < 120  # fat and soft tissue


def test_vessel3d_vessels_are_brighter_than_liver(tmp_path):
    root = make_dataset("vessel3d", tmp_path, n=1, seed=2, size=(48, 48, 24))
    hu = np.asarray(nib.load(str(root / "imagesTr/hepaticvessel_001.nii.gz")).dataobj).astype(float)
    lab = np.asarray(nib.load(str(root / "labelsTr/hepaticvessel_001.nii.gz")).dataobj)
    assert set(np.unique(lab)) == {0, 1} and 0.0005 < lab.mean() < 0.05
    assert np.median(hu[lab == 1]) > 130  # contrast-filled vessels (liver ~100 HU)
    assert np.median(hu[0]) < -900  # air at the edge of the field of view


def test_cell_masks_tile_the_nuclei(tmp_path):
    root = make_dataset("cell", tmp_path, n=1, seed=0, size=64)
    case = next((root / "stage1_train").iterdir())
    image = Image.open(case / "images" / f"{case.name}.png")
    assert image.mode == "RGBA" and image.size == (64, 64)
    masks = np.stack([np.asarray(Image.open(m)) for m in sorted((case / "masks").iterdir())])
    assert masks.shape[0] >= 3 and set(np.unique(masks)) == {0, 255}
    assert masks.astype(bool).sum(0).max() == 1  # one nucleus per pixel
    grey = np.asarray(image)[..., 0].astype(float)
    inside = masks.any(0)
    assert grey[inside].mean() > 2 * grey[~inside].mean()  # nuclei are bright
    d = build_chain(
        resolve({"network": {"name": "unet", "spatial_dims": 2, "in_channels": 3, "out_channels": 2}}), "val"
    )(load_datalist(data_cfg({"format": "dsb2018", "root": str(root), "val_fraction": 0.0}))["train"][0])
    assert int(d["instance"].max()) == masks.shape[0] and set(np.unique(d["label"])) == {0.0, 1.0}


def test_refuses_a_non_empty_folder_unless_overwrite(tmp_path):
    (tmp_path / "notes.txt").write_text("keep me")
    with pytest.raises(DataError, match="folder is not empty; choose another or pass --overwrite"):
        make_dataset("cell", tmp_path, n=1, size=64)
    make_dataset("cell", tmp_path, n=2, size=64, overwrite=True)
    make_dataset("cell", tmp_path, n=1, size=64, overwrite=True)
    assert len(list((tmp_path / "stage1_train").iterdir())) == 1  # the old cases are gone
    assert (tmp_path / "notes.txt").read_text() == "keep me"
    with pytest.raises(
        ValueError, match=r"unknown synthetic kind 'xray'\. Options: cell, cell3d, lung, vessel2d, vessel3d"
    ):
        make_dataset("xray", tmp_path / "x", n=1)
    with pytest.raises(ValueError, match=r"kind 'cell' takes no option\(s\) 'n_test'"):
        make_dataset("cell", tmp_path / "z", n=1, n_test=2)
    with pytest.raises(ValueError, match="size for a 3D kind must be an int or three ints >= 16"):
        make_dataset("lung", tmp_path / "y", n=1, size=(8, 8))


def test_a_failed_write_leaves_no_half_written_dataset(tmp_path, monkeypatch):
    import pipeline.data.synth.cell as cell

    real, calls = cell.nuclei, []

    def broken(rng, size):  # the second case fails, after the first was written
        calls.append(1)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        return real(rng, size)

    monkeypatch.setattr(cell, "nuclei", broken)
    with pytest.raises(OSError, match="No space left"):
        make_dataset("cell", tmp_path / "cells", n=3, size=48)
    assert not (tmp_path / "cells").exists()
