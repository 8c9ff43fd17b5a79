"""pipeline.io: one reader and writer for every command (formats, W H order, raw values, atomic writes)."""

from __future__ import annotations

import os
import stat

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from pipeline.errors import ConfigError, DataError
from pipeline.io import (
    atomic_write,
    atomic_write_text,
    file_kind,
    list_label_files,
    pair_folders,
    read_image,
    read_label,
    read_mask,
    split_suffix,
    write_label,
)


@pytest.mark.parametrize(
    "name, expected",
    [
        ("liver_003.nii.gz", ("liver_003", ".nii.gz")),
        ("A.NII.GZ", ("A", ".NII.GZ")),
        ("a.b.nii", ("a.b", ".nii")),
        ("01_manual1.gif", ("01_manual1", ".gif")),
        ("x.tiff", ("x", ".tiff")),
        ("x.JPEG", ("x", ".JPEG")),
        ("notes.txt", ("notes", ".txt")),
        ("scan.mha", ("scan", ".mha")),
    ],
)
def test_split_suffix(name, expected):
    assert split_suffix(name) == expected


def test_file_kind():
    assert [file_kind(n) for n in ("a.nii", "b.nii.gz", "c.bmp", "d.jpg", "e.mha", "f.mnc", ".nii.gz", "README")] == [
        "nifti",
        "nifti",
        "2d",
        "2d",
        "itk",
        None,
        None,
        None,
    ]


def test_2d_labels_keep_raw_values_in_w_h_order(tmp_path):
    picture = np.zeros((6, 7), np.uint8)  # H=6 rows, W=7 columns
    picture[1:3, 2:5] = 255
    Image.fromarray(picture).save(tmp_path / "bin.png")
    Image.fromarray(picture).save(tmp_path / "bin.gif")  # GIF stores a grey palette, read back as grey levels
    three = picture.copy()
    three[5, 6] = 128
    Image.fromarray(three).save(tmp_path / "three.png")
    for name in ("bin.png", "bin.gif"):
        img = read_label(tmp_path / name)
        np.testing.assert_array_equal(img.array, picture.T)  # 0/255 stays 0/255: no per-file remapping
        assert img.spacing == (1.0, 1.0) and img.affine is None
    np.testing.assert_array_equal(read_label(tmp_path / "three.png").array, three.T)
    assert read_mask(tmp_path / "bin.gif").dtype == bool
    assert read_image(tmp_path / "bin.png").shape == (1, 7, 6)


def test_colour_palette_keeps_indices_and_rgb_is_rejected(tmp_path):
    idx = np.array([[0, 1], [2, 1]], np.uint8)
    img = Image.fromarray(idx, mode="P")
    img.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0] + [0] * (253 * 3))
    img.save(tmp_path / "voc.png")
    np.testing.assert_array_equal(read_label(tmp_path / "voc.png").array, idx.T)
    rgb = np.zeros((2, 2, 3), np.uint8)
    rgb[0, 0] = (255, 0, 0)
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    with pytest.raises(DataError, match=r"rgb\.png: colour label image \(mode RGB\)"):
        read_label(tmp_path / "rgb.png")


def test_nifti_spacing_and_checks(tmp_path):
    a = np.zeros((5, 6, 4), np.uint8)
    a[1:3, 2:4, 1:3] = 2
    affine = np.diag([0.5, 1.25, 3.0, 1.0])
    nib.save(nib.Nifti1Image(a, affine), tmp_path / "c.nii.gz")
    img = read_label(tmp_path / "c.nii.gz")
    np.testing.assert_array_equal(img.array, a)
    assert img.spacing == pytest.approx((0.5, 1.25, 3.0))
    np.testing.assert_allclose(img.affine, affine)
    nib.save(nib.Nifti1Image(a[..., :1].astype(np.float32), np.diag([0.7, 0.8, 2.0, 1.0])), tmp_path / "flat.nii")
    flat = read_label(tmp_path / "flat.nii")
    assert flat.array.shape == (5, 6) and flat.spacing == pytest.approx((0.7, 0.8))
    nib.save(nib.Nifti1Image(a * 0.3, affine), tmp_path / "prob.nii.gz")
    with pytest.raises(DataError, match=r"prob\.nii\.gz: label image holds non-integer values"):
        read_label(tmp_path / "prob.nii.gz")
    (tmp_path / "broken.nii.gz").write_bytes(b"not a nifti")
    with pytest.raises(DataError, match=r"broken\.nii\.gz: cannot read"):
        read_label(tmp_path / "broken.nii.gz")
    rotated = np.array([[0, -2.0, 0, 0], [0.5, 0, 0, 0], [0, 0, 3.0, 0], [0, 0, 0, 1]])  # 90 degrees about z
    nib.save(nib.Nifti1Image(a, rotated), tmp_path / "rot.nii.gz")
    assert read_label(tmp_path / "rot.nii.gz").spacing == pytest.approx((0.5, 2.0, 3.0))
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 3, 2), np.uint8), affine), tmp_path / "4d.nii.gz")
    with pytest.raises(DataError, match=r"4d\.nii\.gz: label image must be 2D or 3D, got 2 volumes"):
        read_label(tmp_path / "4d.nii.gz")


def test_write_label_round_trip(tmp_path):
    a = np.zeros((5, 6, 4), np.uint8)
    a[1:3, 2:4, 1:3] = 3
    write_label(tmp_path / "p.nii.gz", a, spacing=(0.5, 1.5, 2.0))
    img = read_label(tmp_path / "p.nii.gz")
    np.testing.assert_array_equal(img.array, a)
    assert img.spacing == pytest.approx((0.5, 1.5, 2.0))
    write_label(tmp_path / "p.png", a[..., 1])
    np.testing.assert_array_equal(read_label(tmp_path / "p.png").array, a[..., 1])
    assert Image.open(tmp_path / "p.png").size == (5, 6)  # W H in memory is a W-wide picture
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.nii.gz", "p.png"]  # no temp files left
    with pytest.raises(ValueError, match=r"\.gif holds labels up to 255, got 300"):
        write_label(tmp_path / "big.gif", np.full((2, 2), 300))
    with pytest.raises(ValueError, match=r"\.png labels must be 2D"):
        write_label(tmp_path / "vol.png", a)
    with pytest.raises(ValueError, match=r"unknown label file type 'x\.jpg'"):
        write_label(tmp_path / "x.jpg", a[..., 0])


# ------------------------------------------------------------------------------- atomic writes


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield 0o644
    os.umask(old)


def test_atomic_writes_get_the_umask_permissions(tmp_path, umask_022):
    atomic_write_text(tmp_path / "a.txt", "x")
    write_label(tmp_path / "l.png", np.zeros((3, 2), np.uint8))
    write_label(tmp_path / "l.nii.gz", np.zeros((3, 2, 2), np.uint8))
    assert {p.name: _mode(p) for p in tmp_path.iterdir()} == {"a.txt": 0o644, "l.png": 0o644, "l.nii.gz": 0o644}
    stale = tmp_path / ".b.txt.tmp"  # left by a killed write, with mkstemp's 0600
    stale.write_text("half")
    stale.chmod(0o600)
    atomic_write_text(tmp_path / "b.txt", "whole")
    assert (tmp_path / "b.txt").read_text() == "whole" and _mode(tmp_path / "b.txt") == 0o644
    assert not stale.exists()


def test_atomic_write_leaves_no_temp_file_and_the_old_file_on_failure(tmp_path, monkeypatch):
    target = tmp_path / "summary.json"
    target.write_text("old")
    with pytest.raises(RuntimeError, match="disk full"):
        with atomic_write(target, "w") as fh:
            assert fh.name == str(tmp_path / ".summary.json.tmp")  # the fault-injection tests rely on the name
            fh.write("new, half written")
            raise RuntimeError("disk full")
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["summary.json"]

    def broken_save(self, fh, *args, **kwargs):
        fh.write(b"\x89PNG half")
        raise OSError("No space left on device")

    monkeypatch.setattr(Image.Image, "save", broken_save)
    with pytest.raises(OSError, match="No space left"):
        write_label(tmp_path / "x.png", np.zeros((2, 2), np.uint8))
    with pytest.raises(ValueError):
        write_label(tmp_path / "neg.png", -np.ones((2, 2), np.int64))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["summary.json"]


def test_config_dump_checkpoint_and_report_write_through_the_helper(tmp_path, umask_022, monkeypatch):
    import torch

    from pipeline.config import dump_config
    from pipeline.engines.checkpoint import save_checkpoint
    from pipeline.engines.report import write_history

    dump_config({"seed": 1}, tmp_path / "config.yaml")
    save_checkpoint({"epoch": 1}, tmp_path / "last.pt")
    write_history([{"epoch": 1, "train_loss": 0.5}], tmp_path / "log.csv")
    assert {p.name: _mode(p) for p in tmp_path.iterdir()} == {n: 0o644 for n in ("config.yaml", "last.pt", "log.csv")}

    def broken_save(obj, fh, *args, **kwargs):
        fh.write(b"half")
        raise OSError("No space left on device")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="No space left"):
        save_checkpoint({"epoch": 2}, tmp_path / "last.pt")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.yaml", "last.pt", "log.csv"]


# ---------------------------------------------------------------------------- reported, not skipped


def test_multi_page_tiff_is_a_data_error_naming_file_and_pages(tmp_path):
    pages = [Image.fromarray(np.full((4, 5), v, np.uint8)) for v in (0, 1, 2)]
    pages[0].save(tmp_path / "stack.tif", save_all=True, append_images=pages[1:])
    with pytest.raises(DataError, match=r"stack\.tif: 3 pages \(a multi-page TIFF\); expected one 2D image"):
        read_image(tmp_path / "stack.tif")
    with pytest.raises(DataError, match=r"stack\.tif: 3 pages"):
        read_label(tmp_path / "stack.tif")


def test_dangling_symlink_is_named(tmp_path):
    (tmp_path / "labels").mkdir()
    Image.fromarray(np.zeros((2, 2), np.uint8)).save(tmp_path / "labels" / "a.png")
    (tmp_path / "labels" / "b.png").symlink_to(tmp_path / "gone.png")
    with pytest.raises(DataError, match=r"b\.png: dangling symbolic link"):
        read_image(tmp_path / "labels" / "b.png")
    with pytest.raises(DataError, match=r"labels: 1 dangling symbolic link\(s\): b\.png"):
        list_label_files(tmp_path / "labels")


# --------------------------------------------------------------------------------- label folders


def _touch(folder, *names):
    folder.mkdir(exist_ok=True)
    for name in names:
        Image.fromarray(np.zeros((2, 2), np.uint8)).save(folder / name)


def test_list_and_pair_by_case_regex(tmp_path):
    _touch(tmp_path / "pred", "01_test.png", "02_test.png")
    _touch(tmp_path / "label", "01_manual1.gif", "02_manual1.gif")
    _touch(tmp_path / "fov", "01_test_mask.gif", "02_test_mask.gif", "03_test_mask.gif")
    (tmp_path / "label" / "readme.txt").write_text("ignored")
    assert list(list_label_files(tmp_path / "label", r"^(\d+)_")) == ["01", "02"]
    pairs = pair_folders(tmp_path / "pred", tmp_path / "label", tmp_path / "fov", r"^(\d+)_")
    assert [(p.case, p.pred.name, p.label.name, p.fov.name) for p in pairs] == [
        ("01", "01_test.png", "01_manual1.gif", "01_test_mask.gif"),
        ("02", "02_test.png", "02_manual1.gif", "02_test_mask.gif"),
    ]
    with pytest.raises(DataError, match=r"2 label\(s\) in .*label without a prediction.*01_manual1\.gif.*case_regex"):
        pair_folders(tmp_path / "pred", tmp_path / "label")


def test_listing_errors(tmp_path):
    _touch(tmp_path / "dup", "a.png")
    (tmp_path / "dup" / "a.nii.gz").write_bytes(b"")  # listing does not read files
    with pytest.raises(DataError, match=r"a\.(png|nii\.gz) and a\.(png|nii\.gz) are both case 'a'"):
        list_label_files(tmp_path / "dup")
    _touch(tmp_path / "odd", "01_x.png", "mask.png")
    with pytest.raises(DataError, match=r"1 file\(s\) do not match case_regex '\^\(\\\\d\+\)_': mask\.png"):
        list_label_files(tmp_path / "odd", r"^(\d+)_")
    with pytest.raises(ConfigError, match=r"case_regex '\(' is not a valid regular expression"):
        list_label_files(tmp_path / "odd", "(")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"empty: no label images \(\.nii\.gz"):
        list_label_files(tmp_path / "empty")
    with pytest.raises(DataError, match=r"missing: not a directory"):
        list_label_files(tmp_path / "missing")


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
def test_a_nifti_header_claiming_more_data_than_the_file_holds_is_refused_before_reading(tmp_path, suffix):
    import gzip

    import nibabel as nib

    from pipeline.errors import DataError
    from pipeline.io import read_image

    header = nib.Nifti1Header()
    header.set_data_shape((2000, 2000, 1000))
    header.set_data_dtype(np.float32)
    raw = header.binaryblock + bytes(4) + bytes(4096)
    path = tmp_path / f"huge{suffix}"
    path.write_bytes(gzip.compress(raw) if suffix.endswith(".gz") else raw)
    # .nii: refused from the file size; .nii.gz past 4 GiB (no size in the gzip trailer): nibabel
    # refuses after decompressing what there is, also without allocating the 16 GB
    with pytest.raises(
        DataError, match=r"huge\.nii(\.gz)?: (truncated: its header describes \(2000, 2000, 1000\)|cannot read)"
    ):
        read_image(path)
    ok = tmp_path / f"ok{suffix}"
    nib.save(nib.Nifti1Image(np.ones((3, 4, 5), np.float32), np.eye(4)), str(ok))
    assert tuple(read_image(ok).shape) == (1, 3, 4, 5)
