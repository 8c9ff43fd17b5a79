"""Any-input-size and deep-supervision handling shared by every registered network.

A network with ``L`` levels halves the resolution ``L - 1`` times, so it needs a spatial size
that is a multiple of ``size_divisor = 2 ** (L - 1)``. :class:`SegmentationNetwork` pads the
input up to the next multiple **at the end of each axis** (high-index side; ``"replicate"``
repeats the border voxel, ``"zeros"`` pads with 0), runs the network, and crops every output
back from the start, so the logits always have the input's spatial size (37×53, 17×33×29, ...)
and no caller ever resizes.

Deep supervision (training mode with ``deep_supervision=True``): ``forward`` returns a list,
full-resolution logits first, then one head per coarser level. Head ``k`` (``k = 1, 2, ...``) is
computed at ``padded_size / 2**k`` and cropped to ``ceil(input_size / 2**k)``: its cell ``j``
covers input voxels ``[j·2**k, (j+1)·2**k)`` because the padding is at the end. Every head has
``out_channels`` channels. The loss resizes the target to each head's shape (nearest), so heads
of any shape work (MONAI's DynUNet returns full-resolution heads). In eval mode ``forward``
returns the full-resolution tensor only, so sliding-window inference works unchanged.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.networks._blocks import PAD_MODES, check_choice


def pad_to_multiple(x: torch.Tensor, divisor: int, mode: str = "replicate") -> torch.Tensor:
    """Pad the spatial axes of ``x`` (``BCHW[D]``) at their end up to multiples of ``divisor``."""
    spatial = x.shape[2:]
    extra = [(-s) % divisor for s in spatial]
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
        size_divisor: the network's total stride.
        pad_mode: ``"replicate"`` or ``"zeros"``.
        deep_supervision: return a list of heads in training mode.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        size_divisor: int,
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
        self._size_divisor = int(size_divisor)
        self.pad_mode = pad_mode
        self.deep_supervision = deep_supervision

    @property
    def size_divisor(self) -> int:
        """The total stride: sizes that are multiples of it run without padding."""
        return self._size_divisor

    @property
    def min_size(self) -> int:
        """The smallest size accepted along each spatial axis: one cell at the coarsest level.

        Instance norm in training also needs more than one voxel at the coarsest level (torch
        raises ``Expected more than 1 spatial element``): any axis of ``2 * size_divisor`` or more
        gives that.
        """
        return self._size_divisor

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
        if min(spatial) < self.min_size:
            raise ValueError(
                f"input spatial size {spatial} is too small: the smallest size this network accepts is "
                f"{self.min_size} per axis (its size_divisor, the total stride); pad or resample the image, "
                f"or use fewer levels"
            )
        return spatial

    def forward_padded(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Run on an input padded to a multiple of :attr:`size_divisor`; return the full-resolution
        logits, followed by the deep-supervision heads when they are wanted (training + DS)."""
        raise NotImplementedError

    @property
    def returns_heads(self) -> bool:
        return self.deep_supervision and self.training

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        """Logits ``BC'HW[D]`` of the input's spatial size (a list with heads: see module doc)."""
        spatial = self.check_input(x)
        padded = pad_to_multiple(x, self._size_divisor, self.pad_mode)
        outs = self.forward_padded(padded)
        full = padded.shape[2:]
        cropped = []
        for out in outs:
            # a head computed at padded/f keeps ceil(input/f) cells (f = 1 for the main output)
            size = tuple(-(-s * o // p) for s, o, p in zip(spatial, out.shape[2:], full, strict=True))
            cropped.append(crop_to(out, size))
        return cropped if self.returns_heads else cropped[0]


class EncoderDecoder(SegmentationNetwork):
    """A U-shaped network with ``levels`` resolutions: subclasses implement :meth:`features`
    and call :meth:`build_heads`.

    Args:
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
    ) -> None:
        super().__init__(spatial_dims, in_channels, out_channels, 2 ** (levels - 1), pad_mode, deep_supervision)
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
