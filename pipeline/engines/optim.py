"""Optimisers and learning-rate schedules, registered by name for configs.

Optimisers are torch's own classes (registration, not wrapping). Schedules are per-epoch
``LambdaLR`` factories: ``(optimizer, max_epochs, **settings)``; the trainer steps them once per
epoch, so a resumed run continues the same curve from the scheduler's saved state.
"""

from __future__ import annotations

import math

import torch

from pipeline.registry import OPTIMIZERS, SCHEDULERS

__all__ = ["OPTIMIZERS", "SCHEDULERS", "constant", "cosine", "poly"]

OPTIMIZERS.register("adamw", torch.optim.AdamW)
OPTIMIZERS.register("adam", torch.optim.Adam)
OPTIMIZERS.register("sgd", torch.optim.SGD)


def _warmup(epoch: int, warmup_epochs: int) -> float:
    return (epoch + 1) / (warmup_epochs + 1) if epoch < warmup_epochs else 1.0


def _check(max_epochs: int, warmup_epochs: int) -> None:
    if max_epochs < 1:
        raise ValueError(f"max_epochs must be >= 1, got {max_epochs!r}")
    if not 0 <= warmup_epochs < max_epochs:
        raise ValueError(f"warmup_epochs must be in [0, max_epochs={max_epochs}), got {warmup_epochs!r}")


@SCHEDULERS.register("constant")
def constant(optimizer: torch.optim.Optimizer, max_epochs: int, *, warmup_epochs: int = 0):
    """Constant learning rate after an optional linear warm-up."""
    _check(max_epochs, warmup_epochs)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda e: _warmup(e, warmup_epochs))


@SCHEDULERS.register("cosine")
def cosine(optimizer: torch.optim.Optimizer, max_epochs: int, *, warmup_epochs: int = 0, min_factor: float = 0.01):
    """Linear warm-up, then cosine decay from the base rate to ``min_factor`` × base at the last epoch."""
    _check(max_epochs, warmup_epochs)
    if not 0.0 <= min_factor <= 1.0:
        raise ValueError(f"min_factor must be in [0, 1], got {min_factor!r}")
    span = max(1, max_epochs - warmup_epochs - 1)

    def factor(epoch: int) -> float:
        if epoch < warmup_epochs:
            return _warmup(epoch, warmup_epochs)
        t = min(1.0, (epoch - warmup_epochs) / span)
        return min_factor + (1.0 - min_factor) * 0.5 * (1.0 + math.cos(math.pi * t))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


@SCHEDULERS.register("poly")
def poly(optimizer: torch.optim.Optimizer, max_epochs: int, *, warmup_epochs: int = 0, exponent: float = 0.9):
    """nnU-Net's polynomial decay ``(1 - epoch / max_epochs) ** exponent`` after an optional warm-up."""
    _check(max_epochs, warmup_epochs)

    def factor(epoch: int) -> float:
        if epoch < warmup_epochs:
            return _warmup(epoch, warmup_epochs)
        return max(0.0, 1.0 - epoch / max_epochs) ** exponent

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
