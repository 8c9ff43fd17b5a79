"""Batch-norm running statistics recomputed from training patches before a checkpoint is saved.

A batch-norm layer evaluates with running statistics, an exponential average (momentum 0.1)
over the last ~10 training batches of activations that the weights produced *at the time*.
Early in a run the weights move fast, so those averages describe earlier networks (and, in the
first ~20 steps, still carry the initial mean 0 / variance 1): the same weights that score well
in train mode can segment nothing in eval mode (issue 12: a ResUNet after 8 steps, Dice 0.99 in
train mode, useless ``best.pt``). :func:`recalibrate_batch_norm` replaces them with the
cumulative average (``momentum=None``) over a pass of training batches through the *current*
weights in train mode without gradient, which is what the statistics are meant to be.

"Few steps" is :data:`FEW_STEPS`: until then the trainer recalibrates at the end of every epoch,
before validation and the checkpoints (so ``best.pt`` is chosen and saved with statistics that
agree with its weights). After that, with a decayed learning rate the weights change little
within ~10 steps and the running averages are accurate, as the usual long runs show. MONAI has
no such pass (``torch.optim.swa_utils.update_bn`` does the same average but takes a loader of
bare tensors and resets the statistics even when the loader is empty).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch

__all__ = ["FEW_STEPS", "batch_norm_layers", "needs_recalibration", "recalibrate_batch_norm", "recalibration_batches"]

FEW_STEPS = 1000
"""Optimisation steps below which a batch-norm network's running statistics are recomputed."""


def batch_norm_layers(model: torch.nn.Module) -> list[torch.nn.modules.batchnorm._BatchNorm]:
    """The batch-norm layers (1-3D, synchronised included) that track running statistics."""
    return [
        m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and m.track_running_stats
    ]


def needs_recalibration(model: torch.nn.Module, steps: int) -> bool:
    """Whether a network that has taken ``steps`` optimisation steps needs its statistics recomputed."""
    return steps < FEW_STEPS and bool(batch_norm_layers(model))


def recalibration_batches(steps_per_epoch: int) -> int:
    """Batches in one recalibration pass: a quarter of an epoch, at least 4 and at most 16
    (4-16 batches of 2-4 crops: enough for a mean and variance per channel, a few forward
    passes' worth of time per epoch)."""
    return max(4, min(16, steps_per_epoch // 4))


@torch.no_grad()
def recalibrate_batch_norm(
    model: torch.nn.Module,
    batches: Iterable[Any],
    max_batches: int,
    forward: Callable[[Any], Any] | None = None,
) -> int:
    """Recompute every batch-norm layer's running mean and variance as the cumulative average
    over up to ``max_batches`` of ``batches``, in train mode without gradient.

    Args:
        model: the network (unwrapped: no DDP collectives beyond SyncBatchNorm's own).
        batches: yields the network's input, or what ``forward`` takes.
        max_batches: how many batches to average over (>= 1).
        forward: ``forward(batch)`` runs ``model`` on one batch; default ``model(batch)``.

    Returns:
        The number of batches averaged over; 0 leaves the statistics as they were.
    """
    layers = batch_norm_layers(model)
    if not layers or max_batches < 1:
        return 0
    saved = [(m.momentum, m.running_mean.clone(), m.running_var.clone(), m.num_batches_tracked.clone()) for m in layers]
    was_training = model.training
    for m in layers:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average over the pass
    model.train()
    seen = 0
    try:
        for batch in batches:
            (forward or model)(batch)
            seen += 1
            if seen >= max_batches:
                break
    finally:
        for m, (momentum, mean, var, tracked) in zip(layers, saved, strict=True):
            m.momentum = momentum
            if seen == 0:
                m.running_mean.copy_(mean)
                m.running_var.copy_(var)
                m.num_batches_tracked.copy_(tracked)
        model.train(was_training)
    return seen
