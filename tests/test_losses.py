"""The seed's three boundary losses, rebuilt (edge_agreement, band_bce, edge_bce), and the MONAI
argument semantics shared by every loss of ours."""

from __future__ import annotations

import math

import pytest
import torch
from monai.networks import one_hot

from pipeline.losses import BandBCELoss, EdgeAgreementLoss, EdgeBCELoss, KervadecBoundaryLoss

S = 1e-5  # the Dice smoothing default
EPS = 1e-6  # EdgeBCELoss's default eps
OURS = [EdgeAgreementLoss, BandBCELoss, EdgeBCELoss, KervadecBoundaryLoss]


def softplus(v: float) -> float:
    return math.log1p(math.exp(v))


def row(*values: float) -> torch.Tensor:
    """A 1×1×1×W 2D tensor."""
    return torch.tensor(values, dtype=torch.float32).reshape(1, 1, 1, -1)


def corner_3d(value: float = 1.0, size: int = 2) -> torch.Tensor:
    t = torch.zeros(1, 1, size, size, size)
    t[0, 0, 0, 0, 0] = value
    return t


def centre_3d(value: float = 1.0, rest: float = 0.0) -> torch.Tensor:
    t = torch.full((1, 1, 3, 3, 3), rest)
    t[0, 0, 1, 1, 1] = value
    return t


def square_2d(n: int = 8, lo: int = 2, hi: int = 6) -> torch.Tensor:
    t = torch.zeros(1, 1, n, n)
    t[..., lo:hi, lo:hi] = 1
    return t


# --------------------------------------------------------------------------- exact values

TABLE = [
    # (loss, kwargs, input, target, expected) — hand-computed, see the comments
    # edge_agreement, W-edges |Δy| = [0, 1, 0], |Δp| = [.5, .5, 0]: Σab = .5, Σa = Σb = 1
    (EdgeAgreementLoss, {}, row(0, 0.5, 1, 1), row(0, 0, 1, 1), 1 - (1 + S) / (2 + S)),
    (EdgeAgreementLoss, {}, row(0, 0, 1, 1), row(0, 0, 1, 1), 0.0),
    # 3D corner voxel of a 2³ cube: one edge pair per axis, Σb = 3; flat prediction: 1 - s/(3+s)
    (EdgeAgreementLoss, {}, corner_3d(0.0), corner_3d(), 1 - S / (3 + S)),
    # half-height corner: Σab = Σa = 1.5, Σb = 3
    (EdgeAgreementLoss, {}, corner_3d(0.5), corner_3d(), 1 - (3 + S) / (4.5 + S)),
    # band_bce, radius 1 on [0, 0, 1, 1]: band = dilate [0,1,1,1] - erode [0,0,0,1] = [0, 1, 1, 0]
    (BandBCELoss, {"sigmoid": True}, row(0, 0, 0, 0), row(0, 0, 1, 1), math.log(2)),
    (BandBCELoss, {"sigmoid": True}, row(5, 2, -1, 5), row(0, 0, 1, 1), (softplus(2) + softplus(1)) / 2),
    (
        BandBCELoss,
        {"sigmoid": True, "outside_weight": 1.0},
        row(5, 2, -1, 5),
        row(0, 0, 1, 1),
        (softplus(5) + softplus(2) + softplus(1) + softplus(-5)) / 4,
    ),
    # 3D centre voxel of 3³: the band is all 27 voxels; every voxel's BCE is softplus(-3)
    (BandBCELoss, {"sigmoid": True}, centre_3d(3.0, -3.0), centre_3d(), softplus(-3)),
    (BandBCELoss, {}, centre_3d(0.5, 0.5), centre_3d(), math.log(2)),  # probabilities, no activation
    # edge_bce: edges of [0,0,1,1] = [0,1,1,0]; p = [0,.25,.75,1] → edges [.25,.75,.75,.25]
    (EdgeBCELoss, {}, row(0, 0.25, 0.75, 1), row(0, 0, 1, 1), math.log((1 + EPS) / (0.75 + EPS))),
    (EdgeBCELoss, {}, row(0, 0, 1, 1), row(0, 0, 1, 1), 0.0),
    # 3D centre voxel: the true edge map is all ones; a flat 0.5 prediction has no edge at all
    (EdgeBCELoss, {}, centre_3d(0.5, 0.5), centre_3d(), 0.5 * math.log((1 + EPS) / EPS)),
    (EdgeBCELoss, {}, centre_3d(), centre_3d(), 0.0),
    # boundary: sdm of [0,0,1,1] is [2,1,0,-1]; mean(0.5 * sdm) = 0.25
    (KervadecBoundaryLoss, {}, row(0.5, 0.5, 0.5, 0.5), row(0, 0, 1, 1), 0.25),
    (KervadecBoundaryLoss, {"spacing": (1.0, 0.5)}, row(1, 1, 1, 1), row(0, 0, 1, 1), 0.25),  # [1,.5,0,-.5]
    # 3D centre voxel: 6 face neighbours at 1, 12 edge at √2, 8 corner at √3, centre 0
    (KervadecBoundaryLoss, {}, torch.ones(1, 1, 3, 3, 3), centre_3d(), (6 + 12 * 2**0.5 + 8 * 3**0.5) / 27),
]


@pytest.mark.parametrize(("cls", "kwargs", "input", "target", "expected"), TABLE)
def test_exact_values(cls, kwargs, input, target, expected):
    assert cls(**kwargs)(input, target).item() == pytest.approx(expected, abs=1e-6)


# --------------------------------------------------------------------------- perfect / empty / full


@pytest.mark.parametrize("cls", OURS)
@pytest.mark.parametrize("spatial", [(12, 12), (8, 8, 8)])
def test_perfect_prediction_is_minimal(cls, spatial):
    g = torch.Generator().manual_seed(0)
    target = torch.zeros(2, 1, *spatial)
    target[(slice(None), slice(None), *[slice(2, 6)] * len(spatial))] = 1
    onehot = torch.cat([1 - target, target], 1)
    loss = cls(softmax=True)
    perfect = loss(20.0 * (2 * onehot - 1), onehot)
    for _ in range(5):
        noisy = 20.0 * (2 * onehot - 1) + 8.0 * torch.randn(onehot.shape, generator=g)
        assert perfect <= loss(noisy, onehot) + 1e-6
    if cls is not KervadecBoundaryLoss:  # the others are 0 at the perfect prediction
        assert perfect.item() == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("cls", OURS)
@pytest.mark.parametrize("spatial", [(10, 10), (6, 6, 6)])
@pytest.mark.parametrize("fill", [0.0, 1.0])
@pytest.mark.parametrize("act", ["sigmoid", "softmax", None])
def test_empty_and_full_masks_are_finite(cls, spatial, fill, act):
    target = torch.full((2, 2, *spatial), fill)
    if act is None:
        x = torch.rand(2, 2, *spatial).requires_grad_()
        kwargs = {}
    else:
        x = torch.randn(2, 2, *spatial).mul(30).requires_grad_()  # saturated logits too
        kwargs = {act: True}
    value = cls(**kwargs)(x, target)
    value.backward()
    assert torch.isfinite(value) and torch.isfinite(x.grad).all()


def test_empty_mask_behaviour():
    empty = torch.zeros(1, 1, 6, 6)
    spurious = torch.zeros(1, 1, 6, 6)
    spurious[0, 0, 3, 3] = 1.0
    assert EdgeAgreementLoss()(empty, empty).item() == pytest.approx(0.0)
    # one predicted voxel: Σa = 4 edge pairs, Σb = 0
    assert EdgeAgreementLoss()(spurious, empty).item() == pytest.approx(1 - S / (4 + S))
    assert EdgeBCELoss()(spurious, empty).item() > 1.0  # spurious edges cost on an empty mask
    assert BandBCELoss()(spurious, empty).item() == 0.0  # band-only: nothing to weigh
    assert BandBCELoss(outside_weight=1.0)(spurious, empty).item() == pytest.approx(math.log(1e12) / 36, rel=1e-4)
    assert KervadecBoundaryLoss()(spurious, empty).item() == 0.0  # no interface, all-zero map


# --------------------------------------------------------------------------- MONAI argument semantics


def _batch(spatial=(10, 12), classes=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, classes, *spatial, generator=g)
    idx = torch.randint(0, classes, (2, 1, *spatial), generator=g)
    return x, idx


@pytest.mark.parametrize("cls", OURS)
@pytest.mark.parametrize("spatial", [(10, 12), (6, 7, 8)])
def test_to_onehot_y_equals_a_one_hot_target(cls, spatial):
    x, idx = _batch(spatial)
    a = cls(softmax=True, to_onehot_y=True)(x, idx)
    b = cls(softmax=True)(x, one_hot(idx, 3))
    c = cls(softmax=True, to_onehot_y=True)(x, idx[:, 0])  # BHW[D] also accepted
    torch.testing.assert_close(a, b)
    torch.testing.assert_close(a, c)


@pytest.mark.parametrize("cls", OURS)
def test_include_background_drops_channel_zero(cls):
    x, idx = _batch()
    y = one_hot(idx, 3)
    without = cls(sigmoid=True, include_background=False, reduction="none")(x, y)
    assert without.shape == (2, 2)
    torch.testing.assert_close(without, cls(sigmoid=True, reduction="none")(x[:, 1:], y[:, 1:]))


@pytest.mark.parametrize("cls", OURS)
def test_activations(cls):
    x, idx = _batch()
    y = one_hot(idx, 3)
    torch.testing.assert_close(cls(sigmoid=True)(x, y), cls()(torch.sigmoid(x), y))
    torch.testing.assert_close(cls(softmax=True)(x, y), cls()(torch.softmax(x, 1), y))
    torch.testing.assert_close(cls(other_act=torch.sigmoid)(x, y), cls(sigmoid=True)(x, y))


@pytest.mark.parametrize("cls", OURS)
def test_reductions_and_batch(cls):
    x, idx = _batch()
    loss = cls(softmax=True, to_onehot_y=True, reduction="none")
    per = loss(x, idx)
    assert per.shape == (2, 3)
    torch.testing.assert_close(cls(softmax=True, to_onehot_y=True, reduction="sum")(x, idx), per.sum())
    torch.testing.assert_close(cls(softmax=True, to_onehot_y=True)(x, idx), per.mean())
    assert cls(softmax=True, to_onehot_y=True, reduction="none", batch=True)(x, idx).shape == (3,)


@pytest.mark.parametrize("cls", OURS)
def test_shape_mismatch_names_both_shapes(cls):
    x, idx = _batch()
    with pytest.raises(ValueError, match=r"input \(2, 3, 10, 12\) vs target \(2, 2, 10, 12\)"):
        cls(softmax=True)(x, one_hot(idx, 3)[:, :2])
    with pytest.raises(ValueError, match=r"expects BNHW or BNHWD input, got shape \(2, 3, 10\)"):
        cls()(x[..., 0], idx[..., 0])


@pytest.mark.parametrize("cls", OURS)
def test_argument_validation(cls):
    with pytest.raises(ValueError, match="at most one of sigmoid, softmax, other_act"):
        cls(sigmoid=True, softmax=True)
    with pytest.raises(TypeError, match="other_act must be None or callable, got str"):
        cls(other_act="relu")
    with pytest.raises(ValueError, match="reduction must be 'mean', 'sum' or 'none', got 'avg'"):
        cls(reduction="avg")


def test_specific_argument_validation():
    with pytest.raises(ValueError, match="radius must be an int >= 1, got 0"):
        BandBCELoss(radius=0)
    with pytest.raises(ValueError, match=r"outside_weight must be in \[0, 1\], got 2"):
        BandBCELoss(outside_weight=2)
    with pytest.raises(ValueError, match="eps must be in"):
        EdgeBCELoss(eps=0)
    with pytest.raises(ValueError, match="smooth_dr > 0"):
        EdgeAgreementLoss(smooth_dr=0)


@pytest.mark.parametrize("cls", OURS)
def test_single_channel_softmax_warns_like_monai(cls):
    x = torch.randn(1, 1, 6, 6)
    with pytest.warns(UserWarning, match="single channel prediction, `softmax=True` ignored"):
        cls(softmax=True)(torch.sigmoid(x), (x > 0).float())


# --------------------------------------------------------------------------- numerics


def test_band_bce_softmax_is_stable_for_saturated_logits():
    """Two-class softmax BCE on channel 1 equals the sigmoid BCE of the logit difference, even
    where p rounds to 1 in float32 (a naive log(1 - p) would be -inf there)."""
    z = torch.tensor([-200.0, -30.0, -2.0, 0.0, 2.0, 30.0, 200.0]).reshape(1, 1, 1, -1)
    y = row(0, 0, 1, 1, 1, 0, 0)
    logits = torch.cat([torch.zeros_like(z), z], 1).requires_grad_()
    soft = BandBCELoss(softmax=True, include_background=False, outside_weight=1.0)(logits, torch.cat([1 - y, y], 1))
    sig = BandBCELoss(sigmoid=True, outside_weight=1.0)(z, y)
    torch.testing.assert_close(soft, sig)
    soft.backward()
    assert torch.isfinite(logits.grad).all()


def test_band_radius_widens_the_band():
    y = torch.zeros(1, 1, 1, 12)
    y[..., 6:] = 1
    x = torch.zeros(1, 1, 1, 12)
    x[..., 3] = 4.0  # a wrong voxel 3 away from the edge: outside the r=1 band, inside r=3
    r1 = BandBCELoss(sigmoid=True, radius=1)(x, y).item()
    r3 = BandBCELoss(sigmoid=True, radius=3)(x, y).item()
    assert r1 == pytest.approx(math.log(2))
    assert r3 == pytest.approx((5 * math.log(2) + softplus(4)) / 6)


@pytest.mark.parametrize("cls", OURS)
@pytest.mark.parametrize("spatial", [(16, 16), (8, 8, 8)])
def test_bf16_autocast_on_cpu(cls, spatial):
    torch.manual_seed(0)
    conv = (torch.nn.Conv2d if len(spatial) == 2 else torch.nn.Conv3d)(1, 2, 3, padding=1)
    image = torch.randn(2, 1, *spatial)
    label = (image > 0.3).long()
    loss = cls(softmax=True, to_onehot_y=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = conv(image)
        value = loss(logits, label)
    assert logits.dtype == torch.bfloat16 and value.dtype == torch.float32
    value.backward()
    assert torch.isfinite(value) and all(torch.isfinite(p.grad).all() for p in conv.parameters())
    reference = loss(logits.detach().float(), label)
    assert value.item() == pytest.approx(reference.item(), abs=1e-5)
