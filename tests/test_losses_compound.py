"""CompoundLoss (region + scheduled boundary term) and DeepSupervisionLoss."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import yaml
from monai.losses import DiceCELoss, DiceLoss

from pipeline.config import build_component, resolve
from pipeline.errors import ConfigError
from pipeline.losses import (
    CompoundLoss,
    DeepSupervisionLoss,
    KervadecBoundaryLoss,
    halving_weights,
    schedule_weights,
)
from pipeline.registry import LOSSES
from pipeline.schema import Component
from transforms.dictionary import SignedDistanceMapd
from transforms.keys import DIST, LABEL


def data(spatial=(16, 16), classes=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(2, classes, *spatial, generator=g)
    label = torch.zeros(2, 1, *spatial, dtype=torch.long)
    label[(slice(None), slice(None), *[slice(4, 11)] * len(spatial))] = 1
    t = SignedDistanceMapd(keys=LABEL, num_classes=classes)
    dist = torch.stack([torch.as_tensor(t({LABEL: item.numpy()})[DIST]) for item in label])
    return logits, label, dist


# --------------------------------------------------------------------------- schedules


@pytest.mark.parametrize(
    ("epoch", "region", "boundary"),
    [
        (0, 1.0, 0.01),
        (1, 0.99, 0.02),
        (10, 0.9, 0.11),
        (89, 0.11, 0.9),
        (90, 0.1, 0.91),
        (91, 0.1, 0.92),
        (500, 0.1, 5.01),
    ],
)
def test_rebalance_schedule(epoch, region, boundary):
    assert schedule_weights("rebalance", epoch) == (pytest.approx(region), pytest.approx(boundary))


def test_rebalance_equals_stepping_the_reference_epoch_by_epoch():
    a, b = 1.0, 0.01  # LIVIAETS/boundary-loss StealWeight(0.01), applied once per epoch
    for epoch in range(150):
        assert schedule_weights("rebalance", epoch) == (pytest.approx(a), pytest.approx(b))
        a, b = max(0.1, a - 0.01), b + 0.01


@pytest.mark.parametrize(("epoch", "boundary"), [(0, 0.01), (50, 0.505), (100, 1.0), (300, 1.0)])
def test_linear_schedule(epoch, boundary):
    weights = schedule_weights("linear", epoch, alpha=0.01, alpha_end=1.0, ramp_epochs=100)
    assert weights == (1.0, pytest.approx(boundary))


def test_constant_schedule_and_cap():
    assert schedule_weights("constant", 77, alpha=0.3) == (1.0, 0.3)
    assert schedule_weights("rebalance", 300, alpha_max=1.0) == (0.1, 1.0)
    assert schedule_weights("linear", 0, ramp_epochs=0) == (1.0, 1.0)
    with pytest.raises(ValueError, match="schedule must be one of"):
        schedule_weights("cosine", 0)


# --------------------------------------------------------------------------- compound


def test_compound_is_the_weighted_sum_of_its_terms():
    logits, label, dist = data()
    loss = CompoundLoss(schedule="rebalance")
    loss.set_epoch(30)
    assert loss.weights == {"region": 0.7, "boundary": 0.31}
    region = DiceCELoss(to_onehot_y=True, softmax=True)(logits, label)
    boundary = KervadecBoundaryLoss(to_onehot_y=True, softmax=True, include_background=False)(logits, label, dist=dist)
    torch.testing.assert_close(loss(logits, label, dist=dist), 0.7 * region + 0.31 * boundary)
    # without dist, the boundary term computes the same maps itself
    torch.testing.assert_close(loss(logits, label), 0.7 * region + 0.31 * boundary, atol=1e-6, rtol=0)


def test_compound_set_epoch_is_a_pure_function_of_the_epoch():
    loss = CompoundLoss(schedule="linear", alpha=0.0, alpha_end=1.0, ramp_epochs=10)
    for epoch in (3, 8, 3):  # resume = set_epoch again, whatever came before
        loss.set_epoch(epoch)
        assert loss.weights == {"region": 1.0, "boundary": epoch / 10}
    with pytest.raises(ValueError, match="epoch must be an int >= 0, got -1"):
        loss.set_epoch(-1)
    with pytest.raises(ValueError, match="epoch must be an int >= 0, got 1.5"):
        loss.set_epoch(1.5)


def test_compound_extra_inputs_and_routing():
    seen = {}

    class Spy(torch.nn.Module):
        extra_inputs = ("dist", "fov")

        def forward(self, input, target, **extra):
            seen.update(extra)
            return input.sum() * 0

    loss = CompoundLoss(region=DiceLoss(softmax=True, to_onehot_y=True), boundary=Spy(), schedule="constant")
    assert loss.extra_inputs == ("dist", "fov")
    logits, label, dist = data()
    loss(logits, label, dist=dist, image=torch.zeros(1))  # DiceLoss gets no extras; Spy only its own
    assert set(seen) == {"dist"}


def test_compound_rejects_unreduced_terms():
    loss = CompoundLoss(region={"name": "dice", "softmax": True, "to_onehot_y": True, "reduction": "none"})
    logits, label, dist = data()
    with pytest.raises(ValueError, match="compound terms must reduce to scalars"):
        loss(logits, label, dist=dist)


def test_compound_from_yaml_with_nested_terms():
    text = """
    name: compound
    region: {name: dice_ce, to_onehot_y: true, softmax: true, lambda_ce: 0.5}
    boundary: {name: boundary, to_onehot_y: true, softmax: true, include_background: false, maps: batch}
    schedule: linear
    alpha: 0.1
    alpha_end: 0.5
    ramp_epochs: 4
    """
    spec = Component(LOSSES).validate(yaml.safe_load(text), "loss")
    loss = build_component(spec, LOSSES, where="loss")
    assert isinstance(loss.region, DiceCELoss) and loss.region.lambda_ce == 0.5
    assert isinstance(loss.boundary, KervadecBoundaryLoss) and loss.boundary.maps == "batch"
    loss.set_epoch(2)
    assert loss.weights == {"region": 1.0, "boundary": 0.3}


def test_compound_bad_terms_are_config_errors():
    with pytest.raises(ValueError, match=r"unknown loss 'dice_cee'. Did you mean 'dice_ce'"):
        CompoundLoss(region={"name": "dice_cee"})
    with pytest.raises(TypeError, match=r"unexpected keyword argument 'alpha'"):
        CompoundLoss(boundary={"name": "boundary", "alpha": 1})
    network = {"name": "unet", "spatial_dims": 2, "in_channels": 1, "out_channels": 2}
    with pytest.raises(ConfigError, match=r"loss\.region\.name: unknown loss 'nope'"):
        resolve({"network": network, "loss": {"name": "compound", "region": {"name": "nope"}}})
    with pytest.raises(ConfigError, match=r"loss\.boundary\.alpha: loss 'boundary' has no argument 'alpha'"):
        resolve({"network": network, "loss": {"name": "compound", "boundary": {"name": "boundary", "alpha": 1}}})
    with pytest.raises(ValueError, match="schedule must be one of"):
        CompoundLoss(schedule="steal")
    with pytest.raises(ValueError, match="alpha_max must be >= alpha"):
        CompoundLoss(alpha=0.5, alpha_max=0.1)


# --------------------------------------------------------------------------- deep supervision


def test_halving_weights():
    assert halving_weights(3) == pytest.approx([4 / 7, 2 / 7, 1 / 7])
    assert halving_weights(1) == [1.0]


@pytest.mark.parametrize("spatial", [(16, 16), (8, 8, 8)])
def test_deep_supervision_value(spatial):
    logits, label, dist = data(spatial)
    inner = CompoundLoss(schedule="constant", alpha=0.5)
    half = logits[(..., *[slice(None, None, 2)] * len(spatial))]
    heads = [logits, half, torch.randn(2, 2, *[s // 4 for s in spatial])]
    ds = DeepSupervisionLoss(inner)
    got = ds(heads, label, dist=dist)
    mode = "bilinear" if len(spatial) == 2 else "trilinear"
    expected = 0
    for head, w in zip(heads, [4 / 7, 2 / 7, 1 / 7], strict=True):
        size = head.shape[2:]
        t = F.interpolate(label.float(), size=size, mode="nearest-exact").long()
        d = F.interpolate(dist, size=size, mode=mode, align_corners=False)
        expected = expected + w * inner(head, t, dist=d)
    torch.testing.assert_close(got, expected)


def test_deep_supervision_resizes_target_and_extras_per_head():
    shapes = []

    class Spy(torch.nn.Module):
        extra_inputs = ("dist",)

        def forward(self, input, target, dist=None):
            shapes.append((tuple(input.shape), tuple(target.shape), target.dtype, tuple(dist.shape)))
            return input.mean()

    label = torch.randint(0, 2, (2, 1, 16, 12))
    heads = [torch.ones(2, 2, 16, 12), torch.ones(2, 2, 8, 6), torch.ones(2, 2, 4, 3)]
    value = DeepSupervisionLoss(Spy(), head_weights=[1.0, 0.5, 0.25])(heads, label, dist=torch.zeros(2, 2, 16, 12))
    assert value.item() == pytest.approx(1.75)
    assert shapes == [
        ((2, 2, 16, 12), (2, 1, 16, 12), torch.int64, (2, 2, 16, 12)),
        ((2, 2, 8, 6), (2, 1, 8, 6), torch.int64, (2, 2, 8, 6)),
        ((2, 2, 4, 3), (2, 1, 4, 3), torch.int64, (2, 2, 4, 3)),
    ]


def test_deep_supervision_forwards_the_contract():
    inner = CompoundLoss(schedule="rebalance")
    ds = DeepSupervisionLoss(inner)
    assert ds.extra_inputs == ("dist",)
    ds.set_epoch(5)
    assert inner.epoch == 5 and ds.weights == {"region": 0.95, "boundary": 0.06}
    plain = DeepSupervisionLoss(DiceLoss())
    plain.set_epoch(3)  # a no-op for unscheduled losses
    assert plain.weights == {} and plain.extra_inputs == ()
    logits, label, dist = data()
    torch.testing.assert_close(ds(logits, label, dist=dist), inner(logits, label, dist=dist))  # one tensor: no heads


def test_deep_supervision_errors():
    with pytest.raises(ValueError, match="head_weights must be non-negative and not all zero"):
        DeepSupervisionLoss(DiceLoss(), head_weights=[0.0, 0.0])
    ds = DeepSupervisionLoss(DiceLoss(), head_weights=[1.0, 0.5])
    with pytest.raises(ValueError, match="head_weights has 2 values but the network returned 3 heads"):
        ds([torch.rand(1, 1, 8, 8)] * 3, torch.zeros(1, 1, 8, 8))
    with pytest.raises(ValueError, match="got no heads"):
        ds([], torch.zeros(1, 1, 8, 8))


def test_compound_ramp_is_a_fraction_of_the_run():
    from pipeline.losses import DeepSupervisionLoss

    loss = CompoundLoss(schedule="linear", alpha=0.0, alpha_end=1.0, ramp=0.5, alpha_max=0.8)
    assert loss.weights == {"region": 1.0, "boundary": 0.0}
    loss.set_progress(0.25)
    assert loss.weights == {"region": 1.0, "boundary": 0.5}
    loss.set_epoch(40)  # epochs do not move a fraction ramp
    assert loss.weights == {"region": 1.0, "boundary": 0.5}
    DeepSupervisionLoss(loss).set_progress(0.9)
    assert loss.weights == {"region": 1.0, "boundary": 0.8}  # capped by alpha_max
    with pytest.raises(ValueError, match=r"ramp must be a fraction of the run in \(0, 1\], got 0"):
        CompoundLoss(schedule="linear", ramp=0)
    with pytest.raises(ValueError, match="ramp is a setting of schedule 'linear', not 'rebalance'"):
        CompoundLoss(schedule="rebalance", ramp=0.5)


@pytest.mark.slow
def test_trainer_moves_a_fraction_ramp_with_the_run(tmp_path):
    """Two epochs of two steps with ramp: 1.0: the weight logged after epoch 1 is half way."""
    import csv

    from _synthetic import tiny_config, write_config, write_folders

    from pipeline.engines.run import run_training

    root = write_folders(tmp_path / "data", n=6, size=40)
    loss = {
        "name": "compound",
        "region": {"name": "dice_ce", "to_onehot_y": True, "softmax": True},
        "boundary": {"name": "boundary", "to_onehot_y": True, "softmax": True, "include_background": False},
        "schedule": "linear",
        "alpha": 0.0,
        "alpha_end": 1.0,
        "ramp": 1.0,
    }
    cfg = {**tiny_config(root, tmp_path / "run", train={"epochs": 2, "iterations_per_epoch": 2}), "loss": loss}
    run_training(write_config(tmp_path / "cfg.yaml", cfg), [], progress=False)
    rows = list(csv.DictReader((tmp_path / "run" / "log.csv").open()))
    assert [float(r["w_boundary"]) for r in rows] == [0.5, 1.0]
