"""3-class encoding and distance maps from instance ids (transforms.instances, pipeline.instances.targets)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from scipy import ndimage

from pipeline.instances.targets import BORDER, INTERIOR, boundary_distance, instance_classes
from transforms.instances import InstanceTargetsd


def _two_touching_squares() -> np.ndarray:
    ids = np.zeros((7, 10), np.int32)
    ids[1:6, 1:5] = 3  # ids need not be 1..n
    ids[1:6, 5:9] = 7
    return ids


def test_three_classes_of_two_touching_squares():
    expected = np.array(
        [
            [0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            [0, 2, 2, 2, 2, 2, 2, 2, 2, 0],
            [0, 2, 1, 1, 2, 2, 1, 1, 2, 0],
            [0, 2, 1, 1, 2, 2, 1, 1, 2, 0],
            [0, 2, 1, 1, 2, 2, 1, 1, 2, 0],
            [0, 2, 2, 2, 2, 2, 2, 2, 2, 0],
            [0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        ]
    )
    np.testing.assert_array_equal(instance_classes(_two_touching_squares()), expected)


def test_touching_border_only_where_objects_meet():
    ids = _two_touching_squares()
    ids[1:6, 5:9] = 0
    ids[2:4, 5:7] = 7  # touches object 3 on two rows only
    ids[0:2, 8:10] = 9  # isolated (no other object within 2 px)
    classes = instance_classes(ids, border="touching")
    assert not (classes[ids == 9] == BORDER).any()
    border = np.argwhere(classes == BORDER)
    assert set(map(tuple, border)) == {(2, 4), (3, 4), (2, 5), (3, 5)}
    assert (classes[(ids > 0)] > 0).all() and (classes[ids == 0] == 0).all()


def test_wider_border_in_physical_units():
    ids = _two_touching_squares()
    # 0.5 px per unit along x: a 1.0 width reaches 2 px into each object along x, 1 px along y
    classes = instance_classes(ids, border_width=1.0, spacing=(1.0, 0.5))
    assert (classes[3] == [0, 2, 2, 2, 2, 2, 2, 2, 2, 0]).all()
    assert (classes[:, 2] == [0, 2, 2, 2, 2, 2, 0]).all()
    assert (classes == INTERIOR).sum() == 0
    assert (instance_classes(ids, border_width=2.0) == INTERIOR).sum() == 0  # 4 px wide: all border


@pytest.mark.parametrize("spacing", [None, (1.0, 2.0, 0.5)])
def test_distance_equals_per_object_scipy_in_3d(spacing):
    rng = np.random.default_rng(0)
    ids = np.zeros((12, 14, 16), np.int32)
    ids[1:8, 1:9, 2:12] = 1
    ids[5:11, 6:13, 4:15] = 2  # overlaps and overrides 1: a contact surface
    ids[rng.random(ids.shape) < 0.02] = 0  # holes
    got = boundary_distance(ids, spacing)
    want = np.zeros(ids.shape, np.float32)
    for k in (1, 2):
        d = ndimage.distance_transform_edt(ids == k, sampling=spacing)
        want[ids == k] = d[ids == k]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    norm = boundary_distance(ids, spacing, normalise=True)
    assert norm.min() == 0 and (norm[ids == 0] == 0).all()
    for k in (1, 2):
        assert norm[ids == k].max() == pytest.approx(1.0)
        np.testing.assert_allclose(norm[ids == k], want[ids == k] / want[ids == k].max(), rtol=1e-5)


def test_3d_classes_have_interior_and_border():
    ids = np.zeros((10, 10, 10), np.int32)
    ids[1:5, 1:9, 1:9], ids[5:9, 1:9, 1:9] = 1, 2
    classes = instance_classes(ids)
    assert (classes[4, 2:8, 2:8] == BORDER).all() and (classes[5, 2:8, 2:8] == BORDER).all()
    assert (classes[2:4, 2:8, 2:8] == INTERIOR).all()


def test_empty_map_is_all_background():
    assert not instance_classes(np.zeros((4, 4), int)).any()
    assert not boundary_distance(np.zeros((4, 4), int), normalise=True).any()


def test_dictionary_transform_keeps_meta_and_layout():
    ids = torch.as_tensor(_two_touching_squares(), dtype=torch.float32)[None]
    affine = torch.diag(torch.tensor([0.5, 0.5, 1.0, 1.0]))
    img = MetaTensor(ids, affine=affine)
    out = InstanceTargetsd("instance", classes_key="label", distance_key="dist_i")({"instance": img, "image": 1})
    assert isinstance(out["label"], MetaTensor) and out["label"].dtype == torch.float32
    assert torch.equal(out["label"].affine, img.affine) and out["label"].shape == (1, 7, 10)
    np.testing.assert_array_equal(out["label"][0].numpy(), instance_classes(_two_touching_squares()))
    assert out["dist_i"].shape == (1, 7, 10) and float(out["dist_i"].max()) == 1.0
    assert out["image"] == 1 and out["instance"] is img
    only = InstanceTargetsd("instance", distance_key=None)({"instance": img})
    assert "instance_dist" not in only and "label" in only


def test_bad_settings_raise():
    with pytest.raises(ValueError, match="border_width must be > 0, got 0"):
        instance_classes(np.zeros((2, 2), int), border_width=0)
    with pytest.raises(ValueError, match=r"border must be one of \['all', 'touching'\], got 'inner'"):
        InstanceTargetsd("instance", border="inner")
    with pytest.raises(ValueError, match="both are None"):
        InstanceTargetsd("instance", classes_key=None, distance_key=None)
    with pytest.raises(ValueError, match=r"one channel, 1 H W \[D\], got shape \(2, 4, 4\)"):
        InstanceTargetsd("instance")({"instance": torch.zeros(2, 4, 4)})
    with pytest.raises(ValueError, match=r"spacing must be 2 positive values"):
        boundary_distance(np.ones((3, 3), int), spacing=(1.0, 0.0))


def test_dsb2018_case_loads_into_targets(tmp_path):
    from _synthetic import data_cfg

    from pipeline.data.datalist import load_datalist
    from pipeline.data.synth import make_dataset
    from pipeline.instances.metrics import match
    from pipeline.instances.postprocess import instances_from_classes
    from pipeline.io import read_image
    from transforms.dictionary import LoadCased

    root = make_dataset("cell", tmp_path / "dsb", n=2, size=64, seed=0)
    item = load_datalist(data_cfg({"format": "dsb2018", "root": str(root), "val_fraction": 0.5}))["train"][0]
    data = InstanceTargetsd("instance")(
        LoadCased(reader=read_image)(item)
    )  # masks/*.png -> id map -> 3 classes in `label`
    classes = data["label"][0].numpy().astype(int)
    ids = data["instance"][0].numpy().astype(int)
    assert set(np.unique(classes)) == {0, 1, 2} and ids.max() >= 2
    assert match(ids, instances_from_classes(classes, min_size=0))["ap"][0] == 1.0
