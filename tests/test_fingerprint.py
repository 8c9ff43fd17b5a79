"""Tests of pipeline.data.fingerprint: layouts detected, per-case measurements, cache."""

from __future__ import annotations

import json
import os

import nibabel as nib
import numpy as np
import pytest

from pipeline.data.fingerprint import FINGERPRINT_FILE, compute_fingerprint, detect_format, fingerprint_summary
from pipeline.data.synth import SYNTH_KINDS, make_dataset
from pipeline.errors import DataError
from tests._synthetic import write_folders


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    """One small synthetic set per kind."""
    base = tmp_path_factory.mktemp("synth")
    sizes = {"vessel2d": 64, "cell": 64, "lung": (32, 32, 16), "vessel3d": (32, 32, 16)}
    return {k: make_dataset(k, base / k, n=3, seed=0, size=s) for k, s in sizes.items()}


def write_nnunet(root, n: int = 3, spacing=(0.8, 0.8, 4.0)):
    """A two-channel nnU-Net raw set (``CASE_0000``, ``CASE_0001``) with thick slices."""
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    affine = np.diag([*spacing, 1.0])
    rng = np.random.default_rng(0)
    for i in range(n):
        label = np.zeros((24, 20, 6), np.uint8)
        label[4:12, 5:15, 1:4] = 1
        label[14:20, 2:8, 2:5] = 2
        for c in range(2):
            image = rng.normal(100 * (c + 1), 5, label.shape).astype(np.float32) + 50 * (label > 0)
            nib.save(nib.Nifti1Image(image, affine), str(root / "imagesTr" / f"case{i}_{c:04d}.nii.gz"))
        nib.save(nib.Nifti1Image(label, affine), str(root / "labelsTr" / f"case{i}.nii.gz"))
    meta = {"channel_names": {"0": "T2", "1": "ADC"}, "labels": {"background": 0, "a": 1, "b": 2}}
    meta.update({"numTraining": n, "file_ending": ".nii.gz"})
    (root / "dataset.json").write_text(json.dumps(meta))
    return root


@pytest.mark.parametrize("kind", ["vessel2d", "cell", "lung", "vessel3d"])
def test_detects_synthetic_layouts(synth, kind):
    assert detect_format(synth[kind]) == SYNTH_KINDS.get(kind).format


def test_detects_nnunet_and_folders(tmp_path):
    assert detect_format(write_nnunet(tmp_path / "nn")) == "nnunet"
    assert detect_format(write_folders(tmp_path / "f", n=2, size=32)) == "folders"
    with pytest.raises(DataError, match=r"no known dataset layout .*pass --format"):
        detect_format(tmp_path)


def test_vessel2d_fingerprint_is_thin_and_in_loader_axis_order(synth):
    fp = compute_fingerprint(synth["vessel2d"], workers=0, progress=False)
    assert fp["format"] == "drive" and fp["spatial_dims"] == 2 and fp["channels"] == 3
    assert fp["median_shape"] == [64.0, 64.0] and fp["label_values"] == [0, 255]
    assert fp["skeleton_ratio_median"] > 0.2  # vessels a few pixels wide
    assert fp["intensity"][0]["modality"] == "unknown"
    st = fp["intensity"][1]
    assert st["p00_5"] <= st["mean"] <= st["p99_5"] and st["std"] > 0


def test_cell_fingerprint_counts_objects_and_touching(synth):
    fp = compute_fingerprint(synth["cell"], workers=0, progress=False)
    assert fp["format"] == "dsb2018" and fp["label_values"] == [0, 1]
    assert fp["instances_median"] >= 2 and 0.0 <= fp["touching_fraction_median"] < 1.0
    assert fp["skeleton_ratio_median"] < 0.2  # blobs, not lines
    assert fp["cases"][0]["components"]["1"] >= 1


def test_lung_fingerprint_is_ct_with_classes(synth):
    fp = compute_fingerprint(synth["lung"], workers=0, progress=False)
    assert fp["spatial_dims"] == 3 and fp["median_shape"] == [32.0, 32.0, 16.0]
    assert fp["intensity"][0]["modality"] == "CT"  # from HU values or dataset.json
    assert fp["intensity"][0]["p00_5"] < -500  # lung parenchyma in HU
    assert set(fp["class_frequency"]) == {str(v) for v in fp["label_values"]}
    assert abs(sum(fp["class_frequency"].values()) - 1.0) < 1e-9
    assert fp["axcodes"] == ["LPS"] and len(fp["spacings"]) == 3


def test_nnunet_fingerprint_channels_spacing_in_ras_order(tmp_path):
    root = write_nnunet(tmp_path / "nn")
    fp = compute_fingerprint(root, workers=0, progress=False)
    assert fp["format"] == "nnunet" and fp["channels"] == 2 and fp["label_values"] == [0, 1, 2]
    assert fp["median_spacing"] == pytest.approx([0.8, 0.8, 4.0])
    assert [st["modality"] for st in fp["intensity"]] == ["T2", "ADC"]
    # foreground statistics: channel 1 is 100 higher everywhere, and inside the labels +50
    assert fp["intensity"][1]["mean"] - fp["intensity"][0]["mean"] == pytest.approx(100, abs=3)
    assert fp["intensity"][0]["mean"] == pytest.approx(150, abs=3)
    assert fp["components_median"] == {"1": 1.0, "2": 1.0}


def test_reoriented_case_reports_ras_shape(tmp_path):
    """A case stored with its axes permuted (z, y, x voxel order) reports shape and spacing in RAS order."""
    root = tmp_path / "f"
    for sub in ("images", "labels"):
        (root / sub).mkdir(parents=True)
    affine = np.array([[0, 0, 0.5, 0], [0, 2.0, 0, 0], [3.0, 0, 0, 0], [0, 0, 0, 1]])
    data = np.zeros((5, 7, 9), np.float32)
    data[1:3, 2:4, 3:6] = 1
    nib.save(nib.Nifti1Image(data, affine), str(root / "images" / "a.nii.gz"))
    nib.save(nib.Nifti1Image(data.astype(np.uint8), affine), str(root / "labels" / "a.nii.gz"))
    fp = compute_fingerprint(root, "folders", workers=0, progress=False)
    assert fp["cases"][0]["shape"] == [9, 7, 5] and fp["cases"][0]["spacing"] == [0.5, 2.0, 3.0]
    assert fp["cases"][0]["foreground_bbox"] == [3, 2, 2]


def test_parallel_equals_serial_and_cache_is_keyed_on_files(synth, tmp_path):
    root = synth["vessel3d"]
    serial = compute_fingerprint(root, workers=0, progress=False)
    parallel = compute_fingerprint(root, workers=2, output_dir=tmp_path, progress=False)
    assert (tmp_path / FINGERPRINT_FILE).is_file()
    for key in ("median_shape", "median_spacing", "intensity", "class_frequency", "skeleton_ratio_median"):
        assert serial[key] == parallel[key], key
    cached = json.loads((tmp_path / FINGERPRINT_FILE).read_text())
    cached["median_shape"] = [1, 2, 3]  # a cache hit returns the file's content
    (tmp_path / FINGERPRINT_FILE).write_text(json.dumps(cached))
    assert compute_fingerprint(root, output_dir=tmp_path, progress=False)["median_shape"] == [1, 2, 3]
    label = next((root / "labelsTr").iterdir())
    os.utime(label, ns=(label.stat().st_atime_ns, label.stat().st_mtime_ns + 10**9))
    assert compute_fingerprint(root, output_dir=tmp_path, workers=0, progress=False)["median_shape"] == [32.0] * 2 + [
        16.0
    ]


def test_progress_line_and_summary(synth, capsys):
    fp = compute_fingerprint(synth["cell"], workers=0, progress=True)
    assert "fingerprint: 3/3 cases" in capsys.readouterr().err
    text = fingerprint_summary(fp)
    assert "3 cases, dsb2018 layout, 2D" in text and "objects per case" in text
