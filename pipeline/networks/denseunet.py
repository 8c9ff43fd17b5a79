"""DenseUNet: dense blocks in encoder and decoder, residual links, multi-scale input and output.

Dense connectivity after DenseNet (Huang et al. 2017) in a U-Net, as FC-DenseNet (Jégou et al.
2017) and H-DenseUNet (Li et al. 2018); multi-scale input as M-Net (Fu et al. 2018): the image,
average-pooled to each encoder level's resolution, passes a 3×3 conv and is concatenated to that
level's input. Multi-scale output is deep supervision (see :mod:`pipeline.networks._base`).
MONAI has no dense U-Net, hence our own.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.networks.layers.utils import get_act_layer
from torch import nn

from pipeline.networks._base import EncoderDecoder
from pipeline.networks._blocks import DenseBlock, Upsample, avg_pool, check_common, conv, max_pool, norm_layer
from pipeline.networks.unet import DEFAULT_CHANNELS
from pipeline.registry import NETWORKS

__all__ = ["DenseUNet"]


def _growth(growth_rate: Sequence[int] | int, channels: tuple[int, ...], layers: int) -> tuple[int, ...]:
    if isinstance(growth_rate, int) and not isinstance(growth_rate, bool):
        growth_rate = (growth_rate,) * len(channels)
    growth = tuple(growth_rate) or tuple(max(1, c // layers) for c in channels)
    if len(growth) != len(channels) or any(not isinstance(g, int) or isinstance(g, bool) or g < 1 for g in growth):
        raise ValueError(f"growth_rate must be a positive int or one per level ({len(channels)}), got {growth_rate!r}")
    return growth


@NETWORKS.register("denseunet")
class DenseUNet(EncoderDecoder):
    """DenseUNet: dense blocks with residual links, transitions, multi-scale input/output.

    A 3×3 conv stem maps the input to ``channels[0]``. Encoder level ``i`` is a
    :class:`~pipeline.networks._blocks.DenseBlock` (``dense_layers`` BN-ReLU-Conv3×3 layers of
    ``growth_rate[i]`` channels, a BN-ReLU-Conv1×1 transition to ``channels[i]``, a residual link
    around the block); DenseNet's transition-down pooling is a 2× max-pool between levels (the
    block output before pooling is the skip). Decoder level ``i`` up-samples the level below to
    ``channels[i]``, concatenates the skip and applies a dense block (``2·channels[i]`` →
    ``channels[i]``, 1×1-projected residual link). Heads are BN-ReLU-Conv1×1 (pre-activation).

    Args:
        spatial_dims: 2 (``BCHW``) or 3 (``BCHWD``).
        in_channels: input channels.
        out_channels: logit channels.
        channels: block output channels per level, full resolution first.
        growth_rate: channels added by each dense layer, one int for every level or one per level;
            empty (default) means ``channels[i] // dense_layers``, so a block adds as many channels
            as it outputs and the network costs about as much as :class:`~pipeline.networks.unet.UNet`.
        dense_layers: dense layers per block. With 2 (default) a CPU training step takes about
            BasicUNet's time or less; 4 layers of half the growth cost the same FLOPs but about
            1.7× the time and 1.5× the memory (more, narrower convs and concatenations).
        norm: ``"batch"`` (default, DenseNet's BN-ReLU-Conv), ``"instance"`` or ``"group"``.
        norm_groups: groups for ``"group"``.
        act: activation name (see :class:`pipeline.networks.unet.UNet`), default ``"relu"``.
        dropout: dropout after every dense layer's conv.
        multiscale_input: inject the down-sampled image at every encoder level below the first.
        checkpointing: recompute dense layers in the backward pass (about half the activation
            memory, ~20% slower on CPU).
        upsample: ``"transpose"`` or ``"interp"``.
        pad_mode: ``"replicate"`` or ``"zeros"``.
        deep_supervision: multi-scale output: in training mode return ``[full, 1/2, ...]`` logits.
        ds_heads: heads below full resolution (default ``levels - 2``).
        strides: per-level, per-axis down-sampling (see :class:`pipeline.networks.unet.UNet`).
        kernel_sizes: per-level, per-axis kernels of the dense layers and the stem (see
            :class:`pipeline.networks.unet.UNet`).

    Raises:
        ValueError: a bad argument, naming the value.

    Example:
        >>> net = DenseUNet(2, 1, 2, channels=(8, 16, 32), growth_rate=4, multiscale_input=True)
        >>> net(torch.zeros(1, 1, 37, 29)).shape
        torch.Size([1, 2, 37, 29])
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        *,
        channels: Sequence[int] = DEFAULT_CHANNELS,
        growth_rate: Sequence[int] | int = (),
        dense_layers: int = 2,
        norm: str = "batch",
        norm_groups: int = 8,
        act: str = "relu",
        dropout: float = 0.0,
        multiscale_input: bool = False,
        checkpointing: bool = False,
        upsample: str = "transpose",
        pad_mode: str = "replicate",
        deep_supervision: bool = False,
        ds_heads: int | None = None,
        strides: Sequence[int | Sequence[int]] | None = None,
        kernel_sizes: Sequence[int | Sequence[int]] | None = None,
    ) -> None:
        ch = check_common(spatial_dims, in_channels, out_channels, channels, norm, norm_groups, act, dropout)
        if not isinstance(dense_layers, int) or isinstance(dense_layers, bool) or dense_layers < 1:
            raise ValueError(f"dense_layers must be a positive int, got {dense_layers!r}")
        growth = _growth(growth_rate, ch, dense_layers)
        for name, value in (("multiscale_input", multiscale_input), ("checkpointing", checkpointing)):
            if not isinstance(value, bool):
                raise TypeError(f"{name} must be a bool, got {value!r}")
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
        self.multiscale_input = multiscale_input
        kw = {"norm": norm, "groups": norm_groups, "act": act}
        dense = {"layers": dense_layers, "dropout": dropout, "checkpointing": checkpointing}
        inject = ch[0] if multiscale_input else 0
        self.stem = conv(d, in_channels, ch[0], ks[0])
        isotropic = len(set(st)) == 1
        # one shared pool module when every level pools alike keeps the default's module tree
        self.pool = max_pool(d, st[0]) if isotropic else nn.ModuleList(max_pool(d, s) for s in st)
        self.inputs = nn.ModuleList(
            conv(d, in_channels, inject, ks[i + 1]) for i in range(len(ch) - 1 if inject else 0)
        )
        self.encoder = nn.ModuleList(
            DenseBlock(d, ch[i - 1] + inject if i else ch[0], ch[i], growth=growth[i], kernel=ks[i], **dense, **kw)
            for i in range(len(ch))
        )
        self.up = nn.ModuleList(Upsample(d, ch[i + 1], ch[i], upsample, st[i]) for i in range(len(ch) - 1))
        self.decoder = nn.ModuleList(
            DenseBlock(d, 2 * ch[i], ch[i], growth=growth[i], kernel=ks[i], **dense, **kw) for i in range(len(ch) - 1)
        )

        def head(c: int) -> nn.Module:
            return nn.Sequential(
                norm_layer(norm, d, c, norm_groups), get_act_layer(act), conv(d, c, out_channels, 1, bias=True)
            )

        self.build_heads(ch, head)

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        image = x
        h = self.encoder[0](self.stem(x))
        skips = [h]
        for i in range(1, len(self.encoder)):
            h = self.pool(h) if not isinstance(self.pool, nn.ModuleList) else self.pool[i - 1](h)
            if self.multiscale_input:
                image = avg_pool(image, self.strides[i - 1])
                h = torch.cat([h, self.inputs[i - 1](image)], 1)
            h = self.encoder[i](h)
            skips.append(h)
        feats = [h]
        for i in reversed(range(len(self.decoder))):
            h = self.decoder[i](torch.cat([self.up[i](h), skips[i]], 1))
            feats.append(h)
        return feats[::-1]
