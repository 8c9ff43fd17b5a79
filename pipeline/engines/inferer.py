"""Whole-image prediction by sliding window, with flip test-time augmentation.

:func:`sliding_window_inference` is a drop-in for ``monai.inferers.sliding_window_inference``
(same arguments where they mean the same, same window positions, same Gaussian weights, same
result in fp32) written for speed, because MONAI's loop is slow where users feel it:

- the (padded) input is moved to the window device once (pinned, non-blocking), not window by
  window, and ``MetaTensor`` inputs are unwrapped so no network op pays for metadata tracking;
- the importance map and the normalisation map are built once per (size, window, overlap, mode)
  and kept on the device in the caller's bounded :class:`WindowCache` (MONAI rebuilds the map and
  re-adds it window by window on every call);
- blending accumulates in fp32 whatever the autocast dtype, one fused kernel per window
  (``addcmul_``: dtype conversion, weighting and accumulation in one pass), and nothing in the
  loop waits for the device;
- window batches are balanced (147 windows at a limit of 16 run as 10 batches of at most 15, not
  9 of 16 and one of 3), can be padded to one static shape (``torch.compile``, cuDNN's per-shape
  algorithm search), and ``sw_batch_size="auto"`` sizes them from free GPU memory;
- flip TTA is batched with the windows (mirrored copies run in the same forward pass, nnU-Net
  style) instead of one whole sliding-window pass per flip;
- a forward pass that runs out of GPU memory is retried with half the batch; an output that does
  not fit on the GPU is stitched on the CPU while the GPU computes the next batch (pinned
  double buffers, CUDA events), nnU-Net's fallback without its full stop.

:func:`predict` is what the trainer's validation, ``medseg infer`` and ``medseg evaluate -c``
call: :class:`WindowPredictor` (autocast, memory format, optional ``torch.compile``), TTA, then
:func:`activation` (softmax, or sigmoid for a single-channel network); :func:`to_labels` turns
probabilities into class indices. Nothing here changes global state (``cudnn.benchmark``, caches
that outlive a call unless the caller passes its own :class:`WindowCache`).
"""

from __future__ import annotations

import functools
import itertools
import math
import numbers
import warnings
import weakref
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from monai.data.utils import compute_importance_map, dense_patch_slices
from tqdm.auto import tqdm

from pipeline.runtime import cpu_has_bf16

__all__ = [
    "sliding_window_inference",
    "predict",
    "WindowPredictor",
    "auto_batch_size",
    "balanced_batch_size",
    "flip_sets",
    "autocast_dtype",
    "autocast",
    "needs_grad_scaler",
    "activation",
    "to_labels",
    "SIGMOID_THRESHOLD",
    "plan_windows",
    "run_windows",
    "Stitcher",
    "WindowPlan",
    "WindowCache",
    "prefers_channels_last",
    "AUTO_MAX_INPUTS",
    "CPU_AUTO_INPUTS",
]

AUTO_MAX_INPUTS = 32
"""Upper limit of ``sw_batch_size="auto"`` on a GPU (network inputs, flips included)."""
CPU_AUTO_INPUTS = 4
"""``sw_batch_size="auto"`` on the CPU, where memory is rarely the limit: 8 or 16 windows of 32³
per batch gained nothing consistent over 4 for our networks (2 threads), 1 or 2 were 2-4× slower."""
MEMORY_FRACTION = 0.8
"""Share of the free GPU memory that ``sw_batch_size="auto"`` lets window batches use."""


def autocast_dtype(amp: str, device: torch.device, *, inference: bool = False) -> torch.dtype | None:
    """Map an ``amp`` setting (auto, bf16, fp16, off) to an autocast dtype for ``device``.

    ``auto`` on CUDA is bf16 for training (no loss scaling needed) and fp16 for inference
    (``inference=True``): the same tensor-core rate with 3 more mantissa bits. With random
    weights, on the CT-like volume of ``bench/inference.py``, bf16 windows left 98.8 %
    (DynUNet) to 99.9 % of voxels with the fp32 argmax, fp16 windows 99.85 % to 100 %
    (:func:`predict` falls back to bf16 if fp16 overflows).

    ``auto`` on the CPU is bf16 for training where the CPU multiplies bf16 natively
    (:func:`pipeline.runtime.cpu_has_bf16`: AVX-512-BF16 or AMX), off elsewhere and off for
    inference (below CUDA's 99.5 % argmax agreement on some networks). ``bench/amp.py`` measured
    the step speed and the test Dice of fp32 and bf16 training under the same time budget.
    """
    if amp == "off":
        return None
    if amp == "auto":
        if device.type == "cpu":
            return torch.bfloat16 if not inference and cpu_has_bf16() else None
        if device.type != "cuda":
            return None
        return torch.float16 if inference else torch.bfloat16
    if amp == "bf16":
        return torch.bfloat16
    if amp == "fp16":
        return torch.float16
    raise ValueError(f"amp must be one of auto, bf16, fp16, off; got {amp!r}")


def autocast(device: torch.device | str, dtype: torch.dtype | None):
    """The autocast context of ``dtype`` on ``device`` (from :func:`autocast_dtype`); a no-op for None.

    The one AMP policy of training and inference: the trainer's forward pass and
    :class:`WindowPredictor` both enter this context.
    """
    if dtype is None:
        return nullcontext()
    return torch.autocast(torch.device(device).type, dtype=dtype)


def needs_grad_scaler(dtype: torch.dtype | None) -> bool:
    """Whether training in ``dtype`` needs loss scaling (fp16 only: bf16 has fp32's range)."""
    return dtype == torch.float16


SIGMOID_THRESHOLD = 0.5
"""Foreground probability from which a single-channel (sigmoid) output labels a voxel foreground."""


def activation(logits: torch.Tensor, *, dim: int = 1, inplace: bool = False) -> torch.Tensor:
    """Class probabilities from logits: sigmoid for a single-channel output, softmax otherwise.

    A network with ``out_channels: 1`` is a binary task trained with a sigmoid loss (its one
    channel is the foreground); with more channels each is a class. This function and
    :func:`to_labels` are where that is decided, for validation, inference, TTA and evaluation.

    Args:
        logits: ``BKHW[D]`` (or ``KHW[D]`` with ``dim=0``).
        dim: the channel axis.
        inplace: overwrite ``logits`` (a 512³ volume's logits are already gigabytes).

    Returns:
        Probabilities of the same shape: ``K`` channels summing to 1, or one foreground channel.

    Example:
        >>> activation(torch.tensor([[0.0]])).tolist(), activation(torch.tensor([[0.0, 0.0]])).tolist()
        ([[0.5]], [[0.5, 0.5]])
    """
    if logits.shape[dim] == 1:
        return logits.sigmoid_() if inplace else logits.sigmoid()
    if not inplace:
        return torch.softmax(logits, dim=dim)
    logits -= logits.amax(dim=dim, keepdim=True)
    logits.exp_()
    logits /= logits.sum(dim=dim, keepdim=True)
    return logits


def to_labels(probabilities: torch.Tensor, *, dim: int = 1, keepdim: bool = False) -> torch.Tensor:
    """Class indices from :func:`activation`'s probabilities: ``p > 0.5`` for a single-channel
    output (0 background, 1 foreground), the argmax over ``K`` channels otherwise.

    Args:
        probabilities: ``BKHW[D]`` (or ``KHW[D]`` with ``dim=0``).
        dim: the channel axis.
        keepdim: keep the channel axis (of size 1).

    Returns:
        int64 class indices.

    Example:
        >>> to_labels(torch.tensor([[0.2, 0.7]]), dim=0).tolist()
        [0, 1]
        >>> to_labels(torch.tensor([[0.2, 0.7], [0.8, 0.3]]), dim=0).tolist()
        [1, 0]
    """
    if probabilities.shape[dim] == 1:
        labels = (probabilities > SIGMOID_THRESHOLD).long()
        return labels if keepdim else labels.squeeze(dim)
    return probabilities.argmax(dim, keepdim=keepdim)


def flip_sets(spatial_dims: int, axes: Sequence[int] | None = None) -> list[tuple[int, ...]]:
    """Every subset of the spatial ``axes`` (0-based spatial; default all) as dims of a ``BC...``
    tensor, the empty one first.

    Flip TTA mirrors the axes the training augmentation flips (``transforms.augment.flip.axes``,
    every axis by default, as nnU-Net mirrors every axis, anisotropic data included): those are
    the mirror images the network was trained to be invariant to; a flip it never saw in
    training is not a test-time augmentation but a different input.
    """
    dims = range(spatial_dims) if axes is None else sorted({int(a) for a in axes})
    if any(not 0 <= a < spatial_dims for a in dims):
        raise ValueError(f"flip axes must be in 0..{spatial_dims - 1}, got {list(axes or ())}")
    chosen = [2 + a for a in dims]
    return [combo for r in range(len(chosen) + 1) for combo in itertools.combinations(chosen, r)]


def auto_batch_size(
    per_input_bytes: int,
    free_bytes: int,
    *,
    n_inputs: int,
    cap: int = AUTO_MAX_INPUTS,
    fraction: float = MEMORY_FRACTION,
) -> int:
    """Network inputs per forward pass that fit in ``fraction`` of ``free_bytes``.

    Args:
        per_input_bytes: peak memory one input needs (activations, workspace), measured.
        free_bytes: memory free on the device, the output accumulator already allocated.
        n_inputs: inputs there are in all (windows × flips); no batch is larger.
        cap: upper limit (larger batches stop paying once the GPU is full).
        fraction: share of ``free_bytes`` to use (the rest absorbs fragmentation).

    Returns:
        A batch size in ``[1, min(cap, n_inputs)]``.
    """
    fit = int(free_bytes * fraction) // max(int(per_input_bytes), 1)
    return max(1, min(cap, n_inputs, fit))


def balanced_batch_size(n_jobs: int, limit: int) -> int:
    """The smallest batch size that needs as few batches as ``limit`` does for ``n_jobs`` jobs."""
    if n_jobs < 1 or limit < 1:
        raise ValueError(f"n_jobs and limit must be >= 1, got {n_jobs!r} and {limit!r}")
    return math.ceil(n_jobs / math.ceil(n_jobs / limit))


def _scan_interval(image_size: Sequence[int], roi_size: Sequence[int], overlap: Sequence[float]) -> tuple[int, ...]:
    # MONAI's rule, so windows land where MONAI's do
    return tuple(
        r if r == s else max(int(r * (1 - o)), 1) for s, r, o in zip(image_size, roi_size, overlap, strict=True)
    )


@dataclass(frozen=True)
class WindowPlan:
    """Where the windows of one (padded) image size go and how they are weighted.

    Attributes:
        slices: one tuple of spatial slices per window, in MONAI's order.
        importance: ``11HW[D]`` float32 blending weights of one window.
        inv_count: ``11HW[D]`` float32 inverse of the summed weights over the whole image.
    """

    slices: list[tuple[slice, ...]]
    importance: torch.Tensor
    inv_count: torch.Tensor


def plan_windows(
    image_size: Sequence[int],
    roi_size: Sequence[int],
    overlap: Sequence[float],
    mode: str = "constant",
    sigma_scale: Sequence[float] | float = 0.125,
    device: torch.device | str = "cpu",
) -> WindowPlan:
    """Window positions (MONAI's), the importance map and the normalisation map for one image size.

    Args:
        image_size: spatial size of the (already padded) image, no smaller than ``roi_size``.
        roi_size: window size, one positive value per axis.
        overlap: overlap per axis, in [0, 1).
        mode / sigma_scale: as :func:`sliding_window_inference`.
        device: where the maps live.

    Example:
        >>> plan = plan_windows((24, 16), (16, 16), (0.5, 0.5))
        >>> [tuple((int(s.start), int(s.stop)) for s in sl) for sl in plan.slices]
        [((0, 16), (0, 16)), ((8, 24), (0, 16))]
        >>> plan.inv_count[0, 0, :, 0].tolist()[6:10]
        [1.0, 1.0, 0.5, 0.5]
    """
    image_size, roi_size = tuple(image_size), tuple(roi_size)
    sig = (sigma_scale,) * len(roi_size) if isinstance(sigma_scale, (int, float)) else tuple(sigma_scale)
    slices = dense_patch_slices(image_size, roi_size, _scan_interval(image_size, roi_size, tuple(overlap)))
    importance = compute_importance_map(roi_size, mode=mode, sigma_scale=sig, device=device)
    importance = importance.to(torch.float32)[None, None]
    count = torch.zeros((1, 1, *image_size), dtype=torch.float32, device=device)
    for sl in slices:
        count[(slice(None), slice(None), *sl)] += importance
    return WindowPlan(slices, importance, count.reciprocal_())


class WindowCache:
    """The most recent window plans, so repeated calls on one image size build them once.

    Plans hold whole-image maps (512 MiB each at 512³), so the cache is bounded and belongs to its
    owner (a trainer's validation, a :class:`~pipeline.engines.predictor.Predictor`), never to the
    process: it goes when the owner goes, or on :meth:`clear`.

    Args:
        maxsize: plans kept (least recently used dropped first); 0 keeps none.
    """

    def __init__(self, maxsize: int = 2) -> None:
        if maxsize < 0:
            raise ValueError(f"maxsize must be >= 0, got {maxsize!r}")
        self.maxsize = maxsize
        self._plans: OrderedDict[tuple, WindowPlan] = OrderedDict()

    def plan(
        self,
        image_size: tuple[int, ...],
        roi_size: tuple[int, ...],
        overlap: tuple[float, ...],
        mode: str,
        sigma_scale: tuple[float, ...],
        device: torch.device,
    ) -> WindowPlan:
        """:func:`plan_windows` for these settings, built on first use."""
        key = (image_size, roi_size, overlap, mode, sigma_scale, torch.device(device))
        if key in self._plans:
            self._plans.move_to_end(key)
            return self._plans[key]
        plan = plan_windows(image_size, roi_size, overlap, mode, sigma_scale, device)
        if self.maxsize:
            self._plans[key] = plan
            while len(self._plans) > self.maxsize:
                self._plans.popitem(last=False)
        return plan

    def clear(self) -> None:
        """Drop every plan (and the device memory it holds)."""
        self._plans.clear()

    def __len__(self) -> int:
        return len(self._plans)


def _measures_memory(device: torch.device) -> bool:
    """Whether ``sw_batch_size="auto"`` can measure memory on ``device`` (CUDA only)."""
    return device.type == "cuda"


def _free_bytes(device: torch.device) -> int:
    """Free device memory plus what PyTorch's caching allocator holds unused."""
    free, _ = torch.cuda.mem_get_info(device)
    return free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)


def _probe(fn: Callable[[], torch.Tensor], device: torch.device, n_inputs: int) -> tuple[torch.Tensor, int]:
    """Run ``fn`` (one window, all its flips): its output and the peak memory per network input."""
    torch.cuda.synchronize(device)
    base = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    out = fn()
    peak = torch.cuda.max_memory_allocated(device) - base
    return out, max(peak, 1) // n_inputs


def _first(pred: torch.Tensor | Sequence[torch.Tensor]) -> torch.Tensor:
    return pred[0] if isinstance(pred, (list, tuple)) else pred


class _HostStitcher:
    """Accumulate GPU window batches into a CPU tensor while the GPU computes the next batch.

    Each weighted batch is copied into one of two pinned buffers without blocking; the previous
    batch is added on the CPU after its copy's event has completed, so the CPU adds batch *k*
    while the GPU runs batch *k + 1*.
    """

    def __init__(self, out: torch.Tensor) -> None:
        self.out = out
        self.buffers: list[torch.Tensor | None] = [None, None]
        self.turn = 0
        self.pending: tuple[list[tuple[int, tuple[slice, ...]]], torch.Tensor, torch.cuda.Event] | None = None

    def push(self, chunk: list[tuple[int, tuple[slice, ...]]], weighted: torch.Tensor) -> None:
        buf = self.buffers[self.turn]
        if buf is None or buf.shape != weighted.shape:
            buf = torch.empty(weighted.shape, dtype=torch.float32, pin_memory=True)
            self.buffers[self.turn] = buf
        buf.copy_(weighted, non_blocking=True)
        done = torch.cuda.Event()
        done.record()
        self.turn ^= 1
        self.drain()
        self.pending = (chunk, buf, done)

    def drain(self) -> None:
        if self.pending is None:
            return
        chunk, buf, done = self.pending
        done.synchronize()
        for (b, sl), p in zip(chunk, buf, strict=False):
            self.out[(b, slice(None), *sl)] += p
        self.pending = None


_TENSOR = object()  # the output key of a predictor that returns a tensor (or a list of heads)

Job = tuple[int, tuple[slice, ...]]  # (batch item, window slices)


def sliding_window_inference(
    inputs: torch.Tensor,
    roi_size: Sequence[int | None] | int | None,
    sw_batch_size: int | str,
    predictor: Callable[[torch.Tensor], torch.Tensor | Sequence[torch.Tensor] | Mapping[Any, torch.Tensor]],
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
    pad_batches: bool = False,
    cache: WindowCache | None = None,
) -> torch.Tensor | dict[Any, torch.Tensor]:
    """Blend a predictor's window outputs over a whole image (MONAI's arguments and result).

    Three steps, each its own function: :func:`plan_windows` (window slices and weights),
    :func:`run_windows` (forward batches, flips, memory fallbacks) and :class:`Stitcher`
    (weighted accumulation, normalisation, crop).

    Args:
        inputs: ``BCHW[D]``, on any device.
        roi_size: window size; an entry that is ``None`` or non-positive (or ``roi_size`` itself
            ``None``) means the whole image along that axis, as in MONAI.
        sw_batch_size: most network inputs per forward pass (windows × flips: with flip TTA the
            flips of one window are split over several passes when they do not fit); batches are
            balanced to the same size. ``"auto"``: as many as fit in free GPU memory, up
            to :data:`AUTO_MAX_INPUTS`, measured by one probe forward pass of one window and all
            its flips (the predictor's ``eager`` attribute if it has one, so a compiled network is
            not compiled twice; it resets CUDA's peak-memory statistics); :data:`CPU_AUTO_INPUTS`
            on the CPU.
        predictor: maps ``NCHW[D]`` windows to ``NKHW[D]`` outputs of the same spatial size
            (a list/tuple: the first element is used, e.g. deep-supervision heads; a dict: each
            value is blended and a dict is returned, as in MONAI).
        overlap: window overlap in [0, 1), one value or one per axis.
        mode: ``constant`` or ``gaussian`` blending.
        sigma_scale: Gaussian sigma as a fraction of the window size.
        padding_mode / cval: how an input smaller than the window is padded; ``cval`` only for
            ``constant`` padding.
        sw_device: where windows are computed (default: the input's device).
        device: where the output is stitched (default: the input's device); falls back to the CPU,
            with a warning, when the output does not fit there.
        progress: a progress bar over windows.
        flips: tuples of dims to mirror each window along; outputs are mirrored back and averaged
            (``((),)`` = no TTA; :func:`flip_sets` gives all of them).
        pad_batches: repeat the last window (or flip) so every forward pass has the same batch
            size (one shape for ``torch.compile`` and cuDNN's algorithm search); repeats are
            discarded.
        cache: window plans to reuse across calls (see :class:`WindowCache`); ``None``: built for
            this call only.

    Returns:
        ``BKHW[D]`` float32 blended outputs (logits if the predictor returns logits), or a dict of
        them when the predictor returns a dict.

    Raises:
        ValueError: for inconsistent sizes or out-of-range settings.
        TypeError: a predictor output that is not a tensor (or a list/dict of tensors).
        torch.OutOfMemoryError: when even one window with one flip does not fit on the window device.
    """
    spatial_dims = inputs.ndim - 2
    if roi_size is None or isinstance(roi_size, numbers.Integral):
        roi_in: tuple = (roi_size,) * spatial_dims
    else:
        roi_in = tuple(roi_size)
    if len(roi_in) != spatial_dims:
        raise ValueError(
            f"roi_size {roi_in} has {len(roi_in)} dims but inputs {tuple(inputs.shape)} have {spatial_dims}"
        )
    if any(r is not None and (isinstance(r, bool) or not isinstance(r, numbers.Integral)) for r in roi_in):
        raise TypeError(f"roi_size entries must be integers or None, got {roi_size!r}")
    ov = (overlap,) * spatial_dims if isinstance(overlap, (int, float)) else tuple(overlap)
    if any(not 0 <= o < 1 for o in ov):
        raise ValueError(f"overlap must be in [0, 1), got {overlap!r}")
    auto = sw_batch_size == "auto"
    if not auto and (not isinstance(sw_batch_size, int) or isinstance(sw_batch_size, bool) or sw_batch_size < 1):
        raise ValueError(f"sw_batch_size must be >= 1 or 'auto', got {sw_batch_size!r}")
    if padding_mode != "constant" and cval != 0:
        raise ValueError(f"cval applies to padding_mode='constant' only; got cval={cval!r} with {padding_mode!r}")
    sig = (sigma_scale,) * spatial_dims if isinstance(sigma_scale, (int, float)) else tuple(sigma_scale)
    x = torch.as_tensor(inputs)
    if type(x) is not torch.Tensor:  # MetaTensor: metadata tracking costs every network op
        x = x.as_subclass(torch.Tensor)
    sw_device = torch.device(sw_device) if sw_device is not None else x.device
    device = torch.device(device) if device is not None else x.device
    flips = [tuple(f) for f in flips] or [()]
    cache = cache if cache is not None else WindowCache()

    batch, _, *orig = x.shape
    roi = tuple(s if r is None or r <= 0 else int(r) for r, s in zip(roi_in, orig, strict=True))
    pad: list[int] = []
    for r, s in zip(reversed(roi), reversed(orig), strict=True):
        diff = max(r - s, 0)
        pad.extend([diff // 2, diff - diff // 2])
    if x.device != sw_device:
        pinned = sw_device.type == "cuda" and x.device.type == "cpu"
        x = (x.pin_memory() if pinned else x).to(sw_device, non_blocking=True)
    if any(pad):
        x = F.pad(x, pad, mode=padding_mode, value=cval) if padding_mode == "constant" else F.pad(x, pad, padding_mode)
    size = tuple(x.shape[2:])
    plan = cache.plan(size, roi, ov, mode, sig, sw_device)
    jobs = [(b, sl) for b in range(batch) for sl in plan.slices]
    # the flip average's 1 / n_flip folded into the weights: one multiply fewer per window
    weight = plan.importance[0] / len(flips) if len(flips) > 1 else plan.importance[0]
    stitcher = Stitcher((batch, *size), weight, device)
    for chunk, outputs in run_windows(
        x, jobs, roi, predictor, sw_batch_size, flips=flips, pad_batches=pad_batches, progress=progress
    ):
        stitcher.add(chunk, outputs)
        del outputs

    def inv_count(where: torch.device) -> torch.Tensor:
        if where == plan.inv_count.device:  # a tensor's device has its index ("cuda:0"), sw_device may not
            return plan.inv_count
        return cache.plan(size, roi, ov, mode, sig, where).inv_count

    return stitcher.finish(inv_count, pad)


def _forward(
    x: torch.Tensor,
    chunk: Sequence[Job],
    group: Sequence[tuple[int, ...]],
    n_real: int,
    call: Callable,
    roi: tuple[int, ...],
    tta: bool,
) -> dict[Any, torch.Tensor]:
    """One forward pass: the windows of ``chunk``, each mirrored by each flip of ``group``; outputs
    mirrored back and summed over the first ``n_real`` flips (in fp32), one tensor per output key."""
    win = torch.cat([x[(slice(b, b + 1), slice(None), *sl)] for b, sl in chunk])
    if tta:
        win = torch.cat([torch.flip(win, f) if f else win for f in group])
    raw = call(win)
    outputs = dict(raw) if isinstance(raw, Mapping) else {_TENSOR: _first(raw)}
    result = {}
    for key, pred in outputs.items():
        if not isinstance(pred, torch.Tensor):
            what = "predictor" if key is _TENSOR else f"predictor output {key!r}"
            raise TypeError(
                f"{what} returned {type(pred).__name__}; expected a tensor NKHW[D] (or a list/dict of them)"
            )
        if tuple(pred.shape[2:]) != roi:
            raise ValueError(f"predictor returned windows of size {tuple(pred.shape[2:])}, expected {roi}")
        if tta:  # mirror back and sum in fp32; the 1 / n_flip is in the stitcher's weight
            parts = pred.float().split(len(chunk))[:n_real]
            pred = functools.reduce(
                torch.add, (torch.flip(p, f) if f else p for p, f in zip(parts, group, strict=False))
            )
        result[key] = pred
    return result


def run_windows(
    x: torch.Tensor,
    jobs: Sequence[Job],
    roi: tuple[int, ...],
    predictor: Callable,
    sw_batch_size: int | str,
    *,
    flips: Sequence[tuple[int, ...]] = ((),),
    pad_batches: bool = False,
    progress: bool = False,
) -> Iterator[tuple[list[Job], dict[Any, torch.Tensor]]]:
    """Run the predictor over the windows ``jobs`` of the padded image ``x`` in forward batches.

    Never more than ``sw_batch_size`` network inputs (windows × flips) go into one pass: batches
    of whole windows with all their flips while they fit, else one window's flips split over
    several passes. A pass that runs out of GPU memory is retried with half the inputs.

    Yields:
        ``(chunk, outputs)``: the jobs of one pass and, per output key, their outputs mirrored
        back and summed over the pass's flips (rows past ``len(chunk)`` are ``pad_batches``
        repeats). A window whose flips span several passes is yielded once per pass.
    """
    n_flip = len(flips)
    tta = n_flip > 1
    start = 0
    limit = sw_batch_size
    if sw_batch_size == "auto" and _measures_memory(x.device):
        # one window (all its flips) measures the memory an input needs; its output is kept
        eager = getattr(predictor, "eager", predictor)
        first, per_input = _probe(lambda: _forward(x, jobs[:1], flips, n_flip, eager, roi, tta), x.device, n_flip)
        yield list(jobs[:1]), first
        del first
        start = 1
        limit = auto_batch_size(per_input, _free_bytes(x.device), n_inputs=len(jobs) * n_flip)
    elif sw_batch_size == "auto":
        limit = CPU_AUTO_INPUTS
    if limit >= n_flip:
        windows, per_pass = balanced_batch_size(max(len(jobs) - start, 1), limit // n_flip), n_flip
    else:
        windows, per_pass = 1, balanced_batch_size(n_flip, limit)

    bar = tqdm(total=len(jobs), initial=start, desc="windows", leave=False, disable=not progress)
    flip_start = 0
    while start < len(jobs):
        chunk = list(jobs[start : start + windows])
        group = list(flips[flip_start : flip_start + per_pass])
        if pad_batches:
            chunk_in = chunk + [chunk[-1]] * (windows - len(chunk))
            group_in = group + [group[-1]] * (per_pass - len(group))
        else:
            chunk_in, group_in = chunk, group
        try:
            outputs = _forward(x, chunk_in, group_in, len(group), predictor, roi, tta)
        except torch.OutOfMemoryError:
            if windows > 1:
                windows = max(1, windows // 2)
            elif per_pass > 1:
                per_pass = max(1, per_pass // 2)
            else:
                raise
            warnings.warn(f"window batch ran out of memory; retrying with {windows * per_pass} inputs", stacklevel=3)
            torch.cuda.empty_cache()
            continue
        yield chunk, outputs
        del outputs
        flip_start += len(group)
        if flip_start >= n_flip:
            flip_start = 0
            start += len(chunk)
            bar.update(len(chunk))
    bar.close()


class Stitcher:
    """Accumulate weighted window outputs into whole-image outputs, one per output key.

    Args:
        shape: ``(B, *padded spatial size)``.
        weight: ``HW[D]`` window weights (the importance map, divided by the number of flips).
        device: where the outputs live; the CPU (with a warning) when they do not fit there.
    """

    def __init__(self, shape: tuple[int, ...], weight: torch.Tensor, device: torch.device) -> None:
        self.shape, self.weight, self.device = shape, weight, device
        self.outputs: dict[Any, torch.Tensor] = {}
        self._host: dict[Any, _HostStitcher] = {}

    def add(self, chunk: Sequence[Job], outputs: Mapping[Any, torch.Tensor]) -> None:
        """Add the outputs of one forward pass (``chunk``'s windows; extra rows are ignored)."""
        for key, pred in outputs.items():
            out = self.outputs.get(key)
            if out is None:
                out = self.outputs[key] = _allocate((self.shape[0], pred.shape[1], *self.shape[1:]), self.device)
            if out.device == pred.device:  # one fused kernel per window: cast, weight, accumulate
                for (b, sl), p in zip(chunk, pred, strict=False):
                    out[(b, slice(None), *sl)].addcmul_(p, self.weight)
            elif pred.device.type == "cuda" and out.device.type == "cpu":
                if key not in self._host:
                    self._host[key] = _HostStitcher(out)
                self._host[key].push(list(chunk), pred[: len(chunk)] * self.weight)
            else:
                moved = (pred[: len(chunk)] * self.weight).to(out.device)
                for (b, sl), p in zip(chunk, moved, strict=True):
                    out[(b, slice(None), *sl)] += p

    def finish(
        self, inv_count: Callable[[torch.device], torch.Tensor], pad: Sequence[int]
    ) -> torch.Tensor | dict[Any, torch.Tensor]:
        """Normalise by the summed weights (``inv_count(device)``) and crop ``pad`` away (F.pad order).

        Returns:
            The tensor, or a dict of them when the predictor returned a dict.
        """
        for host in self._host.values():
            host.drain()
        if not self.outputs:
            raise ValueError("no window outputs were added")
        result = {}
        for key, out in self.outputs.items():
            out *= inv_count(out.device)
            if any(pad):
                spatial = self.shape[1:]
                crop = tuple(slice(pad[2 * i], s - pad[2 * i + 1]) for i, s in enumerate(reversed(spatial)))[::-1]
                out = out[(slice(None), slice(None), *crop)]
            result[key] = out
        return result.pop(_TENSOR) if _TENSOR in result else result


def _allocate(shape: tuple[int, ...], device: torch.device) -> torch.Tensor:
    try:
        return torch.zeros(shape, dtype=torch.float32, device=device)
    except torch.OutOfMemoryError:
        if device.type == "cpu":
            raise
        gib = torch.Size(shape).numel() * 4 / 2**30
        warnings.warn(f"output of {gib:.1f} GiB does not fit on {device}; stitching on the CPU", stacklevel=3)
        return torch.zeros(shape, dtype=torch.float32)


def prefers_channels_last(network: torch.nn.Module, device: torch.device | str) -> bool:
    """Whether channels-last layout is expected to pay: on CUDA, for networks without instance norm.

    cuDNN runs 3D convolutions and batch norm natively in ``NDHWC`` (bf16 tensor cores), but
    PyTorch's instance norm has no channels-last kernel and copies to and from ``NCDHW`` around
    every call (the issue's H100 measurement: slower). On the CPU the layouts measured within
    ±10 % of each other, either way, for our networks (1-2 threads, batches of four 32³ windows),
    so the CPU keeps MONAI's layout.
    """
    if torch.device(device).type != "cuda":
        return False
    return not any(isinstance(m, torch.nn.modules.instancenorm._InstanceNorm) for m in network.modules())


_COMPILED: weakref.WeakKeyDictionary[torch.nn.Module, Callable] = weakref.WeakKeyDictionary()


class WindowPredictor:
    """A network as a sliding-window predictor: autocast, memory format, optional ``torch.compile``.

    Args:
        network: returns logits ``NKHW[D]`` (or a list of heads, full resolution first).
        device: where it runs (sets the autocast device type).
        amp_dtype: autocast dtype, or None for full precision.
        channels_last: run in channels-last layout (``channels_last_3d`` for 3D). ``None``
            chooses by :func:`prefers_channels_last`. The network is converted only inside
            :meth:`layout`, which restores its layout after.
        compile: run ``torch.compile(network, dynamic=False)`` (cached per network); use with
            ``pad_batches=True`` so every call has one shape.

    Attributes:
        eager: the same predictor without compilation (memory probes call it).
    """

    def __init__(
        self,
        network: torch.nn.Module,
        device: torch.device,
        *,
        amp_dtype: torch.dtype | None = None,
        channels_last: bool | None = None,
        compile: bool = False,
    ) -> None:
        if channels_last is None:
            channels_last = prefers_channels_last(network, device)
        self.network = network
        self.device = torch.device(device)
        self.amp_dtype = amp_dtype
        self.memory_format = None
        if channels_last and _network_dims(network) in (2, 3):
            self.memory_format = torch.channels_last_3d if _network_dims(network) == 3 else torch.channels_last
        self.compiled = _compiled(network) if compile else None

    def _call(self, fn: Callable, x: torch.Tensor) -> torch.Tensor:
        if self.memory_format is not None:
            x = x.contiguous(memory_format=self.memory_format)
        with autocast(self.device, self.amp_dtype):
            return _first(fn(x))

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self._call(self.network if self.compiled is None else self.compiled, x)

    def eager(self, x: torch.Tensor) -> torch.Tensor:
        return self._call(self.network, x)

    @contextmanager
    def layout(self):
        """Hold the network in this predictor's memory format, restoring the old one after."""
        fmt = self.memory_format
        params = [p for p in self.network.parameters() if p.ndim >= 4]
        # all, not the first: a 1-channel input conv's weight passes for both layouts
        if fmt is None or not params or all(p.is_contiguous(memory_format=fmt) for p in params):
            yield self
            return
        self.network.to(memory_format=fmt)
        try:
            yield self
        finally:
            self.network.to(memory_format=torch.contiguous_format)


def _network_dims(network: torch.nn.Module) -> int:
    """Spatial dims of a network's convolutions (0 if it has none)."""
    for m in network.modules():
        if isinstance(m, (torch.nn.Conv3d, torch.nn.ConvTranspose3d)):
            return 3
        if isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d)):
            return 2
    return 0


def _compiled(network: torch.nn.Module) -> Callable:
    if network not in _COMPILED:
        _COMPILED[network] = torch.compile(network, dynamic=False)
    return _COMPILED[network]


@torch.no_grad()
def predict(
    network: torch.nn.Module,
    image: torch.Tensor,
    *,
    roi_size: Sequence[int],
    overlap: float = 0.5,
    mode: str = "gaussian",
    sw_batch_size: int | str = "auto",
    tta: bool = False,
    amp_dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
    output_device: torch.device | str | None = None,
    channels_last: bool | None = None,
    compile: bool = False,
    progress: bool = False,
    cache: WindowCache | None = None,
    tta_axes: Sequence[int] | None = None,
) -> torch.Tensor:
    """Class probabilities for a whole image: sliding window, optional flip TTA, :func:`activation`.

    Args:
        network: in eval mode; returns logits ``BKHW[D]``.
        image: ``BCHW[D]``; may live on the CPU while windows run on ``device``.
        roi_size: window size (spatial).
        overlap / mode / sw_batch_size: as :func:`sliding_window_inference` (``"auto"`` sizes
            window batches from free GPU memory).
        tta: average logits over mirrored windows along every subset of spatial axes (4 inputs per
            window in 2D, 8 in 3D), batched with the windows.
        tta_axes: the spatial axes (0-based) TTA mirrors; ``None``: every axis (see :func:`flip_sets`).
        amp_dtype: autocast dtype, or None for full precision (see :func:`autocast_dtype`); fp16
            that overflows is redone in bf16, with a warning.
        device: where windows are computed (default: the network's device). Global settings
            (``cudnn.benchmark``, determinism) are left as the caller set them.
        output_device: where the stitched output lives (default: ``device``).
        channels_last / compile: see :class:`WindowPredictor` (``None`` = chosen by norm type).
        progress: a progress bar over window batches.
        cache: window plans kept between calls (the caller's :class:`WindowCache`); ``None``:
            built for this call only.

    Returns:
        Probabilities ``BKHW[D]`` (float32) on ``output_device``: softmax over ``K`` classes, or
        the sigmoid of a single-channel network (foreground probability; see :func:`to_labels`).

    Raises:
        TypeError: the network returns a dict (use :func:`sliding_window_inference` for those).
    """
    if device is None:
        device = next(network.parameters()).device
    device = torch.device(device)
    spatial_dims = image.ndim - 2

    def logits_in(dtype: torch.dtype | None) -> torch.Tensor:
        predictor = WindowPredictor(network, device, amp_dtype=dtype, channels_last=channels_last, compile=compile)
        with predictor.layout():
            return sliding_window_inference(
                image,
                roi_size=tuple(roi_size),
                sw_batch_size=sw_batch_size,
                predictor=predictor,
                overlap=overlap,
                mode=mode,
                sw_device=device,
                device=output_device if output_device is not None else device,
                progress=progress,
                flips=flip_sets(spatial_dims, tta_axes) if tta else ((),),
                pad_batches=compile,
                cache=cache,
            )

    logits = logits_in(amp_dtype)
    if isinstance(logits, Mapping):
        raise TypeError(
            f"predict needs a network that returns logits (a tensor, or a list of heads); this one returns a dict "
            f"with keys {sorted(map(str, logits))}: call sliding_window_inference for dict outputs"
        )
    # fp16 tops out at 65504; an overflow shows as inf/nan in the blend (one check, one sync)
    if amp_dtype == torch.float16 and not bool(torch.isfinite(logits).all()):
        warnings.warn("fp16 inference overflowed (non-finite logits); predicting again in bf16", stacklevel=2)
        del logits
        logits = logits_in(torch.bfloat16)
    return activation(logits, inplace=True)
