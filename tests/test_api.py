"""The Python API (``from pipeline import Segmenter``), ``medseg infer --format`` with the input's
exact shape and affine for every format, and DICOM series through check-data / train / evaluate /
infer. Checkpoints are made without training (fresh weights), except in the one slow test."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from _synthetic import blob_case, tiny_config, write_config, write_folders
from nibabel.testing import data_path

from pipeline.cli import main
from pipeline.config import load_config
from pipeline.engines.checkpoint import save_checkpoint
from pipeline.engines.factory import build_network
from pipeline.errors import MedsegError
from pipeline.io import image_geometry, read_image, read_label, write_label

ROOT = Path(__file__).resolve().parents[1]
TOL = 1e-5


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)  # conftest's _restore_torch_threads puts the count back


def _checkpoint(base: Path, dims: int, **sections) -> Path:
    cfg = tiny_config(base / "data", base / "run", dims, **sections)
    config = load_config(write_config(base / "cfg.yaml", cfg))
    torch.manual_seed(0)
    network = build_network(config)
    with torch.no_grad():  # a head biased so both classes appear: label maps worth comparing
        last = [m for m in network.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Conv3d))][-1]
        last.bias[1] += 0.05
    return save_checkpoint({"config": config, "network": network.state_dict()}, base / "c.pt")


@pytest.fixture(scope="module")
def ckpt_3d(tmp_path_factory):
    base = tmp_path_factory.mktemp("api3d")
    return _checkpoint(
        base,
        3,
        transforms={"patch_size": [16, 16, 16], "num_samples": 1, "label_values": [0, 255], "spacing": [2.0, 2.0, 2.0]},
        infer={"overlap": 0.25, "sw_batch_size": 4, "device": "cpu", "roi_size": [16, 16, 16]},
    )


@pytest.fixture(scope="module")
def ckpt_2d(tmp_path_factory):
    base = tmp_path_factory.mktemp("api2d")
    return _checkpoint(base, 2, transforms={"patch_size": [32, 32], "num_samples": 1, "label_values": [0, 255]})


def readme_example() -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("## Python API", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


# ------------------------------------------------------------------------------ the API


def test_readme_example_runs(tmp_path, ckpt_3d):
    image_path = Path(data_path) / "anatomical.nii"  # a real MR volume
    volume = read_image(image_path)[0].numpy()
    scope = {"checkpoint": ckpt_3d, "image_path": image_path, "volume": volume}
    code = readme_example()
    assert len(code.strip().splitlines()) <= 5
    exec(compile(code, "README.md", "exec"), scope)
    assert scope["labels"].shape == volume.shape and set(np.unique(scope["labels"])) <= {0, 255}
    assert scope["probs"].shape == (2, *volume.shape) and scope["probs"].dtype == np.float32
    assert np.allclose(scope["probs"].sum(0), 1, atol=1e-4)


def test_predict_equals_infer_and_takes_arrays_tensors_metatensors(tmp_path, ckpt_3d):
    from pipeline import Segmenter

    image, _ = blob_case(np.random.default_rng(0), (21, 19, 17))
    affine = np.diag([2.0, 2.0, 2.0, 1.0])  # RAS, the network's spacing: nothing to resample
    affine[:3, 3] = [4.0, -3.0, 7.0]
    path = tmp_path / "in" / "v.nii.gz"
    path.parent.mkdir()
    nib.save(nib.Nifti1Image(image, affine), str(path))
    seg = Segmenter.from_checkpoint(ckpt_3d)
    labels = seg.predict(path)
    assert main(["infer", "--checkpoint", str(ckpt_3d), "--input", str(path), "--output", str(tmp_path / "out")]) == 0
    assert np.array_equal(read_label(tmp_path / "out" / "v.nii.gz").array, labels)
    assert 0 < (labels == 255).mean() < 1
    assert np.array_equal(seg.predict(image, spacing=(2.0, 2.0, 2.0)), labels)  # no channel axis
    assert np.array_equal(seg.predict(torch.from_numpy(image)[None]), labels)  # channel-first, default spacing
    assert np.array_equal(seg.predict(read_image(path)), labels)  # a MetaTensor with its affine
    proba = seg.predict_proba(image)
    assert proba.shape == (2, *image.shape) and np.array_equal(np.where(proba.argmax(0) == 1, 255, 0), labels)


def test_resampled_arrays_come_back_in_their_own_shape(ckpt_3d):
    from pipeline import Segmenter

    image, _ = blob_case(np.random.default_rng(1), (20, 14, 9))
    labels = Segmenter.from_checkpoint(ckpt_3d).predict(image, spacing=(1.0, 1.5, 3.0))
    assert labels.shape == image.shape


def test_api_refuses_bad_inputs_in_one_line(ckpt_2d, tmp_path):
    from pipeline import Segmenter

    seg = Segmenter.from_checkpoint(ckpt_2d)
    assert seg.predict(np.zeros((33, 29), np.float32)).shape == (33, 29)  # W H
    with pytest.raises(MedsegError, match=r"shape \(2, 3, 4, 5\) is neither 2D nor channel-first 2D"):
        seg.predict(np.zeros((2, 3, 4, 5)))
    with pytest.raises(MedsegError, match="spacing is for arrays"):
        seg.predict(tmp_path / "x.png", spacing=(1, 1))
    with pytest.raises(MedsegError, match=r"spacing \[1.0\]: expected 2 positive numbers"):
        seg.predict(np.zeros((8, 8)), spacing=(1,))
    with pytest.raises(MedsegError, match="cannot segment a list"):
        seg.predict([1, 2, 3])


# ------------------------------------------------------------------------------ infer --format


def _real_volumes(folder: Path) -> dict[str, Path]:
    """Real files shipped in packages: nibabel's MR volumes (one oblique), pydicom's CT slice, a
    series written from the oblique one, and an MHA of it."""
    from _dicom import write_series
    from pydicom.data import get_testdata_file
    from test_formats import oblique, right_handed

    folder.mkdir()
    shutil.copy(Path(data_path) / "anatomical.nii", folder / "anatomical.nii")
    volume, affine = oblique()
    nib.save(nib.Nifti1Image(volume, affine), str(folder / "oblique.nii.gz"))
    write_label(folder / "oblique.mha", volume.astype(np.int16), affine=affine)
    write_series(folder / "series", *right_handed(volume.astype(np.float64), affine))
    shutil.copy(get_testdata_file("CT_small.dcm"), folder / "ct_small.dcm")
    return {p.name: p for p in folder.iterdir()}


@pytest.mark.slow
@pytest.mark.parametrize("fmt", [None, "nii.gz", "nrrd", "mha"])
def test_infer_keeps_the_exact_shape_and_affine_in_every_format(tmp_path, ckpt_3d, fmt):
    pytest.importorskip("itk")
    pytest.importorskip("pydicom")
    inputs = _real_volumes(tmp_path / "in")
    out = tmp_path / "out"
    argv = ["infer", "--checkpoint", str(ckpt_3d), "--input", str(tmp_path / "in"), "--output", str(out)]
    assert main(argv + (["--format", fmt] if fmt else [])) == 0
    defaults = {"anatomical.nii": "anatomical.nii", "oblique.nii.gz": "oblique.nii.gz", "oblique.mha": "oblique.mha",
                "series": "series.nii.gz", "ct_small.dcm": "ct_small.nii.gz"}
    for name, source in inputs.items():
        stem = defaults[name].split(".")[0]
        target = out / (defaults[name] if fmt is None else f"{stem}.{fmt}")
        shape, affine = image_geometry(source)
        got_shape, got_affine = image_geometry(target)
        assert got_shape == shape, name
        assert np.abs(got_affine - affine).max() < TOL, name
        assert set(np.unique(read_label(target).array)) <= {0, 255}


def test_infer_format_for_2d_inputs(tmp_path, ckpt_2d, capsys):
    pytest.importorskip("itk")
    root = write_folders(tmp_path / "data", n=1, size=37, dims=2)
    image = root / "images" / "case0.png"
    reference = None
    for fmt in ("png", "tif", "nii.gz", "mha"):
        out = tmp_path / fmt
        argv = ["infer", "--checkpoint", str(ckpt_2d), "--input", str(image), "--output", str(out)]
        assert main([*argv, "--format", fmt]) == 0
        labels = read_label(out / f"case0.{fmt}").array
        assert labels.shape == (37, 37)
        reference = labels if reference is None else reference
        assert np.array_equal(labels, reference), fmt
    assert main(["infer", "--checkpoint", str(ckpt_2d), "--input", str(image), "--output", str(tmp_path / "x"),
                 "--format", "jpg"]) == 2
    assert "--format jpg: expected one of nii.gz, nii, nrrd, mha, mhd, png, tif" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_a_volume_as_a_picture_is_one_line(tmp_path, ckpt_3d, capsys):
    path = tmp_path / "in" / "v.nii.gz"
    path.parent.mkdir()
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 8), np.float32), np.eye(4)), str(path))
    argv = ["infer", "--checkpoint", str(ckpt_3d), "--input", str(path), "--output", str(tmp_path / "o")]
    assert main([*argv, "--format", "png"]) == 2
    assert "v.png: a 3D prediction of v.nii.gz cannot be a 2D picture; choose --format" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


# ------------------------------------------------------------------------------ DICOM end to end


@pytest.mark.slow
def test_dicom_series_folders_through_check_data_train_evaluate_infer(tmp_path, capsys):
    pytest.importorskip("pydicom")
    from _dicom import write_series

    affine = np.diag([0.8, 0.8, 1.5, 1.0])
    affine[:3, 3] = [-10.0, 20.0, 5.0]
    data = tmp_path / "data"
    slices = []
    for i in range(3):
        image, label = blob_case(np.random.default_rng(i), (20, 20, 12))
        slices.append(write_series(data / "images" / f"1.2.840.{i}", image * 4 - 1000, affine))  # UID-like names
        write_label(data / "labels" / f"1.2.840.{i}.nii.gz", label, affine=affine)
    cfg = tiny_config(
        data,
        tmp_path / "run",
        3,
        train={"epochs": 1},
        transforms={"patch_size": [16, 16, 8], "num_samples": 1, "label_values": [0, 1], "spacing": [1.0, 1.0, 1.5],
                    "intensity": {"mode": "window", "window": [-1000, 0]}},
        infer={"overlap": 0.25, "sw_batch_size": 2, "device": "cpu", "roi_size": [16, 16, 8]},
    )
    config = write_config(tmp_path / "cfg.yaml", cfg)
    assert main(["check-data", "-c", config]) == 0
    assert "3 case(s) checked, no problems" in capsys.readouterr().out
    assert main(["train", "-c", config]) == 0
    ckpt = tmp_path / "run" / "checkpoints" / "last.pt"
    assert main(["evaluate", "-c", config, "--checkpoint", str(ckpt), "--output", str(tmp_path / "eval"),
                 "--split", "val"]) == 0
    assert (tmp_path / "eval" / "summary.json").exists()
    series = data / "images" / "1.2.840.0"
    assert main(["infer", "--checkpoint", str(ckpt), "--input", str(series), "--output", str(tmp_path / "pred")]) == 0
    shape, got = image_geometry(tmp_path / "pred" / "1.2.840.0.nii.gz")
    assert shape == (20, 20, 12) and np.abs(got - affine).max() < TOL
    # a damaged series stops check-data with the series and the gap named
    slices[0][5].unlink()
    assert main(["check-data", "-c", config]) == 2
    out = capsys.readouterr().out
    gap = r"1 missing slice\(s\) between IM\d+\.dcm \(11\.000 mm\) and IM\d+\.dcm \(14\.000 mm\): a gap of 3\.000 mm"
    assert re.search(r"\[\w+ 1\.2\.840\.0\] .*1\.2\.840\.0 \(series [\d.]+\): " + gap, out), out


def test_dicom_seg_references_the_series_and_holds_the_labels(tmp_path, ckpt_3d, capsys):
    hd = pytest.importorskip("highdicom")
    pydicom = pytest.importorskip("pydicom")
    from _dicom import write_series

    affine = np.diag([1.6, 1.6, 2.5, 1.0])
    image, _ = blob_case(np.random.default_rng(3), (20, 18, 9))
    files = write_series(tmp_path / "in" / "ser", image * 4 - 1000, affine)
    argv = ["infer", "--checkpoint", str(ckpt_3d), "--input", str(tmp_path / "in" / "ser")]
    assert main([*argv, "--output", str(tmp_path / "seg"), "--format", "dcmseg"]) == 0
    assert main([*argv, "--output", str(tmp_path / "nii")]) == 0
    seg = hd.seg.segread(tmp_path / "seg" / "ser.seg.dcm")
    source = [pydicom.dcmread(f, stop_before_pixels=True) for f in files]
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == source[0].SeriesInstanceUID
    assert [s.SegmentLabel for s in seg.SegmentSequence] == ["label 255"]
    uids = [ds.SOPInstanceUID for ds in sorted(source, key=lambda ds: float(ds.ImagePositionPatient[2]))]
    frames = seg.get_pixels_by_source_instance(source_sop_instance_uids=uids, combine_segments=True)
    labels = read_label(tmp_path / "nii" / "ser.nii.gz").array
    assert 0 < (labels == 255).mean() < 1
    assert np.array_equal(np.transpose(frames, (2, 1, 0)) == 1, labels == 255)  # slices, rows, cols -> X Y Z
    nifti = tmp_path / "v.nii.gz"
    nib.save(nib.Nifti1Image(image, affine), str(nifti))
    assert main(["infer", "--checkpoint", str(ckpt_3d), "--input", str(nifti), "--output", str(tmp_path / "x"),
                 "--format", "dcmseg"]) == 2
    assert "--format dcmseg: a DICOM Segmentation references its source series; not DICOM: v.nii.gz" in (
        capsys.readouterr().err
    )
