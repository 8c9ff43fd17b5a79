"""MONAI's losses, registered under snake_case names (registration, not subclassing).

``soft_cldice`` and ``soft_dice_cldice`` default to ``iter_=10`` soft-skeleton iterations
instead of MONAI's (and the clDice reference code's) 3. The soft skeleton of Shit et al.
(CVPR 2021) only recovers the centre line of structures whose radius is at most the
iteration count: after ``k`` soft erosions a tube of radius ``> k`` voxels is still wider than
the 3-voxel opening, so its skeleton is empty and the sensitivity term ``Tsens`` is a constant
1. Vessel radii in the datasets medseg targets (hepatic vessels, retinal vessels at full
resolution) reach ~10 voxels; ``tests/test_losses_stock.py`` checks this on a radius-6 tube.
Everything else is MONAI's code, which matches the reference formulation (same soft
erosion/dilation/skeleton; ``smooth_nr = smooth_dr = 1`` as the reference's ``smooth``;
MONAI adds ``smooth=1e-4`` to the harmonic-mean denominator and averages per item where the
reference pools the batch).
"""

from __future__ import annotations

import functools

from monai.losses import (
    BoundaryLoss,
    DiceCELoss,
    DiceFocalLoss,
    DiceLoss,
    FocalLoss,
    GeneralizedDiceLoss,
    HausdorffDTLoss,
    SoftclDiceLoss,
    SoftDiceclDiceLoss,
    TverskyLoss,
)

from pipeline.registry import LOSSES

__all__ = ["CLDICE_ITERATIONS"]

CLDICE_ITERATIONS = 10
"""Default soft-skeleton iterations of the registered clDice losses (MONAI's default is 3)."""

LOSSES.register("dice", DiceLoss)
LOSSES.register("dice_ce", DiceCELoss)
LOSSES.register("dice_focal", DiceFocalLoss)
LOSSES.register("focal", FocalLoss)
LOSSES.register("tversky", TverskyLoss)
LOSSES.register("generalized_dice", GeneralizedDiceLoss)
LOSSES.register("hausdorff_dt", HausdorffDTLoss)
LOSSES.register("soft_cldice", functools.partial(SoftclDiceLoss, iter_=CLDICE_ITERATIONS))
LOSSES.register("soft_dice_cldice", functools.partial(SoftDiceclDiceLoss, iter_=CLDICE_ITERATIONS))
LOSSES.register("monai_boundary", BoundaryLoss)
