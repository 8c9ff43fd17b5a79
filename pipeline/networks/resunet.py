"""ResUNet: a U-Net of residual units with dilated (atrous) convolutions in the deeper levels.

Residual units follow Zhang et al. 2018 (Deep Residual U-Net: the first unit of each encoder
level has stride 2, so no pooling) and post-activation ResNet (conv-BN-ReLU-conv-BN, identity or
1×1-projection shortcut, ReLU after the sum). Dilation follows ResUNet-a (Diakogiannis et al.
2020): a level given several rates runs that many residual branches in parallel, one per rate,
and sums them with the shortcut; a level given one rate is a plain residual unit whose convs use
that dilation. MONAI has no residual unit with parallel dilated branches, hence our own.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from pipeline.networks._base import EncoderDecoder
from pipeline.networks._blocks import ResidualUnit, Upsample, check_common, conv
from pipeline.networks.unet import DEFAULT_CHANNELS
from pipeline.registry import NETWORKS

__all__ = ["ResUNet", "default_dilations"]


def default_dilations(levels: int) -> tuple[int | tuple[int, ...], ...]:
    """Rate 1 in the upper levels, parallel rates (1, 2) one above the bottleneck and (1, 2, 4)
    at the bottleneck, where the feature maps are small and the extra branches cheap."""
    deep = ((1, 2), (1, 2, 4))[-(levels - 1) :] if levels > 1 else ()
    return (1,) * (levels - len(deep)) + deep


def _rates(entry: object, level: int) -> tuple[int, ...]:
    rates = (entry,) if isinstance(entry, int) and not isinstance(entry, bool) else entry
    if (
        not isinstance(rates, (tuple, list))
        or not rates
        or any(not isinstance(r, int) or isinstance(r, bool) or r < 1 for r in rates)
    ):
        raise ValueError(f"dilations[{level}] must be a positive int or a non-empty list of them, got {entry!r}")
    return tuple(rates)


@NETWORKS.register("resunet")
class ResUNet(EncoderDecoder):
    """ResUNet: residual units, strided-unit down-sampling, dilated/multi-atrous deep levels, BN.

    Encoder level 0 is a residual unit at full resolution, level ``i > 0`` a residual unit with
    stride 2; the decoder up-samples (transposed conv), concatenates the skip and applies a
    residual unit (1×1 projection shortcut) with the same dilation rates as the encoder level.

    Args:
        spatial_dims: 2 (``BCHW``) or 3 (``BCHWD``).
        in_channels: input channels.
        out_channels: logit channels.
        channels: channels per level, full resolution first.
        dilations: one entry per level, an int (one dilated branch) or a list of ints (parallel
            branches, ResUNet-a); empty means :func:`default_dilations`.
        norm: ``"batch"`` (default, the seed's batch norm), ``"instance"`` or ``"group"``.
        norm_groups: groups for ``"group"``.
        act: activation name (see :class:`pipeline.networks.unet.UNet`), default ``"relu"``.
        dropout: dropout between the two convs of every branch.
        upsample: ``"transpose"`` or ``"interp"``.
        pad_mode: ``"replicate"`` or ``"zeros"``.
        deep_supervision: in training mode return ``[full, 1/2, 1/4, ...]`` logits.
        ds_heads: heads below full resolution (default ``levels - 2``).
        strides: per-level, per-axis down-sampling (see :class:`pipeline.networks.unet.UNet`).
        kernel_sizes: per-level, per-axis conv kernels (see :class:`pipeline.networks.unet.UNet`).

    Raises:
        ValueError: a bad argument, e.g. ``dilations`` whose length is not ``len(channels)``.

    Example:
        >>> import torch
        >>> net = ResUNet(3, 1, 2, channels=(4, 8, 16))
        >>> net(torch.zeros(1, 1, 17, 19, 15)).shape
        torch.Size([1, 2, 17, 19, 15])
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        *,
        channels: Sequence[int] = DEFAULT_CHANNELS,
        dilations: Sequence[int | Sequence[int]] = (),
        norm: str = "batch",
        norm_groups: int = 8,
        act: str = "relu",
        dropout: float = 0.0,
        upsample: str = "transpose",
        pad_mode: str = "replicate",
        deep_supervision: bool = False,
        ds_heads: int | None = None,
        strides: Sequence[int | Sequence[int]] | None = None,
        kernel_sizes: Sequence[int | Sequence[int]] | None = None,
    ) -> None:
        ch = check_common(spatial_dims, in_channels, out_channels, channels, norm, norm_groups, act, dropout)
        if isinstance(dilations, int) and not isinstance(dilations, bool):
            dilations = (dilations,) * len(ch)
        dilations = tuple(dilations) or default_dilations(len(ch))
        if len(dilations) != len(ch):
            raise ValueError(f"dilations needs one entry per level ({len(ch)}), got {dilations!r}")
        rates = [_rates(e, i) for i, e in enumerate(dilations)]
        super().__init__(
            spatial_dims,
            in_channels,
            out_channels,
            len(ch),
            pad_mode,
            deep_supervision,
            ds_heads,
            strides,
            kernel_sizes,
        )
        self.dilations = tuple(rates)
        d, st, ks = spatial_dims, self.strides, self.kernel_sizes
        kw = {"norm": norm, "groups": norm_groups, "act": act, "dropout": dropout}
        self.encoder = nn.ModuleList(
            ResidualUnit(
                d,
                ch[i - 1] if i else in_channels,
                ch[i],
                stride=st[i - 1] if i else 1,
                dilations=rates[i],
                kernel=ks[i],
                **kw,
            )
            for i in range(len(ch))
        )
        self.up = nn.ModuleList(Upsample(d, ch[i + 1], ch[i], upsample, st[i]) for i in range(len(ch) - 1))
        self.decoder = nn.ModuleList(
            ResidualUnit(d, 2 * ch[i], ch[i], dilations=rates[i], kernel=ks[i], **kw) for i in range(len(ch) - 1)
        )
        self.build_heads(ch, lambda c: conv(d, c, out_channels, 1, bias=True))
