"""LoadCased and label mapping: reading every format, and one clear DataError per bad input."""

from __future__ import annotations

import gzip
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from PIL import Image

from pipeline.errors import DataError
from pipeline.io import normalise_mode, read_image
from transforms.array import MapLabels, SelectChannels
from transforms.dictionary import LoadCased, MapLabelsd


def _nii(path: Path, data: np.ndarray, affine=None) -> str:
    nib.save(nib.Nifti1Image(data, np.eye(4) if affine is None else affine), str(path))
    return str(path)


def _img(path: Path, data: np.ndarray, mode=None) -> str:
    Image.fromarray(data, mode).save(path)
    return str(path)


@pytest.fixture
def grey(tmp_path) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (7, 5), dtype=np.uint8)


def test_2d_files_load_in_monai_orientation_with_gif_palettes_resolved(tmp_path, grey):
    mask = (grey > 128).astype(np.uint8) * 255
    rgb = np.dstack([grey, grey // 2, 255 - grey])
    d = LoadCased(reader=read_image, spatial_dims=2)(
        {
            "image": _img(tmp_path / "x.tif", rgb),
            "label": _img(tmp_path / "x.gif", mask),  # stored as a palette image: indices 0/1
            "fov": _img(tmp_path / "f.png", np.full_like(mask, 255)),
        }
    )
    assert d["image"].shape == (3, 5, 7)  # C W H, like MONAI's PILReader
    np.testing.assert_array_equal(d["image"][1].numpy(), (grey // 2).T)
    assert set(np.unique(d["label"].numpy())) == {0.0, 255.0}
    np.testing.assert_array_equal(d["label"][0].numpy(), mask.T)
    assert d["fov"].shape == (1, 5, 7) and d["label"].meta["filename_or_obj"].endswith("x.gif")


def test_rgba_and_palette_modes_are_normalised():
    rgba = Image.fromarray(np.zeros((3, 3, 4), np.uint8), "RGBA")
    assert normalise_mode(rgba).mode == "RGB"
    colour = Image.fromarray(
        np.dstack([np.full((3, 3), 200, np.uint8), np.zeros((3, 3), np.uint8)] + [np.zeros((3, 3), np.uint8)])
    ).convert("P")
    # a colour palette is read as its indices, one grey channel (pipeline.io: the same in every command)
    assert normalise_mode(colour).mode == "L"
    np.testing.assert_array_equal(np.asarray(normalise_mode(colour)), np.asarray(colour))


def test_mask_lists_become_instances_and_union(tmp_path):
    shape = (6, 8)
    paths = []
    for k, (r0, c0) in enumerate([(0, 0), (3, 4), (1, 5)]):
        m = np.zeros(shape, np.uint8)
        m[r0 : r0 + 3, c0 : c0 + 3] = 255
        paths.append(_img(tmp_path / f"m{k}.png", m))
    image = _img(tmp_path / "img.png", np.zeros(shape + (4,), np.uint8), "RGBA")
    d = LoadCased(reader=read_image, spatial_dims=2)({"image": image, "label": paths, "instance": list(paths)})
    inst = d["instance"][0].numpy().T  # back to H W
    assert d["image"].shape[0] == 3  # alpha dropped
    assert set(np.unique(inst)) == {0, 1, 2, 3}
    assert inst[0, 0] == 1 and inst[4, 5] == 2
    assert inst[3, 5] == 2 and inst[1, 6] == 3  # masks 2 and 3 overlap at row 3: the first wins
    np.testing.assert_array_equal(d["label"][0].numpy().T, (inst > 0).astype(np.float32))


def test_nifti_channel_lists_are_stacked(tmp_path):
    a = _nii(tmp_path / "c_0000.nii.gz", np.zeros((4, 5, 3), np.float32))
    b = _nii(tmp_path / "c_0001.nii.gz", np.ones((4, 5, 3), np.float32))
    lab = _nii(tmp_path / "c.nii.gz", np.zeros((4, 5, 3), np.uint8))
    d = LoadCased(reader=read_image, spatial_dims=3, image_channels=2)({"image": [a, b], "label": lab})
    assert d["image"].shape == (2, 4, 5, 3) and float(d["image"][1].mean()) == 1.0


# ------------------------------------------------------------------------------------- bad input


def test_truncated_nifti_names_the_file(tmp_path):
    good = tmp_path / "good.nii.gz"
    _nii(good, np.random.default_rng(0).normal(size=(20, 20, 20)).astype(np.float32))
    bad = tmp_path / "bad.nii.gz"
    bad.write_bytes(good.read_bytes()[:600])
    with pytest.raises(DataError, match=r"bad.nii.gz: cannot read \("):
        LoadCased(reader=read_image, spatial_dims=3)({"image": str(bad)})
    (tmp_path / "junk.nii.gz").write_bytes(gzip.compress(b"not a nifti header"))
    with pytest.raises(DataError, match=r"junk.nii.gz: cannot read"):
        LoadCased(reader=read_image, spatial_dims=3)({"image": str(tmp_path / "junk.nii.gz")})


def test_truncated_png_missing_file_and_unknown_suffix(tmp_path, grey):
    good = Path(_img(tmp_path / "g.png", np.random.default_rng(1).integers(0, 256, (64, 64), np.uint8)))
    bad = tmp_path / "t.png"
    bad.write_bytes(good.read_bytes()[: len(good.read_bytes()) // 2])
    with pytest.raises(DataError, match=r"t.png: cannot read \(OSError"):
        LoadCased(reader=read_image, spatial_dims=2)({"image": str(bad)})
    with pytest.raises(DataError, match=r"nope.png: file not found"):
        LoadCased(reader=read_image, spatial_dims=2)({"image": str(tmp_path / "nope.png")})
    (tmp_path / "x.xyz").write_bytes(b"1")
    with pytest.raises(DataError, match=r"x.xyz: unsupported file type"):
        LoadCased(reader=read_image, spatial_dims=2)({"image": str(tmp_path / "x.xyz")})


def test_shape_mismatch_names_both_files(tmp_path):
    img = _img(tmp_path / "a.png", np.zeros((6, 5), np.uint8))
    lab = _img(tmp_path / "a_lab.png", np.zeros((6, 4), np.uint8))
    with pytest.raises(DataError, match=r"a.png: image shape \(5, 6\) differs from label .*a_lab.png shape \(4, 6\)"):
        LoadCased(reader=read_image, spatial_dims=2)({"image": img, "label": lab})


def test_label_geometry_mismatch_in_3d(tmp_path):
    img = _nii(tmp_path / "i.nii.gz", np.zeros((4, 4, 4), np.float32))
    lab = _nii(tmp_path / "l.nii.gz", np.zeros((4, 4, 4), np.uint8), np.diag([2.0, 1, 1, 1]))
    with pytest.raises(DataError, match="i.nii.gz: image and label .*l.nii.gz have different affines"):
        LoadCased(reader=read_image, spatial_dims=3)({"image": img, "label": lab})


def test_nan_and_inf_intensities(tmp_path):
    data = np.zeros((4, 4, 4), np.float32)
    data[1, 2, 3] = np.nan
    with pytest.raises(DataError, match=r"n.nii.gz: image has NaN or Inf intensities"):
        LoadCased(reader=read_image, spatial_dims=3)({"image": _nii(tmp_path / "n.nii.gz", data)})


def test_4d_volume_and_rgb_where_one_channel_is_expected(tmp_path, grey):
    vol = _nii(tmp_path / "v4.nii.gz", np.zeros((4, 4, 4, 5), np.float32))
    with pytest.raises(DataError, match=r"v4.nii.gz: image has 5 channels \(a 4D volume\), expected 1"):
        LoadCased(reader=read_image, spatial_dims=3, image_channels=1)({"image": vol})
    rgb = _img(tmp_path / "c.png", np.dstack([grey] * 3))
    with pytest.raises(DataError, match=r"c.png: image has 3 channels \(RGB\), expected 1 .*transforms.channels"):
        LoadCased(reader=read_image, spatial_dims=2, image_channels=1)({"image": rgb})
    png = _img(tmp_path / "g.png", grey)
    with pytest.raises(DataError, match=r"g.png: expected a 3D volume, got 2 spatial dims"):
        LoadCased(reader=read_image, spatial_dims=3)({"image": png})
    lab = _img(tmp_path / "lab.png", np.dstack([grey, grey, 255 - grey]))
    with pytest.raises(DataError, match=r"lab.png: label has 3 different channels; expected one label map"):
        LoadCased(reader=read_image, spatial_dims=2)({"image": png, "label": lab})


def test_non_binary_masks_are_refused(tmp_path):
    m = np.zeros((6, 6), np.uint8)
    m[:2] = 128
    m[4:] = 255
    good = np.zeros((6, 6), np.uint8)
    good[2:4] = 255
    paths = [_img(tmp_path / "ok.png", good), _img(tmp_path / "half.png", m)]
    image = _img(tmp_path / "i.png", np.zeros((6, 6), np.uint8))
    with pytest.raises(DataError, match=r"half.png: mask is not binary \(values 0, 128, 255; expected 0/1 or 0/255\)"):
        LoadCased(reader=read_image, spatial_dims=2)({"image": image, "label": paths})
    label = torch.as_tensor(m[None].astype(np.float32))
    with pytest.raises(DataError, match=r"label values \{128, 255\} are not classes 0..1; set transforms.label_values"):
        MapLabels(None, 2)(label)


def test_label_mapping_strict_with_configured_values():
    raw = np.array([[[0, 255, 255], [0, 0, 255]]], dtype=np.float32)
    np.testing.assert_array_equal(MapLabels([0, 255], 2)(raw), (raw > 0).astype(np.float32))
    # no per-file 0/255 rule: without a table the values must already be classes (the dataset's
    # table comes from transforms.label_values or all its label files, pipeline.data.labels)
    with pytest.raises(DataError, match=r"label values \{255\} are not classes 0..1"):
        MapLabels(None, 2)(raw)
    three = np.array([[[0, 1, 2]]], dtype=np.float32)
    np.testing.assert_array_equal(MapLabels(None, 3)(three), three)
    with pytest.raises(
        DataError, match=r"label values \{2\} are not the configured transforms.label_values \['0', '1'\]"
    ):
        MapLabels([0, 1], 2)(three)
    with pytest.raises(DataError, match=r"label values \{3\} are not classes 0..2; set transforms.label_values"):
        MapLabelsd("label", None, 3)({"label": np.array([[[0, 3]]], np.float32)})
    with pytest.raises(ValueError, match=r"must list one value per class \(3 classes\)"):
        MapLabels([0, 1], 3)


def test_select_channels_names_the_file_when_a_channel_is_missing():
    from monai.data import MetaTensor

    x = MetaTensor(torch.zeros(1, 4, 4), meta={"filename_or_obj": "grey.png"})
    with pytest.raises(DataError, match=r"grey.png: image has 1 channel\(s\); transforms.channels \[1\] asks for more"):
        SelectChannels([1])(x)
    assert SelectChannels([2, 0])(torch.arange(3.0)[:, None, None].expand(3, 2, 2))[:, 0, 0].tolist() == [2.0, 0.0]
