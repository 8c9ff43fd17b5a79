"""Shared plumbing for our losses: MONAI's argument handling, stable log-probabilities,
N-D morphology and reductions.

Every loss here follows MONAI's ``_Loss`` API (``losses/dice.py``): ``include_background``,
``to_onehot_y``, ``sigmoid``, ``softmax``, ``other_act``, ``reduction``, ``batch``. Inputs are
cast to float32 first, so a bf16/fp16 network output under autocast gives a float32 loss.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable

import torch
import torch.nn.functional as F
from monai.networks import one_hot
from monai.utils import LossReduction
from torch.nn.modules.loss import _Loss

__all__ = ["SegLoss", "dilate", "erode", "log_probs"]

_PROB_EPS = 1e-12  # log clamp when the input is already a probability (no logits to work from)


class SegLoss(_Loss):
    """Base class holding MONAI's segmentation-loss arguments.

    Args:
        include_background: if False, channel 0 (background) is excluded.
        to_onehot_y: convert a class-index ``target`` (``B1HW[D]`` or ``BHW[D]``) to one-hot
            with ``input.shape[1]`` classes.
        sigmoid: apply a sigmoid to ``input`` (logits).
        softmax: apply a softmax over channels to ``input`` (logits).
        other_act: another activation, e.g. ``torch.tanh``; ``input`` is then treated as
            probabilities after it.
        reduction: ``"mean"``, ``"sum"`` or ``"none"`` over the per-item, per-class values
            (``"none"`` returns ``BK``, or ``K`` with ``batch=True``).
        batch: pool the batch before computing each class's value (one value per class).

    Raises:
        TypeError: ``other_act`` is not callable.
        ValueError: more than one activation, or an unknown ``reduction``.
    """

    def __init__(
        self,
        include_background: bool = True,
        to_onehot_y: bool = False,
        sigmoid: bool = False,
        softmax: bool = False,
        other_act: Callable | None = None,
        reduction: LossReduction | str = LossReduction.MEAN,
        batch: bool = False,
    ) -> None:
        try:
            reduction = LossReduction(reduction).value
        except ValueError:
            raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}") from None
        super().__init__(reduction=reduction)
        if other_act is not None and not callable(other_act):
            raise TypeError(f"other_act must be None or callable, got {type(other_act).__name__}")
        if int(sigmoid) + int(softmax) + int(other_act is not None) > 1:
            raise ValueError(
                f"choose at most one of sigmoid, softmax, other_act; got sigmoid={sigmoid!r}, softmax={softmax!r}, "
                f"other_act={other_act!r}"
            )
        self.include_background = include_background
        self.to_onehot_y = to_onehot_y
        self.sigmoid = sigmoid
        self.softmax = softmax
        self.other_act = other_act
        self.batch = batch

    # ------------------------------------------------------------------ input handling

    def prepare(
        self, input: torch.Tensor, target: torch.Tensor, convert: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """float32 ``input`` (still logits) and a one-hot float32 ``target`` of the same shape.

        With ``convert=False`` the target is only checked (a loss that does not read it skips
        the one-hot conversion) and returned as given.

        Raises:
            ValueError: not ``BNHW[D]``, or shapes that differ after one-hot conversion.
        """
        if input.dim() not in (4, 5):
            raise ValueError(f"{type(self).__name__} expects BNHW or BNHWD input, got shape {tuple(input.shape)}")
        # plain tensors: a MetaTensor from the data pipeline would drag its metadata (and
        # __torch_function__ overhead) through every op and out into the loss value
        input = input.as_subclass(torch.Tensor).float()
        target = target.as_subclass(torch.Tensor)
        n_pred = input.shape[1]
        if self.to_onehot_y:
            if n_pred == 1:
                warnings.warn("single channel prediction, `to_onehot_y=True` ignored.", stacklevel=3)
            else:
                if target.dim() == input.dim() - 1:
                    target = target.unsqueeze(1)
                if target.shape[1] != 1:
                    raise ValueError(
                        f"to_onehot_y=True needs class indices B1HW[D], got target {tuple(target.shape)} "
                        f"for input {tuple(input.shape)}"
                    )
                if not convert:
                    if target.shape[0] != input.shape[0] or target.shape[2:] != input.shape[2:]:
                        raise ValueError(
                            f"input and target shapes differ: input {tuple(input.shape)} vs target "
                            f"{tuple(target.shape)} (class indices must match input's batch and spatial axes)"
                        )
                    return input, target
                target = one_hot(target, num_classes=n_pred)
        if target.shape != input.shape:
            raise ValueError(
                f"input and target shapes differ: input {tuple(input.shape)} vs target {tuple(target.shape)}; "
                "give a one-hot target BNHW[D], or class indices B1HW[D] with to_onehot_y=True"
            )
        return input, target.float()

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        """Apply the configured activation."""
        if self.sigmoid:
            return torch.sigmoid(logits)
        if self.softmax:
            if logits.shape[1] == 1:
                warnings.warn("single channel prediction, `softmax=True` ignored.", stacklevel=3)
                return logits
            return torch.softmax(logits, dim=1)
        if self.other_act is not None:
            return self.other_act(logits)
        return logits

    def log_probs(self, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(log p, log(1 - p))`` computed stably from logits (see :func:`log_probs`)."""
        if self.softmax and logits.shape[1] == 1:
            warnings.warn("single channel prediction, `softmax=True` ignored.", stacklevel=3)
        act = "sigmoid" if self.sigmoid else "softmax" if self.softmax and logits.shape[1] > 1 else None
        if act is None and self.other_act is not None:
            return log_probs(self.other_act(logits), None)
        return log_probs(logits, act)

    def drop_background(self, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Remove channel 0 when ``include_background=False`` (with a warning for one channel)."""
        if self.include_background:
            return tensors
        if tensors[0].shape[1] == 1:
            warnings.warn("single channel prediction, `include_background=False` ignored.", stacklevel=3)
            return tensors
        return tuple(t[:, 1:] for t in tensors)

    # ------------------------------------------------------------------ reductions

    def pool(self, values: torch.Tensor) -> torch.Tensor:
        """Sum ``BK...`` values over the spatial axes, and over the batch when ``batch``."""
        values = values.flatten(2).sum(2)
        return values.sum(0) if self.batch else values

    def reduce(self, per_class: torch.Tensor) -> torch.Tensor:
        """Apply ``reduction`` to per-item, per-class values (``BK``, or ``K`` with ``batch``)."""
        if self.reduction == LossReduction.MEAN.value:
            return per_class.mean()
        if self.reduction == LossReduction.SUM.value:
            return per_class.sum()
        return per_class


def log_probs(x: torch.Tensor, activation: str | None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(log p, log(1 - p))`` for a ``BN...`` tensor, finite with finite gradients everywhere.

    Args:
        x: logits (``activation`` ``"sigmoid"`` or ``"softmax"``) or probabilities (``None``).
        activation: ``"sigmoid"``, ``"softmax"`` (over dim 1) or ``None``.

    For softmax, ``log(1 - p_k)`` would round to ``log(0)`` once ``p_k`` rounds to 1. Only the
    arg-max class can have ``p_k > 1/2``; for it we use the exact
    ``logsumexp_{j != k} x_j - logsumexp_j x_j``, and ``log1p(-p_k)`` (accurate for ``p_k <= 1/2``)
    for every other class, so memory stays ``O(N)`` rather than ``O(N²)``. Probabilities are
    clamped at ``1e-12`` before the log (torch's ``BCELoss`` clamps the log at -100).
    """
    if activation == "sigmoid":
        return F.logsigmoid(x), F.logsigmoid(-x)
    if activation == "softmax":
        lse = torch.logsumexp(x, dim=1, keepdim=True)
        log_p = x - lse
        top = x.argmax(dim=1, keepdim=True)
        rest = torch.logsumexp(x.scatter(1, top, float("-inf")), dim=1, keepdim=True) - lse
        # clamp so the discarded arg-max entry has a finite gradient (scatter zeroes it, and
        # 0 * inf would be nan)
        log_1mp = torch.log1p(-torch.exp(log_p.clamp(max=-math.log(2.0))))
        return log_p, log_1mp.scatter(1, top, rest)
    if activation is not None:
        raise ValueError(f"activation must be 'sigmoid', 'softmax' or None, got {activation!r}")
    p = x.clamp(0.0, 1.0)
    return torch.log(p.clamp(min=_PROB_EPS)), torch.log((1.0 - p).clamp(min=_PROB_EPS))


def _pool(x: torch.Tensor, radius: int) -> torch.Tensor:
    k = 2 * radius + 1
    if x.dim() == 4:
        return F.max_pool2d(x, k, stride=1, padding=radius)
    return F.max_pool3d(x, k, stride=1, padding=radius)


def dilate(x: torch.Tensor, radius: int = 1) -> torch.Tensor:
    """Grey dilation of ``BNHW[D]`` by a ``(2r+1)^n`` box (max filter); outside counts as -inf."""
    return _pool(x, radius)


def erode(x: torch.Tensor, radius: int = 1) -> torch.Tensor:
    """Grey erosion by a ``(2r+1)^n`` box (min filter); outside the array counts as +inf, so
    a mask touching the border is not eroded there (the border is not an object edge)."""
    return -_pool(-x, radius)
