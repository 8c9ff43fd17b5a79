"""Every registered loss builds from YAML and trains one step under the trainer's calling contract."""

from __future__ import annotations

import pytest
import torch
import yaml
from monai import losses as monai_losses

import pipeline.losses  # noqa: F401  (registers everything)
from pipeline.config import build_component
from pipeline.registry import LOSSES
from pipeline.schema import Component
from transforms.dictionary import SignedDistanceMapd
from transforms.keys import DIST, LABEL

SNIPPETS = {
    "dice": "{name: dice, to_onehot_y: true, softmax: true}",
    "dice_ce": "{name: dice_ce, to_onehot_y: true, softmax: true}",
    "dice_focal": "{name: dice_focal, to_onehot_y: true, softmax: true, gamma: 2.0}",
    "focal": "{name: focal, to_onehot_y: true, use_softmax: true}",
    "tversky": "{name: tversky, to_onehot_y: true, softmax: true, alpha: 0.3, beta: 0.7}",
    "generalized_dice": "{name: generalized_dice, to_onehot_y: true, softmax: true}",
    "hausdorff_dt": "{name: hausdorff_dt, to_onehot_y: true, softmax: true}",
    "soft_cldice": "{name: soft_cldice, to_onehot_y: true, softmax: true}",
    "soft_dice_cldice": "{name: soft_dice_cldice, to_onehot_y: true, softmax: true, iter_: 5}",
    "monai_boundary": "{name: monai_boundary, to_onehot_y: true, softmax: true}",
    "boundary": "{name: boundary, to_onehot_y: true, softmax: true, include_background: false, maps: batch}",
    "edge_agreement": "{name: edge_agreement, to_onehot_y: true, softmax: true}",
    "edge_bce": "{name: edge_bce, to_onehot_y: true, softmax: true}",
    "band_bce": "{name: band_bce, to_onehot_y: true, softmax: true, radius: 2, outside_weight: 0.1}",
    "compound": "{name: compound, region: {name: dice_ce, to_onehot_y: true, softmax: true}, schedule: rebalance}",
}

MONAI_NAMES = {
    "dice": monai_losses.DiceLoss,
    "dice_ce": monai_losses.DiceCELoss,
    "dice_focal": monai_losses.DiceFocalLoss,
    "focal": monai_losses.FocalLoss,
    "tversky": monai_losses.TverskyLoss,
    "generalized_dice": monai_losses.GeneralizedDiceLoss,
    "hausdorff_dt": monai_losses.HausdorffDTLoss,
    "soft_cldice": monai_losses.SoftclDiceLoss,
    "soft_dice_cldice": monai_losses.SoftDiceclDiceLoss,
    "monai_boundary": monai_losses.BoundaryLoss,
}


def test_every_registered_loss_has_a_snippet():
    assert sorted(SNIPPETS) == LOSSES.names()


def test_monai_losses_enter_by_registration_not_subclassing():
    for name, cls in MONAI_NAMES.items():
        built = LOSSES.build(name)
        assert type(built) is cls, name


def _batch(spatial):
    g = torch.Generator().manual_seed(0)
    label = torch.zeros(2, 1, *spatial, dtype=torch.long)
    label[(slice(None), slice(None), *[slice(3, 9)] * len(spatial))] = 1
    label[1, 0, 0, 0] = 1  # a second, one-voxel object
    dist = SignedDistanceMapd(keys=LABEL, num_classes=2)
    maps = torch.stack([torch.as_tensor(dist({LABEL: item.numpy()})[DIST]) for item in label])
    return {"image": torch.randn(2, 1, *spatial, generator=g), LABEL: label, DIST: maps}


@pytest.mark.parametrize("name", sorted(SNIPPETS))
@pytest.mark.parametrize("spatial", [(12, 12), (8, 8, 8)])
def test_builds_from_yaml_and_trains_a_step(name, spatial):
    spec = Component(LOSSES).validate(yaml.safe_load(SNIPPETS[name]), "loss")
    loss = build_component(spec, LOSSES, where="loss")
    batch = _batch(spatial)
    conv = (torch.nn.Conv2d if len(spatial) == 2 else torch.nn.Conv3d)(1, 2, 3, padding=1)
    if hasattr(loss, "set_epoch"):
        loss.set_epoch(1)
        assert all(isinstance(v, float) for v in loss.weights.values())
    pred = conv(batch["image"])
    value = loss(pred, batch[LABEL], **{k: batch[k] for k in getattr(loss, "extra_inputs", ()) if k in batch})
    value.backward()
    assert value.dim() == 0 and torch.isfinite(value)
    assert conv.weight.grad is not None and torch.isfinite(conv.weight.grad).all()
