"""Dataset layout readers and load_datalist, on tiny datasets written to tmp_path."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from _synthetic import data_cfg
from PIL import Image

from pipeline.data import load_datalist
from pipeline.data.layouts.drive import read_drive
from pipeline.data.layouts.dsb2018 import read_dsb2018
from pipeline.data.layouts.folders import read_folders
from pipeline.data.layouts.msd import read_msd
from pipeline.data.layouts.nnunet import read_nnunet
from pipeline.errors import ConfigError, DataError


def _nii(path: Path, shape=(4, 4, 3)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.zeros(shape, np.int16), np.eye(4)), str(path))
    return path


def _png(path: Path, shape=(6, 5), mode="L") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    channels = {"L": (), "RGB": (3,), "RGBA": (4,)}[mode]
    Image.fromarray(np.zeros(shape + channels, np.uint8), mode).save(path)
    return path


def _msd(root: Path, cases=("a_001", "a_002", "a_003"), label_missing=()) -> Path:
    training = []
    for c in cases:
        _nii(root / "imagesTr" / f"{c}.nii.gz")
        if c not in label_missing:
            _nii(root / "labelsTr" / f"{c}.nii.gz")
        training.append({"image": f"./imagesTr/{c}.nii.gz", "label": f"./labelsTr/{c}.nii.gz"})
    (root / "imagesTr" / "._a_001.nii.gz").write_bytes(b"\x00\x05\x16\x07 macOS resource fork")
    (root / "dataset.json").write_text(
        json.dumps({"modality": {"0": "CT"}, "labels": {"0": "background", "1": "vessel"}, "training": training})
    )
    return root


def test_msd_reads_relative_paths_and_skips_macos_forks(tmp_path):
    ds = read_msd(_msd(tmp_path))
    assert [d["case"] for d in ds.items] == ["a_001", "a_002", "a_003"]
    assert ds.items[0]["image"] == str((tmp_path / "imagesTr" / "a_001.nii.gz").resolve())
    assert ds.items[0]["label"].endswith("labelsTr/a_001.nii.gz")
    assert ds.labels == {0: "background", 1: "vessel"} and ds.channels == ["CT"]
    assert ds.test is None


def test_msd_lists_missing_labels_and_stray_files(tmp_path):
    root = _msd(tmp_path, label_missing=("a_002",))
    _nii(root / "labelsTr" / "orphan.nii.gz")
    with pytest.raises(
        DataError, match=r"1 images without a label: ./imagesTr/a_002.nii.gz; 1 labels without an image: orphan.nii.gz"
    ):
        read_msd(root)


def test_msd_unreadable_dataset_json(tmp_path):
    (tmp_path / "dataset.json").write_text("{not json")
    with pytest.raises(DataError, match=r"dataset.json: cannot read dataset.json \(Expecting property name"):
        read_msd(tmp_path)
    with pytest.raises(DataError, match="dataset.json not found"):
        read_msd(tmp_path / "nowhere")


def test_nnunet_stacks_channel_files_per_case(tmp_path):
    for c in ("p1", "p2"):
        for ch in range(2):
            _nii(tmp_path / "imagesTr" / f"{c}_{ch:04d}.nii.gz")
        _nii(tmp_path / "labelsTr" / f"{c}.nii.gz")
    (tmp_path / "imagesTr" / "._p1_0000.nii.gz").write_bytes(b"junk")
    meta = {"channel_names": {"0": "T2", "1": "ADC"}, "labels": {"background": 0, "zone": 1}, "file_ending": ".nii.gz"}
    (tmp_path / "dataset.json").write_text(json.dumps(meta))
    ds = read_nnunet(tmp_path)
    assert [d["case"] for d in ds.items] == ["p1", "p2"]
    assert [Path(p).name for p in ds.items[0]["image"]] == ["p1_0000.nii.gz", "p1_0001.nii.gz"]
    assert ds.labels == {0: "background", 1: "zone"} and ds.channels == ["T2", "ADC"]


def test_nnunet_reports_missing_channel_label_and_orphan(tmp_path):
    _nii(tmp_path / "imagesTr" / "p1_0000.nii.gz")
    _nii(tmp_path / "imagesTr" / "p2_0000.nii.gz")
    _nii(tmp_path / "imagesTr" / "p2_0001.nii.gz")
    _nii(tmp_path / "labelsTr" / "p2.nii.gz")
    _nii(tmp_path / "labelsTr" / "p9.nii.gz")
    (tmp_path / "dataset.json").write_text(
        json.dumps({"channel_names": {"0": "a", "1": "b"}, "file_ending": ".nii.gz"})
    )
    with pytest.raises(DataError) as info:
        read_nnunet(tmp_path)
    text = str(info.value)
    assert "1 cases without all 2 channel files: p1" in text
    assert "1 images without a label: p1_0000.nii.gz" in text
    assert "1 labels without an image: p9.nii.gz" in text


def _drive(root: Path, train=(21, 22, 23), test=(1, 2), drop_label=()) -> Path:
    for part, nums in (("training", train), ("test", test)):
        for n in nums:
            _png(root / part / "images" / f"{n:02d}_{part}.tif", mode="RGB")
            if n not in drop_label:
                _png(root / part / "1st_manual" / f"{n:02d}_manual1.gif")
            _png(root / part / "mask" / f"{n:02d}_{part}_mask.gif")
    return root


def test_drive_pairs_images_manuals_and_fov_masks(tmp_path):
    ds = read_drive(_drive(tmp_path))
    assert [d["case"] for d in ds.items] == ["21_training", "22_training", "23_training"]
    first = ds.items[0]
    assert first["label"].endswith("training/1st_manual/21_manual1.gif")
    assert first["fov"].endswith("training/mask/21_training_mask.gif")
    assert [d["case"] for d in ds.test] == ["01_test", "02_test"]
    assert ds.test[0]["fov"].endswith("test/mask/01_test_mask.gif")


def test_drive_missing_manual_and_load_datalist_uses_shipped_test(tmp_path):
    with pytest.raises(DataError, match=r"1 training images without a 1st_manual label: 22_training.tif"):
        read_drive(_drive(tmp_path / "a", drop_label=(22,)))
    root = _drive(tmp_path / "b", train=tuple(range(21, 31)))
    with pytest.warns(UserWarning, match="test_fraction=0.3 is ignored"):
        splits = load_datalist(
            data_cfg({"format": "drive", "root": str(root), "val_fraction": 0.2, "test_fraction": 0.3})
        )
    assert [d["case"] for d in splits["test"]] == ["01_test", "02_test"]
    assert len(splits["val"]) == 2 and len(splits["train"]) == 8


def _dsb(root: Path, cases=("aa11", "bb22"), masks=3) -> Path:
    for c in cases:
        _png(root / "stage1_train" / c / "images" / f"{c}.png", mode="RGBA")
        for m in range(masks):
            _png(root / "stage1_train" / c / "masks" / f"m{m}.png")
    return root


def test_dsb2018_lists_one_mask_per_nucleus_for_label_and_instance(tmp_path):
    ds = read_dsb2018(_dsb(tmp_path))
    assert [d["case"] for d in ds.items] == ["aa11", "bb22"]
    assert len(ds.items[0]["label"]) == 3 and ds.items[0]["instance"] == ds.items[0]["label"]
    assert read_dsb2018(tmp_path / "stage1_train").items == ds.items  # root may be stage1_train itself


def test_dsb2018_reports_images_without_masks_and_masks_without_images(tmp_path):
    _dsb(tmp_path, cases=("aa11",))
    _png(tmp_path / "stage1_train" / "cc33" / "images" / "cc33.png", mode="RGBA")
    _png(tmp_path / "stage1_train" / "dd44" / "masks" / "m.png")
    with pytest.raises(DataError, match=r"1 images without masks: cc33.png; 1 mask folders without an image: dd44"):
        read_dsb2018(tmp_path)


def test_folders_pair_by_stem_with_suffix_or_pattern(tmp_path):
    for c in ("c1", "c2"):
        _png(tmp_path / "images" / f"{c}.png")
        _png(tmp_path / "labels" / f"{c}_mask.png")
    ds = read_folders(tmp_path, label_suffix="_mask")
    assert [(d["case"], Path(d["label"]).name) for d in ds.items] == [("c1", "c1_mask.png"), ("c2", "c2_mask.png")]
    ds = read_folders(tmp_path, pattern=r"(?P<case>c\d)(_mask)?\.png")
    assert [d["case"] for d in ds.items] == ["c1", "c2"]
    with pytest.raises(DataError, match=r"needs a named group \(\?P<case>...\)"):
        read_folders(tmp_path, pattern=r"c\d")


def test_folders_errors_list_offending_files_with_a_count(tmp_path):
    for i in range(8):
        _png(tmp_path / "images" / f"x{i}.png")
    _png(tmp_path / "images" / "x0.tif")
    _png(tmp_path / "labels" / "x0.png")
    _png(tmp_path / "labels" / "y.png")
    with pytest.raises(DataError) as info:
        read_folders(tmp_path)
    text = str(info.value)
    assert "2 files with duplicate stems: x0.png, x0.tif" in text
    assert "7 images without a label: x1.png, x2.png, x3.png, x4.png, x5.png (+2 more)" in text
    assert "1 labels without an image: y.png" in text


def test_empty_dataset_and_bad_data_config(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    with pytest.raises(DataError, match="no cases found in the images/labels folders layout"):
        read_folders(tmp_path)
    with pytest.raises(ConfigError, match="data.root: missing"):
        load_datalist(data_cfg({"format": "folders"}))
    with pytest.raises(ConfigError, match=r"data.format: 'drvie' is not one of .* \(did you mean 'drive'\?\)"):
        data_cfg({"format": "drvie", "root": str(tmp_path)})


def test_load_datalist_splits_msd_with_folds(tmp_path):
    root = _msd(tmp_path, cases=tuple(f"a_{i:03d}" for i in range(10)))
    cfg = {"format": "msd", "root": str(root), "test_fraction": 0.2, "num_folds": 4}
    parts = [load_datalist(data_cfg({**cfg, "fold": f})) for f in range(4)]
    assert all(p["test"] == parts[0]["test"] for p in parts) and len(parts[0]["test"]) == 2
    assert sorted(d["case"] for p in parts for d in p["val"]) == sorted(
        d["case"] for d in parts[0]["train"] + parts[0]["val"]
    )
    with pytest.raises(ConfigError, match=r"data.fold: must be < data.num_folds \(4\), got 4"):
        data_cfg({**cfg, "fold": 4})
