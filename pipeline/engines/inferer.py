"""Whole-image prediction by sliding window, with optional flip test-time augmentation.

This module is the single place where a trained network meets a whole image or volume: the
trainer's validation, ``medseg infer`` and ``medseg evaluate -c`` all call :func:`predict`.
The window loop itself is MONAI's ``sliding_window_inference``.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from contextlib import nullcontext

import torch
from monai.inferers import sliding_window_inference

__all__ = ["predict", "flip_sets", "autocast_dtype"]


def autocast_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    """Map an ``amp`` setting (auto, bf16, fp16, off) to an autocast dtype for ``device``."""
    if amp == "off":
        return None
    if amp == "auto":
        return torch.bfloat16 if device.type == "cuda" else None
    if amp == "bf16":
        return torch.bfloat16
    if amp == "fp16":
        return torch.float16
    raise ValueError(f"amp must be one of auto, bf16, fp16, off; got {amp!r}")


def flip_sets(spatial_dims: int) -> list[tuple[int, ...]]:
    """Every subset of spatial axes (as tensor dims of a ``BC...`` tensor), the empty one first."""
    axes = range(2, 2 + spatial_dims)
    return [combo for r in range(spatial_dims + 1) for combo in itertools.combinations(axes, r)]


@torch.no_grad()
def predict(
    network: torch.nn.Module,
    image: torch.Tensor,
    *,
    roi_size: Sequence[int],
    overlap: float = 0.5,
    mode: str = "gaussian",
    sw_batch_size: int = 4,
    tta: bool = False,
    amp_dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
    output_device: torch.device | str | None = None,
    progress: bool = False,
) -> torch.Tensor:
    """Class probabilities for a whole image by sliding-window inference.

    Args:
        network: in eval mode; returns logits ``BKHW[D]``.
        image: ``BCHW[D]``; may live on the CPU while windows run on ``device``.
        roi_size: window size (spatial).
        overlap: fraction of window overlap in [0, 1).
        mode: ``gaussian`` or ``constant`` blending.
        sw_batch_size: windows per forward pass.
        tta: average the probabilities over flips along every subset of spatial axes (4 passes in
            2D, 8 in 3D), each flipped back before averaging.
        amp_dtype: autocast dtype, or None for full precision.
        device: where windows are computed (default: the network's device).
        output_device: where the stitched output lives (default: ``device``); use ``"cpu"`` when
            the whole-volume output does not fit on the GPU.
        progress: show a progress bar over windows.

    Returns:
        Softmax probabilities ``BKHW[D]`` (float32) on ``output_device``.
    """
    if not 0.0 <= overlap < 1.0:
        raise ValueError(f"overlap must be in [0, 1), got {overlap!r}")
    if device is None:
        device = next(network.parameters()).device
    device = torch.device(device)
    output_device = torch.device(output_device) if output_device is not None else device
    spatial_dims = image.ndim - 2
    if len(roi_size) != spatial_dims:
        raise ValueError(
            f"roi_size {tuple(roi_size)} has {len(roi_size)} dims, image {tuple(image.shape)} has {spatial_dims}"
        )

    def forward(x: torch.Tensor) -> torch.Tensor:
        ctx = torch.autocast(device.type, dtype=amp_dtype) if amp_dtype is not None else nullcontext()
        with ctx:
            out = network(x)
        if isinstance(out, (list, tuple)):  # deep supervision left on: keep full resolution
            out = out[0]
        return out.float()

    flips = flip_sets(spatial_dims) if tta else [()]
    total: torch.Tensor | None = None
    for dims in flips:
        x = torch.flip(image, dims) if dims else image
        logits = sliding_window_inference(
            x,
            roi_size=tuple(roi_size),
            sw_batch_size=sw_batch_size,
            predictor=forward,
            overlap=overlap,
            mode=mode,
            sw_device=device,
            device=output_device,
            progress=progress,
        )
        probs = torch.softmax(torch.as_tensor(logits).float(), dim=1)
        if dims:
            probs = torch.flip(probs, dims)
        total = probs if total is None else total.add_(probs)
    assert total is not None
    return total / len(flips)
