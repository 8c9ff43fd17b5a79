"""KervadecBoundaryLoss against monai.losses.BoundaryLoss, with computed and with cached maps."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.losses import BoundaryLoss
from monai.networks import one_hot

from pipeline.losses import KervadecBoundaryLoss
from transforms import _distance
from transforms.dictionary import SignedDistanceMapd
from transforms.keys import DIST, LABEL

CASES = [
    {"softmax": True, "to_onehot_y": True},
    {"softmax": True, "to_onehot_y": True, "include_background": False},
    {"sigmoid": True, "to_onehot_y": True, "batch": True},
    {"softmax": True, "to_onehot_y": True, "reduction": "none"},
    {"softmax": True, "to_onehot_y": True, "reduction": "sum", "batch": True, "include_background": False},
]


def random_label(spatial, classes, seed):
    """Smooth random class maps (blobs, not salt-and-pepper), sometimes with a class absent."""
    g = torch.Generator().manual_seed(seed)
    field = torch.randn(1, classes, *[max(2, s // 4) for s in spatial], generator=g)
    mode = "bilinear" if len(spatial) == 2 else "trilinear"
    field = torch.nn.functional.interpolate(field, size=spatial, mode=mode, align_corners=False)
    return field.argmax(1, keepdim=True)


def batch(spatial, classes=3, seeds=(0, 1)):
    label = torch.cat([random_label(spatial, classes, s) for s in seeds])
    logits = torch.randn(len(seeds), classes, *spatial, generator=torch.Generator().manual_seed(99))
    return logits, label


def cached_maps(label, classes, spacing=None):
    t = SignedDistanceMapd(keys=LABEL, num_classes=classes, spacing=spacing)
    return torch.stack([torch.as_tensor(t({LABEL: item.numpy()})[DIST]) for item in label])


@pytest.mark.parametrize("kwargs", CASES)
@pytest.mark.parametrize("spatial", [(24, 20), (12, 10, 14)])
def test_equals_monai_when_computing_its_own_maps(kwargs, spatial):
    logits, label = batch(spatial)
    expected = BoundaryLoss(**kwargs)(logits, label)
    torch.testing.assert_close(KervadecBoundaryLoss(**kwargs)(logits, label), expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("kwargs", CASES)
@pytest.mark.parametrize("spatial", [(24, 20), (12, 10, 14)])
def test_equals_monai_with_maps_from_signed_distance_mapd(kwargs, spatial):
    logits, label = batch(spatial)
    dist = cached_maps(label, 3)
    expected = BoundaryLoss(**kwargs)(logits, label)
    loss = KervadecBoundaryLoss(maps="batch", **kwargs)
    torch.testing.assert_close(loss(logits, label, dist=dist), expected, atol=1e-5, rtol=0)


def test_single_channel_sigmoid_uses_the_foreground_map():
    logits, label = batch((20, 20), classes=2)
    dist = cached_maps(label, 2)  # two maps (background, foreground)
    expected = BoundaryLoss(sigmoid=True)(logits[:, 1:], label.float())
    got = KervadecBoundaryLoss(sigmoid=True)(logits[:, 1:], label.float(), dist=dist)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


def test_spacing_of_computed_maps_matches_the_transform():
    logits, label = batch((10, 12, 8))
    spacing = (0.8, 0.8, 2.0)
    computed = KervadecBoundaryLoss(softmax=True, to_onehot_y=True, spacing=spacing)(logits, label)
    cached = KervadecBoundaryLoss(softmax=True, to_onehot_y=True)(logits, label, dist=cached_maps(label, 3, spacing))
    torch.testing.assert_close(computed, cached, atol=1e-5, rtol=0)
    unit = KervadecBoundaryLoss(softmax=True, to_onehot_y=True)(logits, label)
    assert abs(computed.item() - unit.item()) > 1e-3  # spacing does change the value


def test_given_maps_are_used_and_compute_mode_ignores_them():
    logits, label = batch((16, 16))
    fake = torch.ones(2, 3, 16, 16)
    probs = torch.softmax(logits, 1)
    got = KervadecBoundaryLoss(softmax=True, to_onehot_y=True)(logits, label, dist=fake)
    torch.testing.assert_close(got, probs.mean())  # Σ_k p_k = 1 at every voxel: mean over (B, K) = 1/3
    computed = KervadecBoundaryLoss(softmax=True, to_onehot_y=True, maps="compute")(logits, label, dist=fake)
    torch.testing.assert_close(computed, BoundaryLoss(softmax=True, to_onehot_y=True)(logits, label))


def test_maps_batch_requires_dist_and_shapes_must_match():
    logits, label = batch((16, 16))
    with pytest.raises(ValueError, match="maps='batch' but no 'dist' was given"):
        KervadecBoundaryLoss(softmax=True, to_onehot_y=True, maps="batch")(logits, label)
    with pytest.raises(ValueError, match=r"dist \(2, 2, 16, 16\) vs input \(2, 3, 16, 16\)"):
        KervadecBoundaryLoss(softmax=True, to_onehot_y=True)(logits, label, dist=torch.zeros(2, 2, 16, 16))
    with pytest.raises(ValueError, match=r"input \(2, 3, 16, 16\) vs target \(2, 1, 16, 15\)"):
        # with given maps the target is not converted, but still checked
        KervadecBoundaryLoss(softmax=True, to_onehot_y=True)(logits, label[..., :15], dist=torch.zeros(2, 3, 16, 16))
    with pytest.raises(ValueError, match="maps must be one of"):
        KervadecBoundaryLoss(maps="cache")
    with pytest.raises(ValueError, match="backend must be one of"):
        KervadecBoundaryLoss(backend="gpu")


def test_extra_inputs_contract():
    assert KervadecBoundaryLoss.extra_inputs == (DIST,) == ("dist",)
    logits, label = batch((12, 12))
    batch_dict = {LABEL: label, DIST: cached_maps(label, 3), "image": torch.zeros(2, 1, 12, 12)}
    loss = KervadecBoundaryLoss(softmax=True, to_onehot_y=True, maps="batch")
    extras = {k: batch_dict[k] for k in getattr(loss, "extra_inputs", ()) if k in batch_dict}
    value = loss(logits, batch_dict[LABEL], **extras)
    torch.testing.assert_close(value, BoundaryLoss(softmax=True, to_onehot_y=True)(logits, label), atol=1e-5, rtol=0)


def test_gradient_is_the_distance_map_times_the_activation_jacobian():
    # without an activation, d loss / d p = sdm / #voxels / #(B·K): the map itself drives the update
    label = torch.zeros(1, 1, 1, 4)
    label[..., 2:] = 1
    p = torch.full((1, 2, 1, 4), 0.5, requires_grad=True)
    KervadecBoundaryLoss()(p, one_hot(label, 2)).backward()
    sdm1 = torch.tensor([2.0, 1.0, 0.0, -1.0])
    torch.testing.assert_close(p.grad[0, 1, 0], sdm1 / 4 / 2)
    torch.testing.assert_close(p.grad[0, 0, 0], (1 - sdm1) / 4 / 2)  # class 0 is the complement: h - sdm


def test_warns_once_when_cuda_targets_fall_back_to_the_cpu(monkeypatch):
    monkeypatch.setattr(_distance, "_cupy_modules", lambda: None)
    loss = KervadecBoundaryLoss()
    calls = []
    monkeypatch.setattr(_distance, "batch_signed_distance", lambda t, s, b: calls.append(t) or torch.zeros_like(t))

    class FakeCuda(torch.Tensor):
        @property
        def is_cuda(self):
            return True

    target = torch.zeros(1, 2, 4, 4).as_subclass(FakeCuda)
    with pytest.warns(UserWarning, match="computes distance maps on the CPU at every step"):
        loss.compute_maps(target)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loss.compute_maps(target)  # no second warning
    assert len(calls) == 2


@pytest.mark.gpu
def test_cuda_cupy_path_equals_monai():
    if not torch.cuda.is_available() or not _distance.has_cupy():
        pytest.skip("needs CUDA and CuPy")
    logits, label = batch((24, 20, 16))
    expected = BoundaryLoss(softmax=True, to_onehot_y=True)(logits, label)
    got = KervadecBoundaryLoss(softmax=True, to_onehot_y=True)(logits.cuda(), label.cuda())
    torch.testing.assert_close(got.cpu(), expected, atol=1e-5, rtol=0)


def test_float64_maps_give_a_float32_loss():
    logits, label = batch((8, 8))
    dist = cached_maps(label, 3).double()
    value = KervadecBoundaryLoss(softmax=True, to_onehot_y=True)(logits, label, dist=dist)
    assert value.dtype == torch.float32
    assert np.isfinite(value.item())
