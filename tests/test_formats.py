"""NRRD / MetaImage / DICOM through pipeline.io: each format read and written with its geometry,
DICOM series edge cases, on real files shipped in packages (nibabel's MR volumes, one oblique;
pydicom's CT and MR slices) and on series written here with pydicom."""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

pytest.importorskip("itk")
pydicom = pytest.importorskip("pydicom")

from _dicom import write_series  # noqa: E402
from nibabel.testing import data_path  # noqa: E402
from pydicom.data import get_testdata_file  # noqa: E402

from pipeline.errors import DataError  # noqa: E402
from pipeline.io import (  # noqa: E402
    check_file,
    check_readable,
    file_kind,
    image_geometry,
    read_image,
    read_label,
    write_image,
    write_label,
)

TOL = 1e-5
ITK = (".nrrd", ".nhdr", ".mha", ".mhd")


def oblique() -> tuple[np.ndarray, np.ndarray]:
    """nibabel's ``example4d.nii.gz`` (a real MR scan, rotated oblique affine), its first volume
    cropped from the origin corner (so the affine is unchanged): int16 X Y Z and the affine."""
    img = nib.load(str(Path(data_path) / "example4d.nii.gz"))
    return np.asarray(img.dataobj)[:40, :32, :12, 0], np.asarray(img.affine, dtype=np.float64)


def right_handed(volume: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The same voxels in the world with Z reversed if the grid is left-handed: the order a DICOM
    reader (this one, ITK, dcm2niix) gives, slices ascending along row x column."""
    if np.linalg.det(affine[:3, :3]) > 0:
        return volume, affine
    flip = nib.orientations.inv_ornt_aff([[0, 1], [1, 1], [2, -1]], volume.shape)
    return volume[:, :, ::-1], affine @ flip


def world(affine: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    grid = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), -1).reshape(-1, 3)
    return grid @ affine[:3, :3].T + affine[:3, 3]


# ------------------------------------------------------------------------------ NRRD / MHA


@pytest.mark.parametrize("suffix", ITK)
def test_itk_formats_keep_values_and_the_oblique_affine(tmp_path, suffix):
    volume, affine = oblique()
    path = write_image(tmp_path / f"mr{suffix}", volume, affine=affine)
    x = read_image(path, dtype=None)
    assert tuple(x.shape) == (1, *volume.shape) and np.array_equal(x[0].numpy(), volume)
    assert np.abs(x.affine.numpy() - affine).max() < TOL
    shape, header_affine = image_geometry(path)
    assert shape == volume.shape and np.abs(header_affine - affine).max() < TOL
    assert file_kind(path) == "itk" and check_readable(path) == path
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary left


@pytest.mark.parametrize("suffix", ITK)
def test_itk_labels_round_trip_and_convert_to_nifti(tmp_path, suffix):
    source = Path(data_path) / "anatomical.nii"  # a real MR volume, radiological (x flipped) affine
    affine = nib.load(str(source)).affine
    labels = (read_image(source)[0].numpy() > 50).astype(np.uint8) * 7
    path = write_label(tmp_path / f"l{suffix}", labels, like=source)
    got = read_label(path)
    assert got.array.dtype == np.uint8 and np.array_equal(got.array, labels)
    assert np.abs(got.affine - affine).max() < TOL and np.allclose(got.spacing, [2.0, 2.0, 2.0])
    back = write_label(tmp_path / "back.nii.gz", got.array, like=path)  # NIfTI from an ITK file's geometry
    assert np.abs(read_label(back).affine - affine).max() < TOL


def test_mhd_writes_its_data_file_before_the_header(tmp_path):
    write_label(tmp_path / "a.mhd", np.ones((3, 4, 5), np.uint8))
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names[0] == "a.mhd" and len(names) == 2 and names[1].startswith("a.")  # a.zraw beside it


def test_2d_mha_is_w_h_like_a_picture(tmp_path):
    wh = np.arange(12, dtype=np.float32).reshape(3, 4)
    path = write_image(tmp_path / "p.mha", wh, spacing=(0.5, 2.0))
    x = read_image(path)
    assert tuple(x.shape) == (1, 3, 4) and np.array_equal(x[0].numpy(), wh)
    assert read_label(write_label(tmp_path / "l.nrrd", wh.astype(np.uint8))).array.shape == (3, 4)


def test_mha_is_no_longer_refused_and_dicom_is_read_only(tmp_path):
    assert file_kind("x.mha") == "itk" and file_kind("x.nrrd") == "itk" and file_kind("x.dcm") == "dicom"
    with pytest.raises(ValueError, match="DICOM is read only"):
        write_image(tmp_path / "x.dcm", np.zeros((2, 2, 2)))
    with pytest.raises(ValueError, match="unknown label file type"):
        write_label(tmp_path / "x.dcm", np.zeros((2, 2, 2), np.uint8))
    (tmp_path / "plain").mkdir()
    with pytest.raises(DataError, match="not a file"):
        check_file(tmp_path / "plain")


def test_a_damaged_mha_is_one_line(tmp_path):
    bad = tmp_path / "bad.mha"
    header = b"ObjectType = Image\nNDims = 3\nDimSize = 4 4 4\nElementType = MET_UCHAR\nElementDataFile = LOCAL\n"
    bad.write_bytes(header + b"\0" * 10)  # 10 of the 64 voxels
    with pytest.raises(DataError, match="bad.mha: cannot read"):
        read_image(bad)


def test_no_nvimagecodec_noise_from_the_loader(caplog):
    from pipeline import io

    io._loader.cache_clear()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        io._loader(np.float32)
    assert not [w for w in caught if "nvImageCodec" in str(w.message)]
    assert "nvImageCodec" not in caplog.text


# ------------------------------------------------------------------------------ DICOM series


def test_series_from_an_oblique_nifti_round_trips(tmp_path):
    volume, affine = right_handed(*oblique())
    hu = volume.astype(np.float64) * 2 - 1024  # stored = (HU + 1024) / 2 with RescaleSlope 2
    write_series(tmp_path / "ct", hu, affine, slope=2.0, intercept=-1024.0)  # shuffled file names
    x = read_image(tmp_path / "ct", dtype=None)
    assert file_kind(tmp_path / "ct") == "dicom"
    assert tuple(x.shape) == (1, *volume.shape) and np.array_equal(x[0].numpy(), hu)
    assert np.abs(x.affine.numpy() - affine).max() < TOL
    shape, header_affine = image_geometry(tmp_path / "ct")
    assert shape == volume.shape and np.abs(header_affine - affine).max() < TOL


def test_a_left_handed_volume_comes_back_with_z_reversed_on_the_same_world_grid(tmp_path):
    volume, affine = oblique()
    assert np.linalg.det(affine[:3, :3]) < 0
    write_series(tmp_path / "ct", volume, affine, intercept=0.0)
    x = read_image(tmp_path / "ct", dtype=None)
    got = x.affine.numpy()
    assert np.array_equal(x[0].numpy(), volume[:, :, ::-1])
    points = world(got, volume.shape).reshape(*volume.shape, 3)[:, :, ::-1].reshape(-1, 3)
    assert np.abs(points - world(affine, volume.shape)).max() < 1e-4  # the same points in mm


def test_pydicom_ct_slice_in_hounsfield_units(tmp_path):
    path = Path(get_testdata_file("CT_small.dcm"))
    ds = pydicom.dcmread(path)
    x = read_image(path, dtype=None)
    hu = ds.pixel_array.T.astype(np.float64) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    assert tuple(x.shape) == (1, 128, 128, 1) and np.array_equal(x[0, ..., 0].numpy(), hu)
    dr, dc = (float(v) for v in ds.PixelSpacing)
    expected = np.diag([-dc, -dr, float(ds.SliceThickness), 1.0])  # axial, LPS -> RAS
    expected[:3, 3] = np.array([float(v) for v in ds.ImagePositionPatient]) * [-1, -1, 1]
    assert np.abs(x.affine.numpy() - expected).max() < TOL
    shutil.copy(path, tmp_path / "IM1")  # no suffix: found by the DICM magic
    assert file_kind(tmp_path) == "dicom" and np.array_equal(read_image(tmp_path, dtype=None).numpy(), x.numpy())


def test_pydicom_mr_folder_with_three_series_is_one_line():
    folder = Path(get_testdata_file("CT_small.dcm")).parent / "dicomdirtests" / "98892003" / "MR2"
    with pytest.raises(DataError, match=r"MR2: 3 DICOM series in one folder \(.*FAST.*\); put each series"):
        read_image(folder)


@pytest.fixture
def series(tmp_path):
    volume = np.arange(6 * 5 * 8, dtype=np.float64).reshape(6, 5, 8) - 100
    affine = np.diag([0.7, 0.7, 2.5, 1.0])
    affine[:3, 3] = [-20, 10, 30]
    return tmp_path / "s", volume, affine


def test_two_series_in_one_folder(series):
    folder, volume, affine = series
    write_series(folder, volume, affine, series_uid="1.2.3.4")
    write_series(folder / "other", volume, affine, series_uid="1.2.3.5")
    for f in (folder / "other").iterdir():
        f.rename(folder / f"b_{f.name}")
    (folder / "other").rmdir()
    with pytest.raises(DataError, match=r"2 DICOM series in one folder \(1\.2\.3\.4.*8 file\(s\); 1\.2\.3\.5"):
        read_image(folder)


def test_duplicated_slice(series):
    folder, volume, affine = series
    files = write_series(folder, volume, affine)
    shutil.copy(files[3], folder / "copy.dcm")
    with pytest.raises(DataError, match=r"duplicated slice: .* are both at"):
        check_readable(folder)


def test_missing_slice_names_the_gap(series):
    folder, volume, affine = series
    write_series(folder, volume, affine, skip=(4,), series_uid="9.9")
    with pytest.raises(DataError, match=r"series 9\.9\): 1 missing slice\(s\) between .* a gap of 5\.000 mm where"):
        read_image(folder)


def test_non_uniform_spacing_is_refused_not_resampled(series):
    folder, volume, affine = series
    files = write_series(folder, volume, affine, shuffle_seed=None)
    last = pydicom.dcmread(files[-1])
    last.ImagePositionPatient = [*list(last.ImagePositionPatient)[:2], float(last.ImagePositionPatient[2]) + 0.8]
    last.save_as(files[-1])
    with pytest.raises(DataError, match="non-uniform slice spacing: steps of 2.500 to 3.300 mm.*does not resample"):
        read_image(folder)


def test_a_stray_file_in_a_series_folder(series):
    folder, volume, affine = series
    write_series(folder, volume, affine)
    (folder / "notes.txt").write_text("scanned on tuesday")
    with pytest.raises(DataError, match=r"1 file\(s\) pydicom cannot read as DICOM: notes.txt"):
        read_image(folder)


def test_dicom_label_is_read_with_its_geometry(series):
    folder, volume, affine = series
    write_series(folder, (volume > 0) * 3.0, affine, intercept=0.0)
    label = read_label(folder)
    assert label.array.dtype == np.uint8 and set(np.unique(label.array)) == {0, 3}
    assert np.abs(label.affine - affine).max() < TOL and np.allclose(label.spacing, (0.7, 0.7, 2.5))
