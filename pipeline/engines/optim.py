"""Optimisers and learning-rate schedules, registered by name for configs.

Optimisers are torch's own classes (registration, not wrapping). Schedules are factories
``(optimizer, total_steps, steps_per_epoch=1, **settings)`` returning a :class:`RunLR`, a
``LambdaLR`` stepped once per training step whose factor is a function of the *fraction of the
run* done: warm-up is ``warmup`` (a fraction in [0, 1)) of the run, cosine and poly end at the
run's last step, so every run length is valid (``--set train.epochs=2`` included).
:meth:`RunLR.rescale` changes the run's length in place (the trainer calls it when
``train.time_budget`` ends the run before ``train.epochs``), so the rate still reaches the end
of its curve when time runs out. The length is not part of the saved state: a resumed run gets
the length of its own config (an extended run continues on the longer curve) and re-fits it to
its budget.

``warmup_epochs`` (the former key) is still read: that many epochs of warm-up, capped at a
tenth of the run so a short run never ends inside it, with a warning naming ``warmup``.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable

import torch

from pipeline.registry import OPTIMIZERS, SCHEDULERS

__all__ = ["OPTIMIZERS", "SCHEDULERS", "RunLR", "constant", "cosine", "poly"]

OPTIMIZERS.register("adamw", torch.optim.AdamW)
OPTIMIZERS.register("adam", torch.optim.Adam)
OPTIMIZERS.register("sgd", torch.optim.SGD)

WARMUP_EPOCHS_CAP = 0.1
"""The most of a run that a legacy ``warmup_epochs`` may take."""


class RunLR(torch.optim.lr_scheduler.LambdaLR):
    """A ``LambdaLR`` over a run of ``total_steps`` steps: ``factor(step, total_steps)``.

    Args:
        optimizer: the optimiser.
        total_steps: the run's length in steps (>= 1).
        factor: ``(step, total) -> multiplier of the base rate``.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, total_steps: int, factor: Callable[[int, int], float]):
        if total_steps < 1:
            raise ValueError(f"total_steps must be >= 1, got {total_steps!r}")
        self.total_steps = int(total_steps)
        self._factor = factor
        # a closure (not a callable object) so LambdaLR keeps it out of the saved state
        super().__init__(optimizer, lambda step: self._factor(step, self.total_steps))

    def rescale(self, total_steps: int) -> None:
        """Make the run ``total_steps`` long from now on; the rates of the current step change at once."""
        self.total_steps = max(1, int(total_steps))
        for group, base in zip(self.optimizer.param_groups, self.base_lrs, strict=True):
            group["lr"] = base * self._factor(self.last_epoch, self.total_steps)
        self._last_lr = [group["lr"] for group in self.optimizer.param_groups]

    def state_dict(self) -> dict:
        state = super().state_dict()
        state.pop("total_steps", None)  # the length comes from the config (and the budget) of each session
        state.pop("_factor", None)
        return state


def _warmup_steps(total: int, warmup: float, legacy: int | None, steps_per_epoch: int) -> int:
    if legacy is not None:
        return min(legacy * steps_per_epoch, int(total * WARMUP_EPOCHS_CAP))
    return int(round(warmup * total))


def _checked(total_steps: int, steps_per_epoch: int, warmup: float, warmup_epochs: int | None) -> None:
    if total_steps < 1:
        raise ValueError(f"total_steps must be >= 1, got {total_steps!r}")
    if steps_per_epoch < 1:
        raise ValueError(f"steps_per_epoch must be >= 1, got {steps_per_epoch!r}")
    if not 0.0 <= warmup < 1.0:
        raise ValueError(f"warmup must be a fraction of the run in [0, 1), got {warmup!r}")
    if warmup_epochs is not None:
        if isinstance(warmup_epochs, bool) or not isinstance(warmup_epochs, int) or warmup_epochs < 0:
            raise ValueError(f"warmup_epochs must be an int >= 0, got {warmup_epochs!r}")
        if warmup:
            raise ValueError("give warmup (a fraction of the run) or warmup_epochs, not both")
        warnings.warn(
            f"scheduler.warmup_epochs is replaced by scheduler.warmup, a fraction of the run (e.g. warmup: 0.05); "
            f"warmup_epochs {warmup_epochs} is used, capped at {WARMUP_EPOCHS_CAP:g} of the run",
            FutureWarning,
            stacklevel=3,
        )


def _ramp(step: int, warm: int) -> float:
    return (step + 1) / (warm + 1)


@SCHEDULERS.register("constant")
def constant(
    optimizer: torch.optim.Optimizer,
    total_steps: int,
    steps_per_epoch: int = 1,
    *,
    warmup: float = 0.0,
    warmup_epochs: int | None = None,
) -> RunLR:
    """Constant learning rate after an optional linear warm-up over ``warmup`` of the run."""
    _checked(total_steps, steps_per_epoch, warmup, warmup_epochs)

    def factor(step: int, total: int) -> float:
        warm = _warmup_steps(total, warmup, warmup_epochs, steps_per_epoch)
        return _ramp(step, warm) if step < warm else 1.0

    return RunLR(optimizer, total_steps, factor)


@SCHEDULERS.register("cosine")
def cosine(
    optimizer: torch.optim.Optimizer,
    total_steps: int,
    steps_per_epoch: int = 1,
    *,
    warmup: float = 0.0,
    warmup_epochs: int | None = None,
    min_factor: float = 0.01,
) -> RunLR:
    """Linear warm-up over ``warmup`` of the run, then cosine decay from the base rate to
    ``min_factor`` × base at the run's last step."""
    _checked(total_steps, steps_per_epoch, warmup, warmup_epochs)
    if not 0.0 <= min_factor <= 1.0:
        raise ValueError(f"min_factor must be in [0, 1], got {min_factor!r}")

    def factor(step: int, total: int) -> float:
        warm = _warmup_steps(total, warmup, warmup_epochs, steps_per_epoch)
        if step < warm:
            return _ramp(step, warm)
        t = min(1.0, (step - warm) / max(1, total - warm - 1))
        return min_factor + (1.0 - min_factor) * 0.5 * (1.0 + math.cos(math.pi * t))

    return RunLR(optimizer, total_steps, factor)


@SCHEDULERS.register("poly")
def poly(
    optimizer: torch.optim.Optimizer,
    total_steps: int,
    steps_per_epoch: int = 1,
    *,
    warmup: float = 0.0,
    warmup_epochs: int | None = None,
    exponent: float = 0.9,
) -> RunLR:
    """nnU-Net's polynomial decay ``(1 - step / total) ** exponent`` after an optional warm-up."""
    _checked(total_steps, steps_per_epoch, warmup, warmup_epochs)

    def factor(step: int, total: int) -> float:
        warm = _warmup_steps(total, warmup, warmup_epochs, steps_per_epoch)
        if step < warm:
            return _ramp(step, warm)
        return max(0.0, 1.0 - step / total) ** exponent

    return RunLR(optimizer, total_steps, factor)
