"""Signed distance maps: the EDT core (transforms/_distance.py) and SignedDistanceMap[d]."""

from __future__ import annotations

import types

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.losses import BoundaryLoss
from monai.transforms import Compose, RandCropByPosNegLabeld, RandFlipd, RandRotated, RandZoomd
from scipy.ndimage import distance_transform_edt

from transforms import _distance
from transforms.array import SignedDistanceMap
from transforms.dictionary import SignedDistanceMapd
from transforms.keys import DIST, LABEL

CPU_BACKENDS = ["edt", "scipy"]


def reference_sdm(mask: np.ndarray, spacing=None) -> np.ndarray:
    """The convention written out with scipy: -(d_in - h) inside, d_out outside, 0 if empty/full."""
    mask = mask.astype(bool)
    if not mask.any() or mask.all():
        return np.zeros(mask.shape)
    sp = spacing if spacing is not None else (1.0,) * mask.ndim
    inside = distance_transform_edt(mask, sampling=sp)
    outside = distance_transform_edt(~mask, sampling=sp)
    return np.where(mask, min(sp) - inside, outside)


def random_blobs(shape, seed, n=3):
    rng = np.random.default_rng(seed)
    grid = np.indices(shape)
    mask = np.zeros(shape, bool)
    for _ in range(n):
        centre = rng.uniform(0, shape)
        radius = rng.uniform(2, min(shape) / 3)
        mask |= (((grid - centre.reshape(-1, *[1] * len(shape))) ** 2).sum(0)) < radius**2
    return mask


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_hand_made_row(backend):
    # row [0, 0, 1, 1]: outside 2, 1; inner boundary 0; one voxel deeper -1
    mask = np.array([[0, 0, 1, 1]], bool)
    np.testing.assert_allclose(_distance.signed_distance(mask, backend=backend), [[2, 1, 0, -1]])
    # spacing (h=1 along H, 0.5 along W): h = 0.5, so [1, 0.5, 0, -0.5]
    np.testing.assert_allclose(_distance.signed_distance(mask, (1.0, 0.5), backend=backend), [[1, 0.5, 0, -0.5]])


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_hand_made_3d_centre_voxel(backend):
    mask = np.zeros((3, 3, 3), bool)
    mask[1, 1, 1] = True
    sdm = _distance.signed_distance(mask, backend=backend)
    assert sdm[1, 1, 1] == 0
    assert sdm[0, 1, 1] == 1 and sdm[0, 0, 1] == pytest.approx(2**0.5) and sdm[0, 0, 0] == pytest.approx(3**0.5)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("shape", [(1, 5), (4, 4), (3, 4, 5)])
def test_empty_and_full_masks_are_zero(backend, shape):
    for fill in (False, True):
        out = _distance.signed_distance(np.full(shape, fill), backend=backend)
        assert out.dtype == np.float32 and not out.any()


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize(
    ("shape", "spacing"),
    [((48, 40), None), ((48, 40), (0.7, 1.9)), ((20, 24, 16), None), ((20, 24, 16), (0.8, 1.25, 2.5))],
)
def test_matches_scipy_with_spacing(backend, shape, spacing):
    for seed in range(3):
        mask = random_blobs(shape, seed)
        out = _distance.signed_distance(mask, spacing, backend=backend)
        np.testing.assert_allclose(out, reference_sdm(mask, spacing), atol=1e-5, rtol=0)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_isotropic_spacing_scales_the_unit_map(backend):
    mask = random_blobs((20, 20, 20), 4)
    unit = _distance.signed_distance(mask, backend=backend)
    np.testing.assert_allclose(_distance.signed_distance(mask, 0.6, backend=backend), 0.6 * unit, atol=1e-5)


def test_unit_spacing_equals_monai_boundary_loss_maps():
    label = torch.from_numpy(np.stack([random_blobs((32, 28), s) for s in range(2)])).long()
    onehot = torch.stack([label == 0, label == 1], 1).float()
    expected = BoundaryLoss().compute_distance_map(onehot)
    ours = _distance.batch_signed_distance(onehot)
    torch.testing.assert_close(ours, expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("num_classes", [2, 3, 4])
def test_label_maps_equal_per_class_maps(num_classes):
    rng = np.random.default_rng(num_classes)
    label = np.zeros((24, 20, 12), np.int64)
    for k in range(1, num_classes):
        label[random_blobs(label.shape, int(rng.integers(100)), n=2)] = k
    spacing = (1.0, 0.8, 2.0)
    out = _distance.label_signed_distance(label, num_classes, spacing)
    assert out.shape == (num_classes, *label.shape) and out.dtype == np.float32
    for k in range(num_classes):
        np.testing.assert_allclose(out[k], reference_sdm(label == k, spacing), atol=1e-5)


def test_two_class_label_with_absent_foreground_is_all_zero():
    out = _distance.label_signed_distance(np.zeros((6, 6), np.int64), 2)
    assert not out.any()


def test_scipy_fallback_without_edt(monkeypatch):
    monkeypatch.setattr(_distance, "_edt", None)
    mask = random_blobs((16, 16), 1)
    np.testing.assert_allclose(_distance.signed_distance(mask), reference_sdm(mask), atol=1e-6)
    with pytest.raises(ValueError, match="edt package is not installed"):
        _distance.signed_distance(mask, backend="edt")


def test_argument_errors():
    with pytest.raises(ValueError, match="backend must be one of"):
        _distance.signed_distance(np.ones((3, 3)), backend="fast")
    with pytest.raises(ValueError, match=r"spacing needs 3 values"):
        _distance.signed_distance(np.ones((3, 3, 3)), spacing=(1.0, 1.0))
    with pytest.raises(ValueError, match="finite and positive"):
        _distance.signed_distance(np.ones((3, 3)), spacing=(1.0, 0.0))


# --------------------------------------------------------------------------- CuPy path


def _fake_cupy():
    """CuPy's API surface used by the CUDA path, backed by numpy/scipy on the CPU."""
    import scipy.ndimage

    cp = types.SimpleNamespace(from_dlpack=np.from_dlpack, cuda=types.SimpleNamespace(ExternalStream=None))
    ndimage = types.SimpleNamespace(distance_transform_edt=scipy.ndimage.distance_transform_edt)
    return cp, ndimage


def test_cupy_glue_with_a_numpy_stand_in(monkeypatch):
    monkeypatch.setattr(_distance, "_cupy_modules", _fake_cupy)
    target = torch.from_numpy(np.stack([random_blobs((12, 14, 10), s) for s in range(3)])).float()
    target = torch.stack([1 - target, target, torch.zeros_like(target)], 1)  # class 2 empty
    ours = _distance.batch_signed_distance(target, spacing=(1.0, 0.5, 2.0), backend="cupy")
    cpu = _distance.batch_signed_distance(target, spacing=(1.0, 0.5, 2.0), backend="scipy")
    torch.testing.assert_close(ours, cpu, atol=1e-5, rtol=0)


def test_cupy_backend_without_cupy_raises(monkeypatch):
    monkeypatch.setattr(_distance, "_cupy_modules", lambda: None)
    with pytest.raises(ValueError, match="CuPy is not installed"):
        _distance.batch_signed_distance(torch.ones(1, 1, 4, 4), backend="cupy")


@pytest.mark.gpu
def test_cupy_matches_scipy_on_cuda():
    if not torch.cuda.is_available() or not _distance.has_cupy():
        pytest.skip("needs CUDA and CuPy")
    mask = torch.from_numpy(np.stack([random_blobs((40, 36, 32), s) for s in range(2)]))
    target = torch.stack([~mask, mask], 1).float()
    gpu = _distance.batch_signed_distance(target.cuda(), spacing=(0.8, 1.0, 1.5))
    assert gpu.is_cuda
    cpu = _distance.batch_signed_distance(target, spacing=(0.8, 1.0, 1.5), backend="scipy")
    torch.testing.assert_close(gpu.cpu(), cpu, atol=1e-5, rtol=0)


# --------------------------------------------------------------------------- transforms


def test_transform_numpy_torch_and_meta_tensor_outputs():
    label = random_blobs((16, 12, 10), 2).astype(np.int64)[None]
    expected = np.stack([reference_sdm(label[0] == k) for k in range(2)])
    t = SignedDistanceMap(num_classes=2)
    out_np = t(label)
    assert isinstance(out_np, np.ndarray) and out_np.dtype == np.float32
    np.testing.assert_allclose(out_np, expected, atol=1e-5)
    out_t = t(torch.from_numpy(label))
    assert type(out_t) is torch.Tensor
    np.testing.assert_allclose(out_t.numpy(), expected, atol=1e-5)


def test_transform_reads_spacing_from_the_affine():
    label = random_blobs((16, 12, 10), 3).astype(np.int64)[None]
    affine = torch.diag(torch.tensor([0.5, 2.0, 1.5, 1.0], dtype=torch.float64))
    meta_label = MetaTensor(torch.from_numpy(label), affine=affine, meta={"filename_or_obj": "case_0.nii.gz"})
    out = SignedDistanceMap(num_classes=2)(meta_label)
    assert isinstance(out, MetaTensor) and out.meta["filename_or_obj"] == "case_0.nii.gz"
    torch.testing.assert_close(out.affine, affine)
    np.testing.assert_allclose(out[1].numpy(), reference_sdm(label[0] == 1, (0.5, 2.0, 1.5)), atol=1e-5)
    # an explicit spacing wins over the affine
    explicit = SignedDistanceMap(num_classes=2, spacing=1.0)(meta_label)
    np.testing.assert_allclose(explicit[1].numpy(), reference_sdm(label[0] == 1), atol=1e-5)


def test_transform_multi_label_channels():
    a, b = random_blobs((20, 20), 5), random_blobs((20, 20), 6)  # overlapping classes
    out = SignedDistanceMap(num_classes=2)(np.stack([a, b]).astype(np.float32))
    np.testing.assert_allclose(out[0], reference_sdm(a), atol=1e-5)
    np.testing.assert_allclose(out[1], reference_sdm(b), atol=1e-5)


def test_transform_errors():
    with pytest.raises(ValueError, match="num_classes must be an int >= 2"):
        SignedDistanceMap(num_classes=1)
    with pytest.raises(ValueError, match="transforms run on the CPU"):
        SignedDistanceMap(num_classes=2, backend="cupy")
    with pytest.raises(ValueError, match=r"label has 3 channels; expected 1 .* num_classes=2"):
        SignedDistanceMap(num_classes=2)(np.zeros((3, 4, 4)))
    with pytest.raises(ValueError, match=r"class indices in \[0, 3\] but num_classes=2"):
        SignedDistanceMap(num_classes=2)(np.array([[[0, 3], [1, 0]]]))
    with pytest.raises(ValueError, match=r"got shape \(4, 4\)"):
        SignedDistanceMap(num_classes=2)(np.zeros((4, 4)))


def test_dictionary_transform_writes_dist():
    label = random_blobs((12, 12), 7).astype(np.int64)[None]
    d = SignedDistanceMapd(keys=LABEL, num_classes=2, spacing=(2.0, 2.0))({LABEL: label, "image": label * 1.0})
    assert set(d) == {LABEL, "image", DIST}
    np.testing.assert_allclose(d[DIST][1], reference_sdm(label[0] == 1, (2.0, 2.0)), atol=1e-5)
    d2 = SignedDistanceMapd(keys=[LABEL, "other"], num_classes=2, dist_keys=["d1", "d2"], allow_missing_keys=True)(
        {LABEL: label}
    )
    assert "d1" in d2 and "d2" not in d2
    with pytest.raises(KeyError):
        SignedDistanceMapd(keys="other", num_classes=2)({LABEL: label})


# --------------------------------------------------------------------------- augmentation


def _augment_chain(spacing, seed):
    keys = [LABEL]
    chain = Compose(
        [
            RandCropByPosNegLabeld(keys, label_key=LABEL, spatial_size=(24, 24, 24), pos=1, neg=1, num_samples=2),
            RandRotated(keys, range_x=0.4, range_y=0.4, range_z=0.4, prob=1.0, mode="nearest"),
            RandZoomd(keys, min_zoom=0.8, max_zoom=1.25, prob=1.0, mode="nearest"),
            RandFlipd(keys, prob=0.5, spatial_axis=0),
            SignedDistanceMapd(keys=LABEL, num_classes=2, spacing=spacing),
        ]
    )
    chain.set_random_state(seed)
    return chain


@pytest.mark.parametrize("seed", [0, 1])
def test_maps_after_augmentation_are_exact_for_the_augmented_label(seed):
    """Chosen strategy (see SignedDistanceMapd): recompute on the augmented patch, placed after the
    random spatial transforms. Bound: the maps equal an exact scipy recomputation on the
    augmented label within 1e-5 everywhere (no interpolation error), in the training grid's units
    (the explicit spacing), whatever the zoom."""
    spacing = (0.8, 0.8, 1.5)
    label = MetaTensor(torch.from_numpy(random_blobs((40, 40, 32), seed + 10)).long()[None])
    label.affine = torch.diag(torch.tensor([*spacing, 1.0], dtype=torch.float64))
    samples = _augment_chain(spacing, seed)({LABEL: label})
    assert len(samples) == 2
    for sample in samples:
        lab = sample[LABEL][0].numpy().round().astype(np.int64)
        assert lab.shape == (24, 24, 24)
        for k in range(2):
            np.testing.assert_allclose(sample[DIST][k].numpy(), reference_sdm(lab == k, spacing), atol=1e-5, rtol=0)


def test_after_zoom_the_affine_spacing_differs_so_pass_it_explicitly():
    label = MetaTensor(torch.from_numpy(random_blobs((24, 24, 24), 3)).long()[None])
    zoom = RandZoomd(LABEL, min_zoom=1.2, max_zoom=1.2, prob=1.0, mode="nearest")
    zoomed = zoom({LABEL: label})[LABEL]
    pixdim = zoomed.pixdim.tolist()
    assert pixdim[0] == pytest.approx(pixdim[2]) and 1 / 1.25 < pixdim[0] < 1 / 1.15  # the affine follows the zoom
    from_affine = SignedDistanceMap(num_classes=2)(zoomed)
    explicit = SignedDistanceMap(num_classes=2, spacing=1.0)(zoomed)
    torch.testing.assert_close(from_affine, explicit * pixdim[0], check_dtype=False, atol=1e-5, rtol=0)
