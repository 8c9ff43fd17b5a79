"""Any-input-size and deep-supervision handling shared by every registered network.

A network with ``L`` levels down-samples ``L - 1`` times, by ``strides[i]`` per axis between
level ``i`` and ``i + 1`` (2 on every axis by default; ``[[1, 2, 2], [2, 2, 2], ...]`` never pools
the thin axis of thick-slice CT at first, as nnU-Net's ``pool_op_kernel_sizes``), so it needs a
spatial size that is, per axis, a multiple of the product of that axis' strides
(``size_divisor``; ``2 ** (L - 1)`` by default). :class:`SegmentationNetwork` pads the
input up to the next multiple **at the end of each axis** (high-index side; ``"replicate"``
repeats the border voxel, ``"zeros"`` pads with 0), runs the network, and crops every output
back from the start, so the logits always have the input's spatial size (37×53, 17×33×29, ...)
and no caller ever resizes.

Deep supervision (training mode with ``deep_supervision=True``): ``forward`` returns a list,
full-resolution logits first, then one head per coarser level. Head ``k`` (``k = 1, 2, ...``) is
computed at ``padded_size / f_k`` and cropped to ``ceil(input_size / f_k)`` per axis, ``f_k`` the
product of the first ``k`` strides of that axis (``2**k`` by default): its cell ``j`` covers input
voxels ``[j·f_k, (j+1)·f_k)`` because the padding is at the end. Every head has
``out_channels`` channels. The loss resizes the target to each head's shape (nearest), so heads
of any shape work (MONAI's DynUNet returns full-resolution heads). In eval mode ``forward``
returns the full-resolution tensor only, so sliding-window inference works unchanged.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.networks._blocks import PAD_MODES, AxisSize, check_choice, per_axis


def pad_to_multiple(x: torch.Tensor, divisor: AxisSize, mode: str = "replicate") -> torch.Tensor:
    """Pad the spatial axes of ``x`` (``BCHW[D]``) at their end up to multiples of ``divisor``
    (one int, or one per spatial axis)."""
    spatial = x.shape[2:]
    extra = [(-s) % d for s, d in zip(spatial, per_axis(divisor, len(spatial)), strict=True)]
    if not any(extra):
        return x
    pad: list[int] = []
    for e in reversed(extra):  # F.pad lists the last axis first
        pad += [0, e]
    if mode == "zeros":
        return F.pad(x, pad, mode="constant", value=0.0)
    return F.pad(x, pad, mode="replicate")


def crop_to(x: torch.Tensor, size: tuple[int, ...]) -> torch.Tensor:
    """Keep the first ``size`` voxels of each spatial axis of ``x``."""
    if tuple(x.shape[2:]) == tuple(size):
        return x
    return x[(slice(None), slice(None), *(slice(0, s) for s in size))]


class SegmentationNetwork(nn.Module):
    """Base class: input checks, pad to :attr:`size_divisor`, crop back, deep-supervision output.

    Subclasses build their layers and implement :meth:`forward_padded`.

    Args:
        spatial_dims: 2 or 3.
        in_channels: channels of the input.
        out_channels: channels of the logits (classes).
        size_divisor: the network's total stride, one int or one per spatial axis.
        pad_mode: ``"replicate"`` or ``"zeros"``.
        deep_supervision: return a list of heads in training mode.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        size_divisor: AxisSize,
        pad_mode: str = "replicate",
        deep_supervision: bool = False,
    ) -> None:
        super().__init__()
        check_choice("pad_mode", pad_mode, PAD_MODES)
        if not isinstance(deep_supervision, bool):
            raise TypeError(f"deep_supervision must be a bool, got {deep_supervision!r}")
        self.spatial_dims = spatial_dims
        self.in_channels = in_channels
        self.out_channels = out_channels
        self._divisors = tuple(int(d) for d in per_axis(size_divisor, spatial_dims))
        self.pad_mode = pad_mode
        self.deep_supervision = deep_supervision

    @property
    def size_divisor(self) -> int | tuple[int, ...]:
        """The total stride: sizes that are multiples of it run without padding. One int when it
        is the same on every axis (the default networks), else one per spatial axis."""
        divisors = self._divisors
        return divisors[0] if len(set(divisors)) == 1 else divisors

    @property
    def size_divisors(self) -> tuple[int, ...]:
        """The total stride per spatial axis."""
        return self._divisors

    @property
    def min_size(self) -> int | tuple[int, ...]:
        """The smallest size accepted along each spatial axis: one cell at the coarsest level
        (like :attr:`size_divisor`, an int when the same on every axis).

        Instance norm in training also needs more than one voxel at the coarsest level (torch
        raises ``Expected more than 1 spatial element``): any axis of ``2 * size_divisor`` or more
        gives that.
        """
        return self.size_divisor

    def check_input(self, x: torch.Tensor) -> tuple[int, ...]:
        """Validate ``x`` (``BCHW[D]``) and return its spatial size.

        Raises:
            ValueError: wrong rank or channel count, or a spatial axis below :attr:`min_size`.
        """
        if x.ndim != self.spatial_dims + 2 or x.shape[1] != self.in_channels:
            layout = "BCHW" if self.spatial_dims == 2 else "BCHWD"
            raise ValueError(
                f"expected a {layout} input with C={self.in_channels}, got shape {tuple(x.shape)}; "
                f"add the batch/channel axes or set in_channels/spatial_dims to match"
            )
        spatial = tuple(x.shape[2:])
        if any(s < d for s, d in zip(spatial, self._divisors, strict=True)):
            raise ValueError(
                f"input spatial size {spatial} is too small: the smallest size this network accepts is "
                f"{self.min_size} per axis (its size_divisor, the total stride); pad or resample the image, "
                f"or use fewer levels"
            )
        return spatial

    def forward_padded(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Run on an input padded to a multiple of :attr:`size_divisors`; return the full-resolution
        logits, followed by the deep-supervision heads when they are wanted (training + DS)."""
        raise NotImplementedError

    @property
    def returns_heads(self) -> bool:
        return self.deep_supervision and self.training

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        """Logits ``BC'HW[D]`` of the input's spatial size (a list with heads: see module doc)."""
        spatial = self.check_input(x)
        padded = pad_to_multiple(x, self._divisors, self.pad_mode)
        outs = self.forward_padded(padded)
        full = padded.shape[2:]
        cropped = []
        for out in outs:
            # a head computed at padded/f keeps ceil(input/f) cells (f = 1 for the main output)
            size = tuple(-(-s * o // p) for s, o, p in zip(spatial, out.shape[2:], full, strict=True))
            cropped.append(crop_to(out, size))
        return cropped if self.returns_heads else cropped[0]


def _axis_entries(name: str, value: object, count: int, dims: int, allowed: str) -> tuple[tuple[int, ...], ...]:
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence) or len(value) != count:
        raise ValueError(f"{name} needs {count} entries (one int or {dims} ints each), got {value!r}")
    out = []
    for i, entry in enumerate(value):
        axes = (entry,) * dims if isinstance(entry, int) and not isinstance(entry, bool) else entry
        if (
            isinstance(axes, (str, bytes))
            or not isinstance(axes, Sequence)
            or len(axes) != dims
            or any(not isinstance(a, int) or isinstance(a, bool) or a < 1 for a in axes)
        ):
            raise ValueError(f"{name}[{i}] must be a positive int or {dims} of them ({allowed}), got {entry!r}")
        out.append(tuple(axes))
    return tuple(out)


def _all_ones(entry: object) -> bool:
    if isinstance(entry, int) and not isinstance(entry, bool):
        return entry == 1
    return isinstance(entry, Sequence) and not isinstance(entry, (str, bytes)) and all(a == 1 for a in entry)


def resolve_topology(
    spatial_dims: int,
    levels: int,
    strides: Sequence[AxisSize] | None = None,
    kernel_sizes: Sequence[AxisSize] | None = None,
) -> tuple[tuple[tuple[int, ...], ...], tuple[tuple[int, ...], ...]]:
    """Per-level, per-axis strides and kernel sizes of a U-shaped network with ``levels`` levels.

    Args:
        spatial_dims: 2 or 3.
        levels: resolutions (``len(channels)``).
        strides: down-sampling from level ``i`` to ``i + 1``: ``levels - 1`` entries, or ``levels``
            entries whose first is all ones (nnU-Net's ``pool_op_kernel_sizes``); each an int or one
            int per axis, 1 or 2 (the up-sampling mirrors it). ``None``: 2 everywhere.
        kernel_sizes: convolution kernel of each level's blocks: ``levels`` entries, each an odd
            int or one per axis (nnU-Net's ``conv_kernel_sizes``). ``None``: 3 everywhere.

    Returns:
        ``(strides, kernel_sizes)``: ``levels - 1`` and ``levels`` tuples of ``spatial_dims`` ints.

    Raises:
        ValueError: a wrong count, a non-positive entry, a stride above 2 or an even kernel.

    Example:
        >>> resolve_topology(3, 3, [[1, 1, 1], [2, 2, 1], [2, 2, 2]], [[3, 3, 1], [3, 3, 3], 3])
        (((2, 2, 1), (2, 2, 2)), ((3, 3, 1), (3, 3, 3), (3, 3, 3)))
    """
    if strides is None:
        strides = [2] * (levels - 1)
    elif isinstance(strides, Sequence) and len(strides) == levels and _all_ones(strides[0]):
        strides = list(strides)[1:]  # nnU-Net lists the identity "pooling" of level 0 first
    stride_axes = _axis_entries("strides", strides, levels - 1, spatial_dims, "1 or 2")
    if any(a > 2 for axes in stride_axes for a in axes):
        raise ValueError(f"strides must be 1 or 2 per axis (pooling by 2 or not at all), got {strides!r}")
    kernels = _axis_entries(
        "kernel_sizes", [3] * levels if kernel_sizes is None else kernel_sizes, levels, spatial_dims, "odd"
    )
    if any(k % 2 == 0 for axes in kernels for k in axes):
        raise ValueError(f"kernel_sizes must be odd (same padding), got {kernel_sizes!r}")
    return stride_axes, kernels


class EncoderDecoder(SegmentationNetwork):
    """A U-shaped network with ``levels`` resolutions: subclasses implement :meth:`features`
    and call :meth:`build_heads`.

    Args:
        strides: per-level, per-axis down-sampling (see :func:`resolve_topology`).
        kernel_sizes: per-level, per-axis conv kernels (see :func:`resolve_topology`).
        ds_heads: deep-supervision heads below full resolution, in ``[1, levels - 1]``;
            ``None`` means ``max(1, levels - 2)`` (every decoder level but full resolution and
            the bottleneck, as nnU-Net).
        Other args: see :class:`SegmentationNetwork`.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        levels: int,
        pad_mode: str = "replicate",
        deep_supervision: bool = False,
        ds_heads: int | None = None,
        strides: Sequence[AxisSize] | None = None,
        kernel_sizes: Sequence[AxisSize] | None = None,
    ) -> None:
        if spatial_dims not in (2, 3) or isinstance(spatial_dims, bool):
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims!r}")
        self_strides, self_kernels = resolve_topology(spatial_dims, levels, strides, kernel_sizes)
        divisor = tuple(math.prod(s[a] for s in self_strides) for a in range(spatial_dims))
        super().__init__(spatial_dims, in_channels, out_channels, divisor, pad_mode, deep_supervision)
        self.strides = self_strides
        self.kernel_sizes = self_kernels
        if ds_heads is None:
            ds_heads = max(1, levels - 2)
        if not isinstance(ds_heads, int) or isinstance(ds_heads, bool) or not 1 <= ds_heads <= levels - 1:
            raise ValueError(f"ds_heads must be an int in [1, {levels - 1}] (levels - 1), got {ds_heads!r}")
        self.levels = levels
        self.ds_heads = ds_heads

    def build_heads(self, channels: tuple[int, ...], make_head: Callable[[int], nn.Module]) -> None:
        """``make_head(ch)`` returns a module mapping ``ch`` channels to ``out_channels`` logits."""
        self.head = make_head(channels[0])
        n = self.ds_heads if self.deep_supervision else 0
        self.aux_heads = nn.ModuleList(make_head(channels[k]) for k in range(1, n + 1))

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Decoder outputs, full resolution first, then 1/2, 1/4, ... (the last is the bottleneck).

        The default is the plain U: modules ``encoder[i]`` (one per level), ``up[i]`` (level
        ``i + 1`` to ``i``) and ``decoder[i]`` (over the up-sampled features concatenated with the
        skip of level ``i``); subclasses with other wiring override it.
        """
        skips = []
        for block in self.encoder:
            x = block(x)
            skips.append(x)
        feats = [x]
        for i in reversed(range(len(self.decoder))):
            x = self.decoder[i](torch.cat([self.up[i](x), skips[i]], 1))
            feats.append(x)
        return feats[::-1]

    def forward_padded(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats = self.features(x)
        outs = [self.head(feats[0])]
        if self.returns_heads:
            outs += [head(f) for head, f in zip(self.aux_heads, feats[1:], strict=False)]
        return outs
