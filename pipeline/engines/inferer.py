"""Whole-image prediction by sliding window, with flip test-time augmentation.

:func:`sliding_window_inference` is a drop-in for ``monai.inferers.sliding_window_inference``
(same arguments where they mean the same, same window positions, same Gaussian weights, same
result in fp32) written for speed, because MONAI's loop is slow where users feel it:

- the (padded) input is moved to the window device once, not window by window;
- the importance map and the normalisation map are built once per (size, window, overlap, mode)
  and kept on the device (MONAI rebuilds the map and re-adds it window by window on every call);
- blending accumulates in fp32 on the output device whatever the autocast dtype, and windows are
  weighted with one fused multiply-add into the accumulator, no per-window host round trip;
- flip TTA is batched with the windows (mirrored copies run in the same forward pass, nnU-Net
  style) instead of one whole sliding-window pass per flip;
- when the whole-volume output does not fit on the GPU it is stitched on the CPU, windows still
  computed on the GPU.

:func:`predict` is what the trainer's validation, ``medseg infer`` and ``medseg evaluate -c``
call: autocast, TTA, then softmax.
"""

from __future__ import annotations

import functools
import itertools
import warnings
from collections.abc import Callable, Sequence
from contextlib import nullcontext

import torch
import torch.nn.functional as F
from monai.data.utils import compute_importance_map, dense_patch_slices
from tqdm.auto import tqdm

__all__ = ["sliding_window_inference", "predict", "flip_sets", "autocast_dtype"]


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
    """Every subset of spatial axes (as dims of a ``BC...`` tensor), the empty one first."""
    axes = range(2, 2 + spatial_dims)
    return [combo for r in range(spatial_dims + 1) for combo in itertools.combinations(axes, r)]


def _scan_interval(image_size: Sequence[int], roi_size: Sequence[int], overlap: Sequence[float]) -> tuple[int, ...]:
    # MONAI's rule, so windows land where MONAI's do
    return tuple(
        r if r == s else max(int(r * (1 - o)), 1) for s, r, o in zip(image_size, roi_size, overlap, strict=True)
    )


@functools.lru_cache(maxsize=2)  # whole-image maps: keep few, they can be large
def _weights(
    image_size: tuple[int, ...],
    roi_size: tuple[int, ...],
    overlap: tuple[float, ...],
    mode: str,
    sigma_scale: tuple[float, ...],
    device: torch.device,
) -> tuple[list[tuple[slice, ...]], torch.Tensor, torch.Tensor]:
    """Window slices, the ``11HW[D]`` importance map and the inverse of the summed weights."""
    slices = dense_patch_slices(image_size, roi_size, _scan_interval(image_size, roi_size, overlap))
    importance = compute_importance_map(roi_size, mode=mode, sigma_scale=sigma_scale, device=device)
    importance = importance.to(torch.float32)[None, None]
    count = torch.zeros((1, 1, *image_size), dtype=torch.float32, device=device)
    for sl in slices:
        count[(slice(None), slice(None), *sl)] += importance
    return slices, importance, count.reciprocal_()


def sliding_window_inference(
    inputs: torch.Tensor,
    roi_size: Sequence[int] | int,
    sw_batch_size: int,
    predictor: Callable[[torch.Tensor], torch.Tensor | Sequence[torch.Tensor]],
    overlap: Sequence[float] | float = 0.25,
    mode: str = "constant",
    sigma_scale: Sequence[float] | float = 0.125,
    padding_mode: str = "constant",
    cval: float = 0.0,
    sw_device: torch.device | str | None = None,
    device: torch.device | str | None = None,
    progress: bool = False,
    *,
    flips: Sequence[tuple[int, ...]] = ((),),
) -> torch.Tensor:
    """Blend a predictor's window outputs over a whole image (MONAI's arguments and result).

    Args:
        inputs: ``BCHW[D]``, on any device.
        roi_size: window size; a non-positive entry means the whole image along that axis.
        sw_batch_size: network inputs per forward pass (windows × flips).
        predictor: maps ``NCHW[D]`` windows to ``NKHW[D]`` outputs of the same spatial size
            (a list/tuple: the first element is used, e.g. deep-supervision heads).
        overlap: window overlap in [0, 1), one value or one per axis.
        mode: ``constant`` or ``gaussian`` blending.
        sigma_scale: Gaussian sigma as a fraction of the window size.
        padding_mode / cval: how an input smaller than the window is padded.
        sw_device: where windows are computed (default: the input's device).
        device: where the output is stitched (default: the input's device); falls back to the CPU,
            with a warning, when the output does not fit there.
        progress: a progress bar over window batches.
        flips: tuples of dims to mirror each window along; outputs are mirrored back and averaged
            (``((),)`` = no TTA; :func:`flip_sets` gives all of them).

    Returns:
        ``BKHW[D]`` float32 blended outputs (logits if the predictor returns logits).
    """
    spatial_dims = inputs.ndim - 2
    roi = (roi_size,) * spatial_dims if isinstance(roi_size, int) else tuple(roi_size)
    if len(roi) != spatial_dims:
        raise ValueError(f"roi_size {roi} has {len(roi)} dims but inputs {tuple(inputs.shape)} have {spatial_dims}")
    ov = (overlap,) * spatial_dims if isinstance(overlap, (int, float)) else tuple(overlap)
    if any(not 0 <= o < 1 for o in ov):
        raise ValueError(f"overlap must be in [0, 1), got {overlap!r}")
    if sw_batch_size < 1:
        raise ValueError(f"sw_batch_size must be >= 1, got {sw_batch_size!r}")
    sig = (sigma_scale,) * spatial_dims if isinstance(sigma_scale, (int, float)) else tuple(sigma_scale)
    sw_device = torch.device(sw_device) if sw_device is not None else inputs.device
    device = torch.device(device) if device is not None else inputs.device
    flips = [tuple(f) for f in flips] or [()]

    batch, _, *orig = inputs.shape
    roi = tuple(s if r <= 0 else r for r, s in zip(roi, orig, strict=True))
    pad: list[int] = []
    for r, s in zip(reversed(roi), reversed(orig), strict=True):
        diff = max(r - s, 0)
        pad.extend([diff // 2, diff - diff // 2])
    x = torch.as_tensor(inputs)
    if x.device != sw_device:
        x = (x.pin_memory() if sw_device.type == "cuda" and x.device.type == "cpu" else x).to(
            sw_device, non_blocking=True
        )
    if any(pad):
        x = F.pad(x, pad, mode=padding_mode, value=cval) if padding_mode == "constant" else F.pad(x, pad, padding_mode)
    size = tuple(x.shape[2:])
    slices, importance, inv_count = _weights(size, roi, ov, mode, sig, sw_device)

    out: torch.Tensor | None = None
    n_flip = len(flips)
    per_step = max(1, sw_batch_size // n_flip)
    jobs = [(b, sl) for b in range(batch) for sl in slices]
    steps = range(0, len(jobs), per_step)
    for start in tqdm(steps, desc="windows", leave=False) if progress else steps:
        chunk = jobs[start : start + per_step]
        win = torch.cat([x[(slice(b, b + 1), slice(None), *sl)] for b, sl in chunk])
        if n_flip > 1:
            win = torch.cat([torch.flip(win, f) if f else win for f in flips])
        pred = predictor(win)
        if isinstance(pred, (list, tuple)):
            pred = pred[0]
        if tuple(pred.shape[2:]) != roi:
            raise ValueError(f"predictor returned windows of size {tuple(pred.shape[2:])}, expected {roi}")
        pred = pred.float()
        if n_flip > 1:
            parts = pred.split(len(chunk))
            pred = sum(torch.flip(p, f) if f else p for p, f in zip(parts, flips, strict=True)) / n_flip
        pred = pred * importance
        if out is None:
            out = _allocate((batch, pred.shape[1], *size), device)
        if out.device != pred.device:
            pred = pred.to(out.device)
        for (b, sl), p in zip(chunk, pred, strict=True):
            out[(b, slice(None), *sl)] += p
    assert out is not None  # there is always at least one window
    out *= inv_count.to(out.device)
    if any(pad):
        crop = tuple(slice(pad[2 * i], pad[2 * i] + s) for i, s in enumerate(reversed(orig)))[::-1]
        out = out[(slice(None), slice(None), *crop)]
    return out


def _allocate(shape: tuple[int, ...], device: torch.device) -> torch.Tensor:
    try:
        return torch.zeros(shape, dtype=torch.float32, device=device)
    except torch.OutOfMemoryError:
        if device.type == "cpu":
            raise
        gib = torch.Size(shape).numel() * 4 / 2**30
        warnings.warn(f"output of {gib:.1f} GiB does not fit on {device}; stitching on the CPU", stacklevel=3)
        return torch.zeros(shape, dtype=torch.float32)


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
    """Class probabilities for a whole image: sliding window, optional flip TTA, softmax.

    Args:
        network: in eval mode; returns logits ``BKHW[D]``.
        image: ``BCHW[D]``; may live on the CPU while windows run on ``device``.
        roi_size: window size (spatial).
        overlap / mode / sw_batch_size: as :func:`sliding_window_inference`.
        tta: average logits over mirrored windows along every subset of spatial axes (4 inputs per
            window in 2D, 8 in 3D), batched with the windows.
        amp_dtype: autocast dtype, or None for full precision.
        device: where windows are computed (default: the network's device).
        output_device: where the stitched output lives (default: ``device``).
        progress: a progress bar over window batches.

    Returns:
        Softmax probabilities ``BKHW[D]`` (float32) on ``output_device``.
    """
    if device is None:
        device = next(network.parameters()).device
    device = torch.device(device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    spatial_dims = image.ndim - 2

    def forward(x: torch.Tensor) -> torch.Tensor:
        ctx = torch.autocast(device.type, dtype=amp_dtype) if amp_dtype is not None else nullcontext()
        with ctx:
            out = network(x)
        return out[0] if isinstance(out, (list, tuple)) else out

    logits = sliding_window_inference(
        image,
        roi_size=tuple(roi_size),
        sw_batch_size=sw_batch_size,
        predictor=forward,
        overlap=overlap,
        mode=mode,
        sw_device=device,
        device=output_device if output_device is not None else device,
        progress=progress,
        flips=flip_sets(spatial_dims) if tta else ((),),
    )
    if logits.shape[1] == 1:
        return logits.sigmoid_()
    # in place: a 512³ volume's logits are already gigabytes
    logits -= logits.amax(dim=1, keepdim=True)
    logits.exp_()
    logits /= logits.sum(dim=1, keepdim=True)
    return logits
