"""MONAI's clDice as registered: reference formulation and the iteration count we default to."""

from __future__ import annotations

import pytest
import torch
from monai.losses import SoftclDiceLoss
from monai.losses.cldice import soft_skel

from pipeline.losses.stock import CLDICE_ITERATIONS
from pipeline.registry import LOSSES


def tube(radius: int, size: int = 40) -> torch.Tensor:
    """A horizontal band ``2·radius + 1`` pixels wide across a ``size²`` image, ``11HW``."""
    img = torch.zeros(1, 1, size, size)
    img[0, 0, size // 2 - radius : size // 2 + radius + 1] = 1
    return img


def reference_cldice(pred: torch.Tensor, true: torch.Tensor, iters: int, smooth: float = 1.0) -> torch.Tensor:
    """Shit et al. 2021 (jocpae/clDice, cldice.py): batch-pooled sums over the foreground channels."""
    skel_pred, skel_true = soft_skel(pred, iters), soft_skel(true, iters)
    tprec = ((skel_pred * true)[:, 1:].sum() + smooth) / (skel_pred[:, 1:].sum() + smooth)
    tsens = ((skel_true * pred)[:, 1:].sum() + smooth) / (skel_true[:, 1:].sum() + smooth)
    return 1.0 - 2.0 * tprec * tsens / (tprec + tsens)


def test_registered_default_is_ten_iterations():
    assert CLDICE_ITERATIONS == 10
    assert LOSSES.build("soft_cldice").iter == 10
    assert LOSSES.build("soft_dice_cldice").cldice.iter == 10
    assert LOSSES.build("soft_cldice", iter_=4).iter == 4


def test_skeleton_needs_as_many_iterations_as_the_radius():
    # a radius-6 tube: 3 iterations (MONAI's default) find no centre line at all, 10 do
    img = tube(6)
    assert soft_skel(img, 3).sum() == 0
    skel = soft_skel(img, CLDICE_ITERATIONS)
    assert skel[0, 0, 20].sum() == 40 and skel.sum() == 40  # exactly the centre row


def test_without_a_skeleton_the_sensitivity_term_is_blind():
    true = tube(6)
    missing_half = true.clone()
    missing_half[..., 20:] = 0  # the prediction misses half the vessel
    short = SoftclDiceLoss(iter_=3)(missing_half, true)
    long = SoftclDiceLoss(iter_=CLDICE_ITERATIONS)(missing_half, true)
    assert long > short + 0.05


@pytest.mark.parametrize("iters", [3, 10])
def test_monai_matches_the_reference_formulation(iters):
    g = torch.Generator().manual_seed(iters)
    true = torch.cat([1 - tube(4), tube(4)], 1)
    pred = torch.softmax(torch.randn(1, 2, 40, 40, generator=g) + 4 * (2 * true - 1), 1)
    ours = SoftclDiceLoss(iter_=iters, include_background=False)(pred, true)
    # MONAI adds smooth=1e-4 to the harmonic-mean denominator; everything else is the reference
    torch.testing.assert_close(ours, reference_cldice(pred, true, iters), atol=1e-4, rtol=0)
