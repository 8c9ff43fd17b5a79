"""Segmentation losses, all registered in :data:`pipeline.registry.LOSSES` on import.

Ours (MONAI ``_Loss`` API, 2D and 3D):

========================  =================================  ======================================
name                      class                              what
========================  =================================  ======================================
``boundary``              :class:`KervadecBoundaryLoss`      Kervadec boundary loss on ``dist`` maps
``edge_agreement``        :class:`EdgeAgreementLoss`         soft Dice of gradient magnitudes
``edge_bce``              :class:`EdgeBCELoss`               balanced BCE of morphological edges
``band_bce``              :class:`BandBCELoss`               BCE on a band around the boundary
``compound``              :class:`CompoundLoss`              region + scheduled boundary term
========================  =================================  ======================================

MONAI's, by registration (:mod:`pipeline.losses.stock`): ``dice``, ``dice_ce``, ``dice_focal``,
``focal``, ``tversky``, ``generalized_dice``, ``hausdorff_dt``, ``soft_cldice``,
``soft_dice_cldice``, ``monai_boundary``.

Trainer contract:

* ``loss(pred, batch["label"], **{k: batch[k] for k in getattr(loss, "extra_inputs", ()) if k in batch})``
* ``loss.set_epoch(epoch)`` at the start of each epoch when present (0-based; pure function of
  the epoch), ``loss.weights`` (a ``dict``) for logging when present.
* with a deeply supervised network, wrap: ``DeepSupervisionLoss(loss)``.
"""

from __future__ import annotations

from pipeline.losses import stock  # noqa: F401  (registers MONAI's losses)
from pipeline.losses.band import BandBCELoss
from pipeline.losses.boundary import KervadecBoundaryLoss
from pipeline.losses.compound import CompoundLoss, schedule_weights
from pipeline.losses.deep_supervision import DeepSupervisionLoss, halving_weights
from pipeline.losses.edge import EdgeAgreementLoss, EdgeBCELoss

__all__ = [
    "BandBCELoss",
    "CompoundLoss",
    "DeepSupervisionLoss",
    "EdgeAgreementLoss",
    "EdgeBCELoss",
    "KervadecBoundaryLoss",
    "halving_weights",
    "schedule_weights",
]
