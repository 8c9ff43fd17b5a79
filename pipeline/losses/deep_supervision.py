"""Deep supervision: one loss over the full-resolution head and the lower-resolution ones."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch.nn.modules.loss import _Loss

from pipeline.losses.compound import forward_with_extras

__all__ = ["DeepSupervisionLoss", "halving_weights"]


def halving_weights(levels: int) -> list[float]:
    """nnU-Net's head weights ``1, 1/2, 1/4, ...`` normalised to sum to 1."""
    raw = [0.5**i for i in range(levels)]
    total = sum(raw)
    return [w / total for w in raw]


class DeepSupervisionLoss(_Loss):
    """Weighted sum of ``loss`` over the heads of a deeply supervised network.

    Each head gets the target resized to its spatial shape (nearest, so class indices stay
    class indices) and every extra input resized (linear interpolation: distance maps stay in
    physical units, so a down-sampled map is still a valid map of the down-sampled target).
    The trainer wraps the configured loss in it when the network has deep supervision.

    Differences from ``monai.losses.DeepSupervisionLoss``: extra inputs (``dist``) are resized
    and forwarded, ``set_epoch``/``weights``/``extra_inputs`` of the wrapped loss pass through,
    and the default weights are normalised to sum to 1 (so the loss scale does not grow with
    the number of heads). nnU-Net also zeroes the lowest head; we keep it.

    Args:
        loss: the loss applied to every head.
        head_weights: one weight per head, full resolution first; ``None``: halving weights
            ``1, 1/2, 1/4, ...`` normalised to sum to 1 for however many heads arrive.

    Shapes:
        input: a tensor ``BNHW[D]`` (passed straight to ``loss``) or a sequence of heads
        ``BNH_iW_i[D_i]``, full resolution first; target at full resolution ``B1HW[D]`` or
        ``BNHW[D]``; extra inputs ``B?HW[D]`` at full resolution.

    Raises:
        ValueError: negative or all-zero ``head_weights``; at forward, a weight count that
            differs from the number of heads, or no heads.
    """

    def __init__(self, loss: torch.nn.Module, head_weights: Sequence[float] | None = None) -> None:
        super().__init__()
        if head_weights is not None:
            head_weights = [float(w) for w in head_weights]
            if not head_weights or any(w < 0 for w in head_weights) or sum(head_weights) == 0:
                raise ValueError(f"head_weights must be non-negative and not all zero, got {head_weights!r}")
        self.loss = loss
        self.head_weights = head_weights
        self.extra_inputs: tuple[str, ...] = tuple(getattr(loss, "extra_inputs", ()))

    def set_epoch(self, epoch: int) -> None:
        """Forward the epoch to the wrapped loss when it is scheduled."""
        if hasattr(self.loss, "set_epoch"):
            self.loss.set_epoch(epoch)

    def set_progress(self, fraction: float) -> None:
        """Forward the fraction of the run done to the wrapped loss when it follows it."""
        if hasattr(self.loss, "set_progress"):
            self.loss.set_progress(fraction)

    @property
    def weights(self) -> dict[str, float]:
        """The wrapped loss's current term weights (for logging); ``{}`` when it has none."""
        return dict(getattr(self.loss, "weights", {}))

    def forward(self, input: torch.Tensor | Sequence[torch.Tensor], target: torch.Tensor, **extra: Any) -> torch.Tensor:
        """Loss of one head or the weighted sum over a sequence of heads."""
        if isinstance(input, torch.Tensor):
            return forward_with_extras(self.loss, input, target, extra)
        heads = list(input)
        if not heads:
            raise ValueError("deep supervision got no heads (an empty sequence)")
        weights = self.head_weights if self.head_weights is not None else halving_weights(len(heads))
        if len(weights) != len(heads):
            raise ValueError(f"head_weights has {len(weights)} values but the network returned {len(heads)} heads")
        total = torch.zeros((), device=heads[0].device)
        for head, weight in zip(heads, weights, strict=True):
            if weight == 0:
                continue
            size = tuple(head.shape[2:])
            head_target = _resize(target, size, "nearest-exact")
            head_extra = {k: _resize_extra(v, size) for k, v in extra.items()}
            total = total + weight * forward_with_extras(self.loss, head, head_target, head_extra)
        return total


def _resize(x: torch.Tensor, size: tuple[int, ...], mode: str) -> torch.Tensor:
    if x.dim() == len(size) + 1:  # BHW[D] class indices without a channel axis
        return _resize(x.unsqueeze(1), size, mode).squeeze(1)
    if tuple(x.shape[2:]) == size:
        return x
    if mode == "nearest-exact":
        return F.interpolate(x.float(), size=size, mode=mode).to(x.dtype)
    return F.interpolate(x.float(), size=size, mode=mode, align_corners=False)


def _resize_extra(x: Any, size: tuple[int, ...]) -> Any:
    if not isinstance(x, torch.Tensor) or x.dim() != len(size) + 2:
        return x
    return _resize(x, size, "bilinear" if len(size) == 2 else "trilinear")
