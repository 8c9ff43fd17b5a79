"""Bad input through ``medseg train`` / ``medseg infer``: one line naming the file or key and the
problem, exit code 2, and nothing half-written (no run folder is left behind by a failed start)."""

from __future__ import annotations

import contextlib
import csv
import math
import os
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest
from _synthetic import tiny_config, write_config, write_folders, write_image
from PIL import Image

from pipeline.cli import main
from pipeline.config import load_config
from pipeline.engines import factory
from pipeline.engines.checkpoint import save_checkpoint


def _fails(capsys, argv: list[str], pattern: str) -> str:
    """Run ``medseg argv``: exit 2 and exactly one stderr line matching ``pattern``."""
    rc = main(argv)
    lines = capsys.readouterr().err.strip().splitlines()
    assert rc == 2, lines
    assert len(lines) == 1, lines
    assert re.search(pattern, lines[0]), lines[0]
    return lines[0]


def _train_fails(tmp_path, capsys, root: Path, pattern: str, dims: int = 2, **sections) -> None:
    run = tmp_path / "run"
    config = write_config(tmp_path / "cfg.yaml", tiny_config(root, run, dims=dims, **sections))
    _fails(capsys, ["train", "-c", config], pattern)
    assert not run.exists(), sorted(os.listdir(run))


@pytest.fixture
def data2d(tmp_path) -> Path:
    return write_folders(tmp_path / "data", n=6, size=40)


@pytest.fixture
def data3d(tmp_path) -> Path:
    return write_folders(tmp_path / "data", n=6, size=20, dims=3)


# ----------------------------------------------------------------------------------- 1. corrupt


def test_truncated_png_is_named(tmp_path, capsys, data2d):
    path = data2d / "images" / "case1.png"
    path.write_bytes(path.read_bytes()[:60])
    _train_fails(tmp_path, capsys, data2d, r"^medseg: error: \S+/images/case1\.png: cannot read \(.*truncated")


@pytest.mark.parametrize("keep", [100, 0.5], ids=["header", "data"])
def test_truncated_nifti_is_named(tmp_path, capsys, data3d, keep):
    path = data3d / "labels" / "case4.nii.gz"
    raw = path.read_bytes()
    path.write_bytes(raw[: keep if isinstance(keep, int) else int(len(raw) * keep)])
    _train_fails(
        tmp_path, capsys, data3d, r"\S+/labels/case4\.nii\.gz: cannot read \((not a NIfTI file|EOFError)", dims=3
    )


def test_data_error_inside_a_loader_worker_stays_one_line(tmp_path, capsys, data2d):
    # without a cache the file is first read in a DataLoader worker, which wraps the error in its traceback
    path = data2d / "images" / "case2.png"
    path.write_bytes(path.read_bytes()[:60])
    pattern = r"^medseg: error: \S+/case2\.png: cannot read"
    _train_fails(tmp_path, capsys, data2d, pattern, train={"cache": "none", "num_workers": 1})


# ----------------------------------------------------------------------------------- 2-4. content


def test_image_label_shape_mismatch(tmp_path, capsys, data2d):
    write_image(data2d / "labels" / "case2.png", np.zeros((40, 36), np.uint8))
    pattern = r"case2\.png: image shape \(40, 40\) differs from label \S+ shape \(36, 40\)"
    _train_fails(tmp_path, capsys, data2d, pattern)


def test_label_values_outside_the_classes(tmp_path, capsys, data2d):
    label = np.zeros((40, 40), np.uint8)
    label[5:9] = 2
    write_image(data2d / "labels" / "case3.png", label)
    _train_fails(tmp_path, capsys, data2d, r"labels/case3\.png: label values \{2\} are not the configured")


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nan_or_inf_intensities(tmp_path, capsys, data3d, bad):
    image = np.full((20, 20, 20), 100, np.float32)
    image[3, 4, 5] = bad
    write_image(data3d / "images" / "case2.nii.gz", image)
    _train_fails(tmp_path, capsys, data3d, r"images/case2\.nii\.gz: image has NaN or Inf intensities", dims=3)


# ----------------------------------------------------------------------------------- 5-6. layout


def test_empty_dataset(tmp_path, capsys):
    root = tmp_path / "data"
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    _train_fails(tmp_path, capsys, root, r"data: no cases found in the images/labels folders layout")


def test_empty_training_split(tmp_path, capsys):
    root = write_folders(tmp_path / "data", n=1, size=40)
    _train_fails(tmp_path, capsys, root, r"data: 1 cases leave no training case .*data\.val_fraction")


def test_image_without_a_label(tmp_path, capsys, data2d):
    (data2d / "labels" / "case3.png").unlink()
    _train_fails(tmp_path, capsys, data2d, r"data: 1 images without a label: case3\.png")


# ----------------------------------------------------------------------------------- 7-8. kind of file


def test_4d_volume_where_3d_is_expected(tmp_path, capsys, data3d):
    write_image(data3d / "images" / "case1.nii.gz", np.ones((20, 20, 20, 2), np.float32))
    _train_fails(tmp_path, capsys, data3d, r"images/case1\.nii\.gz: image has 2 channels \(a 4D volume\)", dims=3)


def test_2d_slice_where_3d_is_expected(tmp_path, capsys, data3d):
    write_image(data3d / "images" / "case1.nii.gz", np.ones((20, 20), np.float32))
    write_image(data3d / "labels" / "case1.nii.gz", np.ones((20, 20), np.uint8))
    _train_fails(tmp_path, capsys, data3d, r"case1\.nii\.gz: expected a 3D volume, got 2 spatial dims", dims=3)


def test_rgb_where_grey_is_expected(tmp_path, capsys, data2d):
    Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(data2d / "images" / "case2.png")
    _train_fails(tmp_path, capsys, data2d, r"images/case2\.png: image has 3 channels \(RGB\), expected 1")


def test_non_binary_mask_where_binary_is_expected(tmp_path, capsys, data2d):
    for i in range(6):  # a binary 0/255 dataset with one 0/128/255 mask
        label = np.asarray(Image.open(data2d / "labels" / f"case{i}.png")) * 255
        if i == 4:
            label[:3] = 128
        write_image(data2d / "labels" / f"case{i}.png", label)
    _train_fails(
        tmp_path,
        capsys,
        data2d,
        r"labels/case4\.png: label values \{128\} are not the configured transforms\.label_values",
        transforms={"label_values": [0, 255], "patch_size": [32, 32]},
    )


# ----------------------------------------------------------------------------------- 9. empty labels


def test_all_empty_labels_train_with_finite_losses(tmp_path, capsys, data2d):
    for i in range(6):
        write_image(data2d / "labels" / f"case{i}.png", np.zeros((40, 40), np.uint8))
    config = write_config(tmp_path / "cfg.yaml", tiny_config(data2d, tmp_path / "run"))
    with pytest.warns(UserWarning, match="Num foregrounds 0"):  # MONAI: crops cannot be centred on foreground
        assert main(["train", "-c", config]) == 0
    rows = list(csv.DictReader((tmp_path / "run" / "log.csv").open()))
    assert len(rows) == 2
    assert all(math.isfinite(float(r["train_loss"])) for r in rows)
    assert float(rows[-1]["val_dice"]) == 1.0  # nothing to find and nothing found
    assert (tmp_path / "run" / "checkpoints" / "last.pt").is_file()


# ----------------------------------------------------------------------------------- 10. memory


def _checkpoint(tmp_path, root) -> str:
    config = load_config(None, base=tiny_config(root, tmp_path / "unused"))
    network = factory.build_network(config)
    return str(save_checkpoint({"config": config, "network": network.state_dict()}, tmp_path / "model.pt"))


def test_out_of_memory_at_inference_names_the_file_and_what_helps(tmp_path, capsys, data2d, monkeypatch):
    import pipeline.engines.predictor as predictor

    def exhausted(*args, **kwargs):  # the CPU allocator's own message, as torch raises it
        raise RuntimeError(
            "[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate memory: "
            "you tried to allocate 549755813888 bytes. Error code 12 (Cannot allocate memory)"
        )

    monkeypatch.setattr(predictor, "predict", exhausted)
    out = tmp_path / "out"
    argv = ["infer", "--checkpoint", _checkpoint(tmp_path, data2d), "--input", str(data2d / "images"), "--output"]
    _fails(
        capsys,
        [*argv, str(out)],
        r"out of memory segmenting \S+/images/case0\.png \(shape \(1, 40, 40\), 0\.0 GiB .*transforms\.spacing",
    )
    assert not out.exists()  # no label map, and no empty folder left behind


def test_bad_file_at_inference_writes_nothing(tmp_path, capsys, data2d):
    (data2d / "images" / "case3.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    out = tmp_path / "out"
    argv = ["infer", "--checkpoint", _checkpoint(tmp_path, data2d), "--input", str(data2d / "images" / "case3.png")]
    _fails(capsys, [*argv, "--output", str(out)], r"images/case3\.png: cannot read")
    assert not out.exists()  # no label map, and no empty folder left behind


# ----------------------------------------------------------------------------------- 11. config keys


@pytest.mark.parametrize(
    ("where", "pattern"),
    [
        ("file", r"cfg\.yaml:\d+: train\.epoch: unknown key \(did you mean 'train\.epochs'\?\)"),
        ("set", r"--set train\.epoch=3: train\.epoch: unknown key \(did you mean 'train\.epochs'\?\)"),
        ("component", r"network\.chanels: network 'unet' has no argument 'chanels' \(did you mean 'channels'\?\)"),
        ("section", r"trian: unknown key \(did you mean 'train'\?\)"),
    ],
)
def test_unknown_or_mistyped_config_key(tmp_path, capsys, data2d, where, pattern):
    config = tiny_config(data2d, tmp_path / "run")
    extra: list[str] = []
    if where == "file":
        config["train"]["epoch"] = 3
    else:
        extra = {"set": "train.epoch=3", "component": "network.chanels=[2, 4]", "section": "trian.epochs=3"}[where]
        extra = ["--set", extra]
    _fails(capsys, ["train", "-c", write_config(tmp_path / "cfg.yaml", config), *extra], pattern)
    assert not (tmp_path / "run").exists()


# ----------------------------------------------------------------------------------- 12. output folder


def test_existing_run_is_not_overwritten_without_the_flag(tmp_path, capsys, data2d):
    run = tmp_path / "run"
    config = write_config(tmp_path / "cfg.yaml", tiny_config(data2d, run))
    assert main(["train", "-c", config]) == 0
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file() and p.name != ".medseg.lock"}
    capsys.readouterr()
    _fails(capsys, ["train", "-c", config], r"run already holds a run \(checkpoints, log\.csv.*--overwrite")
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file() and p.name != ".medseg.lock"} == before
    assert main(["train", "-c", config, "--overwrite", "--epochs", "1"]) == 0
    assert len(list(csv.DictReader((run / "log.csv").open()))) == 1


def test_output_folder_that_cannot_be_written(tmp_path, capsys, data2d):
    (tmp_path / "a_file").write_text("not a folder")
    config = write_config(tmp_path / "cfg.yaml", tiny_config(data2d, tmp_path / "a_file" / "run"))
    _fails(capsys, ["train", "-c", config], r"a_file/run: cannot write the run folder \(Not a directory\)")
    assert (tmp_path / "a_file").read_text() == "not a folder"


@contextlib.contextmanager
def _read_only(folder):
    """Make ``folder`` unwritable, for root too: root ignores permission bits, so as root the
    folder is made immutable (``chattr +i``; CI runs as root); otherwise ``chmod 500``."""
    if os.geteuid() != 0:
        folder.chmod(0o500)
        try:
            yield
        finally:
            folder.chmod(0o700)
        return
    done = subprocess.run(["chattr", "+i", str(folder)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.fail(f"chattr +i {folder} failed as root: {done.stderr.strip()}")
    try:
        yield
    finally:
        subprocess.run(["chattr", "-i", str(folder)], check=True)


def test_read_only_output_folder(tmp_path, capsys, data2d):
    locked = tmp_path / "locked"
    locked.mkdir()
    with _read_only(locked):
        config = write_config(tmp_path / "cfg.yaml", tiny_config(data2d, locked / "run"))
        _fails(
            capsys,
            ["train", "-c", config],
            r"locked/run: cannot write the run folder \((Permission denied|Operation not permitted)\)",
        )
        assert not (locked / "run").exists()


def test_failed_start_leaves_nothing_but_user_files(tmp_path, capsys, data2d):
    # the folder existed (with the user's notes) before a start that failed on a bad file
    run = tmp_path / "run"
    run.mkdir()
    (run / "notes.txt").write_text("mine")
    path = data2d / "images" / "case5.png"
    path.write_bytes(path.read_bytes()[:60])
    config = write_config(tmp_path / "cfg.yaml", tiny_config(data2d, run))
    _fails(capsys, ["train", "-c", config], r"case5\.png: cannot read")
    assert sorted(os.listdir(run)) == ["notes.txt"]
