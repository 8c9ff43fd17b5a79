from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from pipeline.errors import ConfigError, DataError
from pipeline.io import list_label_files, pair_folders, read_label, read_mask, split_suffix, write_label


@pytest.mark.parametrize(
    "name, expected",
    [
        ("liver_003.nii.gz", ("liver_003", ".nii.gz")),
        ("A.NII.GZ", ("A", ".NII.GZ")),
        ("a.b.nii", ("a.b", ".nii")),
        ("01_manual1.gif", ("01_manual1", ".gif")),
        ("x.tiff", ("x", ".tiff")),
        ("notes.txt", None),
        (".nii.gz", None),
    ],
)
def test_split_suffix(name, expected):
    assert split_suffix(name) == expected


def test_png_0_255_maps_to_0_1_only_for_exactly_that_set(tmp_path):
    a = np.zeros((6, 7), np.uint8)
    a[1:3, 2:5] = 255
    Image.fromarray(a).save(tmp_path / "bin.png")
    Image.fromarray(a).save(tmp_path / "bin.gif")  # GIF stores a grey palette, read back as grey levels
    b = a.copy()
    b[5, 6] = 2
    Image.fromarray(b).save(tmp_path / "multi.png")
    for name in ("bin.png", "bin.gif"):
        img = read_label(tmp_path / name)
        np.testing.assert_array_equal(img.array, a // 255)
        assert img.spacing == (1.0, 1.0) and img.affine is None
    np.testing.assert_array_equal(read_label(tmp_path / "multi.png").array, b)
    assert read_mask(tmp_path / "bin.gif").dtype == bool


def test_colour_palette_keeps_indices_and_rgb_is_rejected(tmp_path):
    idx = np.array([[0, 1], [2, 1]], np.uint8)
    img = Image.fromarray(idx, mode="P")
    img.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0] + [0] * (253 * 3))
    img.save(tmp_path / "voc.png")
    np.testing.assert_array_equal(read_label(tmp_path / "voc.png").array, idx)
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
    with pytest.raises(DataError, match=r"broken\.nii\.gz: cannot read label image"):
        read_label(tmp_path / "broken.nii.gz")


def test_write_label_round_trip(tmp_path):
    a = np.zeros((5, 6, 4), np.uint8)
    a[1:3, 2:4, 1:3] = 3
    write_label(tmp_path / "p.nii.gz", a, spacing=(0.5, 1.5, 2.0))
    img = read_label(tmp_path / "p.nii.gz")
    np.testing.assert_array_equal(img.array, a)
    assert img.spacing == pytest.approx((0.5, 1.5, 2.0))
    write_label(tmp_path / "p.png", a[..., 1])
    np.testing.assert_array_equal(read_label(tmp_path / "p.png").array, a[..., 1])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.nii.gz", "p.png"]  # no temp files left
    with pytest.raises(ValueError, match=r"\.gif holds labels up to 255, got 300"):
        write_label(tmp_path / "big.gif", np.full((2, 2), 300))
    with pytest.raises(ValueError, match=r"\.png labels must be 2D"):
        write_label(tmp_path / "vol.png", a)


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
