"""U-Net (Ronneberger et al. 2015; 3D: Çiçek et al. 2016), 2D and 3D, any input size.

Ours rather than MONAI's: MONAI's ``UNet`` down-samples the full-resolution image with a strided
conv before any full-resolution block (cheap, ~12 GFLOP per million voxels in 3D, but blind to
one-voxel-wide vessels at full resolution) and fails on sizes that are not multiples of its
stride; ``BasicUNet`` runs 32 channels at full resolution (~285 GFLOP/Mvox in 3D) and has no deep
supervision. Both are registered too (``monai_unet``, ``monai_basic_unet``) for comparison.

Default widths :data:`DEFAULT_CHANNELS` = (16, 32, 64, 128, 256): five levels (total stride 16)
with a full-resolution block of 16 channels, ~92 GFLOP/Mvox in 2D and ~114 in 3D, between those
two; a forward + backward of one 256² image takes ~0.15 s on 2 CPU cores (``bench/networks.py``).
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from pipeline.networks._base import EncoderDecoder
from pipeline.networks._blocks import DoubleConv, Upsample, check_choice, check_common, conv, max_pool
from pipeline.registry import NETWORKS

__all__ = ["UNet", "DEFAULT_CHANNELS"]

#: Default widths of all three of our networks (see the module docstring).
DEFAULT_CHANNELS = (16, 32, 64, 128, 256)


@NETWORKS.register("unet")
class UNet(EncoderDecoder):
    """U-Net: conv-norm-act ×2 blocks, max-pool or strided-conv down, transposed-conv up, concat skips.

    Level ``i`` has ``channels[i]`` channels at ``1/2**i`` resolution (per axis: the product of
    the first ``i`` ``strides``); the input is padded to a multiple of :attr:`size_divisor`
    ``= 2**(len(channels) - 1)`` by default and the logits cropped back (see
    :mod:`pipeline.networks._base`).

    Args:
        spatial_dims: 2 (``BCHW``) or 3 (``BCHWD``).
        in_channels: input channels.
        out_channels: logit channels (classes, background included).
        channels: channels per level, full resolution first.
        norm: ``"instance"`` (default: robust with the small batches of 3D training, as in
            nnU-Net), ``"batch"`` or ``"group"``.
        norm_groups: groups for ``"group"`` (``gcd(norm_groups, channels)`` per layer).
        act: ``"leakyrelu"`` (slope 0.01, nnU-Net), ``"relu"``, ``"prelu"``, ``"elu"``, ``"gelu"``,
            ``"mish"`` or ``"swish"``.
        dropout: dropout probability after every activation.
        downsample: ``"pool"`` (2× max-pool then the block) or ``"conv"`` (the block's first
            conv has stride 2, as nnU-Net).
        upsample: ``"transpose"`` (transposed conv, the seed's 反卷积) or ``"interp"``
            (1×1 conv + linear interpolation).
        pad_mode: ``"replicate"`` or ``"zeros"`` padding up to :attr:`size_divisor`.
        deep_supervision: in training mode return ``[full, 1/2, 1/4, ...]`` logits.
        ds_heads: number of heads below full resolution (default ``levels - 2``).
        strides: per-level down-sampling, each an int or one per axis, 1 or 2 (``levels - 1``
            entries, or nnU-Net's ``pool_op_kernel_sizes`` with its leading ones); default 2.
        kernel_sizes: per-level conv kernel, each an odd int or one per axis (nnU-Net's
            ``conv_kernel_sizes``); default 3.

    Raises:
        ValueError: a bad argument, naming the value and the options.

    Example:
        >>> import torch
        >>> net = UNet(2, 1, 2, channels=(8, 16, 32))
        >>> net(torch.zeros(1, 1, 37, 53)).shape
        torch.Size([1, 2, 37, 53])
        >>> thick = UNet(3, 1, 2, channels=(4, 8, 16), strides=[[2, 2, 1], [2, 2, 2]], kernel_sizes=[[3, 3, 1], 3, 3])
        >>> thick.size_divisor, thick(torch.zeros(1, 1, 37, 45, 9)).shape
        ((4, 4, 2), torch.Size([1, 2, 37, 45, 9]))
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        *,
        channels: Sequence[int] = DEFAULT_CHANNELS,
        norm: str = "instance",
        norm_groups: int = 8,
        act: str = "leakyrelu",
        dropout: float = 0.0,
        downsample: str = "pool",
        upsample: str = "transpose",
        pad_mode: str = "replicate",
        deep_supervision: bool = False,
        ds_heads: int | None = None,
        strides: Sequence[int | Sequence[int]] | None = None,
        kernel_sizes: Sequence[int | Sequence[int]] | None = None,
    ) -> None:
        ch = check_common(spatial_dims, in_channels, out_channels, channels, norm, norm_groups, act, dropout)
        check_choice("downsample", downsample, ("pool", "conv"))
        check_choice("upsample", upsample, ("transpose", "interp"))
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
        d, st, ks = spatial_dims, self.strides, self.kernel_sizes
        kw = {"norm": norm, "groups": norm_groups, "act": act, "dropout": dropout}
        enc = [DoubleConv(d, in_channels, ch[0], kernel=ks[0], **kw)]
        for i in range(1, len(ch)):
            if downsample == "pool":
                enc.append(nn.Sequential(max_pool(d, st[i - 1]), DoubleConv(d, ch[i - 1], ch[i], kernel=ks[i], **kw)))
            else:
                enc.append(DoubleConv(d, ch[i - 1], ch[i], stride=st[i - 1], kernel=ks[i], **kw))
        self.encoder = nn.ModuleList(enc)
        self.up = nn.ModuleList(Upsample(d, ch[i + 1], ch[i], upsample, st[i]) for i in range(len(ch) - 1))
        self.decoder = nn.ModuleList(DoubleConv(d, 2 * ch[i], ch[i], kernel=ks[i], **kw) for i in range(len(ch) - 1))
        self.build_heads(ch, lambda c: conv(d, c, out_channels, 1, bias=True))
