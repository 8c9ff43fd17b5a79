"""Region loss + scheduled boundary loss, and the per-epoch weight schedules."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch.nn.modules.loss import _Loss

from pipeline.registry import LOSSES

__all__ = ["CompoundLoss", "SCHEDULES", "schedule_weights", "forward_with_extras"]

SCHEDULES = ("constant", "linear", "rebalance")

_DEFAULT_REGION = {"name": "dice_ce", "to_onehot_y": True, "softmax": True}
_DEFAULT_BOUNDARY = {"name": "boundary", "to_onehot_y": True, "softmax": True, "include_background": False}


def schedule_weights(
    schedule: str,
    epoch: int,
    *,
    alpha: float = 0.01,
    alpha_end: float = 1.0,
    ramp_epochs: int = 100,
    step: float = 0.01,
    region_floor: float = 0.1,
    alpha_max: float | None = None,
) -> tuple[float, float]:
    """``(region weight, boundary weight)`` at a 0-based ``epoch``: a pure function of the epoch.

    * ``constant``: ``(1, alpha)``.
    * ``linear``: ``(1, alpha → alpha_end)``, linear over ``ramp_epochs`` epochs, then flat.
    * ``rebalance``: Kervadec et al.'s schedule (``StealWeight`` in LIVIAETS/boundary-loss):
      region starts at 1 and boundary at ``alpha`` (0.01); each epoch ``step`` (0.01) moves
      from region to boundary, the region weight stopping at ``region_floor`` (0.1) while the
      boundary weight keeps growing, as in the reference (cap it with ``alpha_max``).

    ``alpha_max`` caps the boundary weight of every schedule.
    """
    if schedule == "constant":
        region, boundary = 1.0, alpha
    elif schedule == "linear":
        frac = 1.0 if ramp_epochs == 0 else min(epoch / ramp_epochs, 1.0)
        region, boundary = 1.0, alpha + (alpha_end - alpha) * frac
    elif schedule == "rebalance":
        region, boundary = max(region_floor, 1.0 - step * epoch), alpha + step * epoch
    else:
        raise ValueError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")
    if alpha_max is not None:
        boundary = min(boundary, alpha_max)
    # rounding keeps logged weights readable (0.3, not 0.30000000000000004)
    return round(region, 12), round(boundary, 12)


def forward_with_extras(loss: torch.nn.Module, input: Any, target: torch.Tensor, extra: Mapping[str, Any]) -> Any:
    """Call ``loss`` with the extra batch inputs it declares in ``extra_inputs`` (and only those)."""
    wanted = getattr(loss, "extra_inputs", ())
    return loss(input, target, **{k: v for k, v in extra.items() if k in wanted and v is not None})


def _build(spec: Mapping[str, Any] | str | torch.nn.Module, where: str) -> torch.nn.Module:
    """A term given as a built module (what a config gives: its terms are validated and built
    first, see :mod:`pipeline.sections`) or, from Python, as a registry name or mapping."""
    if isinstance(spec, torch.nn.Module):
        return spec
    if isinstance(spec, str):
        return LOSSES.build(spec)
    if isinstance(spec, Mapping) and "name" in spec:
        return LOSSES.build(spec["name"], **{k: v for k, v in spec.items() if k != "name"})
    raise TypeError(f"{where} must be a loss module or a mapping like {{name: dice_ce, ...}}, got {spec!r}")


@LOSSES.register("compound")
class CompoundLoss(_Loss):
    """``w_region(epoch) · region + w_boundary(epoch) · boundary``, for boundary losses that need
    a region term beside them (Kervadec et al. train ``GDL + α · boundary``).

    Both terms are registered losses given as YAML mappings (or built modules); the weights
    follow a schedule stepped once per epoch by the trainer through :meth:`set_epoch`.
    MONAI has no scheduled compound loss (``DiceCELoss`` has fixed weights).

    Trainer contract:
        * ``set_epoch(epoch)`` (0-based) sets the weights; they are a pure function of the epoch,
          so resuming just calls it again.
        * ``weights`` → ``{"region": w, "boundary": w}`` for logging.
        * ``extra_inputs``: the union of both terms' (``("dist",)`` with ``boundary``); pass them
          as keyword arguments, each term receives those it declares.

    Args:
        region: the region term, default ``{name: dice_ce, to_onehot_y: true, softmax: true}``.
        boundary: the boundary term, default ``{name: boundary, to_onehot_y: true,
            softmax: true, include_background: false}``.
        schedule: ``"constant"``, ``"linear"`` or ``"rebalance"`` (see :func:`schedule_weights`).
        alpha: boundary weight at epoch 0 (the constant weight for ``"constant"``).
        alpha_end: ``"linear"``: boundary weight after the ramp.
        ramp_epochs: ``"linear"``: epochs to go from ``alpha`` to ``alpha_end``.
        ramp: ``"linear"``: the *fraction of the run* (in (0, 1]) to go from ``alpha`` to
            ``alpha_end`` instead of ``ramp_epochs``, so the ramp fits any run length (and a run
            the trainer shortened to its time budget); the weights then follow
            :meth:`set_progress`, which the trainer calls after every step.
        step: ``"rebalance"``: weight moved from region to boundary per epoch.
        region_floor: ``"rebalance"``: the lowest region weight.
        alpha_max: optional cap on the boundary weight.

    Raises:
        ValueError: bad schedule or numbers; ConfigError (a ValueError) for a bad term mapping.

    Example (YAML)::

        loss:
          name: compound
          region: {name: dice_ce, to_onehot_y: true, softmax: true}
          boundary: {name: boundary, to_onehot_y: true, softmax: true, include_background: false}
          schedule: rebalance
    """

    def __init__(
        self,
        region: Mapping[str, Any] | str | torch.nn.Module | None = None,
        boundary: Mapping[str, Any] | str | torch.nn.Module | None = None,
        schedule: str = "rebalance",
        alpha: float = 0.01,
        alpha_end: float = 1.0,
        ramp_epochs: int = 100,
        step: float = 0.01,
        region_floor: float = 0.1,
        alpha_max: float | None = None,
        ramp: float | None = None,
    ) -> None:
        super().__init__()
        if schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")
        for name, value in (("alpha", alpha), ("alpha_end", alpha_end), ("step", step)):
            if value < 0:
                raise ValueError(f"{name} must be >= 0, got {value!r}")
        if isinstance(ramp_epochs, bool) or not isinstance(ramp_epochs, int) or ramp_epochs < 0:
            raise ValueError(f"ramp_epochs must be an int >= 0, got {ramp_epochs!r}")
        if ramp is not None and not (isinstance(ramp, (int, float)) and 0.0 < ramp <= 1.0):
            raise ValueError(f"ramp must be a fraction of the run in (0, 1], got {ramp!r}")
        if ramp is not None and schedule != "linear":
            raise ValueError(f"ramp is a setting of schedule 'linear', not {schedule!r}")
        if not 0.0 <= region_floor <= 1.0:
            raise ValueError(f"region_floor must be in [0, 1], got {region_floor!r}")
        if alpha_max is not None and alpha_max < alpha:
            raise ValueError(f"alpha_max must be >= alpha ({alpha!r}), got {alpha_max!r}")
        self.region = _build(region if region is not None else _DEFAULT_REGION, "region")
        self.boundary = _build(boundary if boundary is not None else _DEFAULT_BOUNDARY, "boundary")
        self.schedule = schedule
        self.ramp = None if ramp is None else float(ramp)
        self.progress = 0.0
        self._schedule_args = {
            "alpha": alpha,
            "alpha_end": alpha_end,
            "ramp_epochs": ramp_epochs,
            "step": step,
            "region_floor": region_floor,
            "alpha_max": alpha_max,
        }
        extras = getattr(self.region, "extra_inputs", ()) + getattr(self.boundary, "extra_inputs", ())
        self.extra_inputs: tuple[str, ...] = tuple(dict.fromkeys(extras))
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        """Set the weights for a 0-based ``epoch`` (call at the start of every epoch).

        Raises:
            ValueError: ``epoch`` is not an int >= 0.
        """
        if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
            raise ValueError(f"epoch must be an int >= 0, got {epoch!r}")
        self.epoch = epoch
        for term in (self.region, self.boundary):  # nested schedulable terms follow along
            if hasattr(term, "set_epoch"):
                term.set_epoch(epoch)
        self._update_weights()

    def set_progress(self, fraction: float) -> None:
        """The fraction of the run done (0 to 1); moves a ``ramp`` schedule, no effect otherwise."""
        self.progress = min(1.0, max(0.0, float(fraction)))
        for term in (self.region, self.boundary):
            if hasattr(term, "set_progress"):
                term.set_progress(self.progress)
        self._update_weights()

    def _update_weights(self) -> None:
        if self.ramp is None:
            self.region_weight, self.boundary_weight = schedule_weights(
                self.schedule, self.epoch, **self._schedule_args
            )
            return
        # the linear ramp over a fraction of the run (what ramp_epochs does over epochs)
        alpha, end, cap = (self._schedule_args[k] for k in ("alpha", "alpha_end", "alpha_max"))
        boundary = alpha + (end - alpha) * min(1.0, self.progress / self.ramp)
        self.region_weight, self.boundary_weight = 1.0, round(boundary if cap is None else min(boundary, cap), 12)

    @property
    def weights(self) -> dict[str, float]:
        """Current ``{"region": w, "boundary": w}``."""
        return {"region": self.region_weight, "boundary": self.boundary_weight}

    def forward(self, input: torch.Tensor, target: torch.Tensor, **extra: Any) -> torch.Tensor:
        """Weighted sum of both terms; ``extra`` holds batch inputs such as ``dist``.

        Raises:
            ValueError: a term that does not reduce to a scalar (``reduction="none"``).
        """
        region = forward_with_extras(self.region, input, target, extra)
        boundary = forward_with_extras(self.boundary, input, target, extra)
        if region.dim() or boundary.dim():
            raise ValueError(
                f"compound terms must reduce to scalars, got shapes {tuple(region.shape)} and "
                f"{tuple(boundary.shape)}; use reduction 'mean' or 'sum'"
            )
        return self.region_weight * region + self.boundary_weight * boundary
