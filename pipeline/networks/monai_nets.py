"""MONAI's networks, registered for comparison: small factories around MONAI's classes.

Each factory takes ``(spatial_dims, in_channels, out_channels, **defaults)`` like our networks,
builds the MONAI class with sensible defaults for its required arguments (strides, kernel
sizes, ...) and wraps it in :class:`MonaiNetwork`, which adds what MONAI's classes lack: any
input size (pad to the total stride and crop back, see :mod:`pipeline.networks._base`), the
``size_divisor`` property and deep-supervision output as a list. Strides are isotropic ints so
``size_divisor`` is one int for every network.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from monai.networks.nets import BasicUNet, DynUNet, SegResNet, UNet
from torch import nn

from pipeline.networks._base import SegmentationNetwork
from pipeline.registry import NETWORKS

__all__ = ["MonaiNetwork", "monai_unet", "monai_basic_unet", "monai_dynunet", "monai_segresnet"]


class MonaiNetwork(SegmentationNetwork):
    """Wrap a MONAI network: pad/crop to ``size_divisor``, heads as a list.

    Args:
        net: the MONAI module; its output is ``BCHW[D]`` logits, or in training with deep
            supervision a ``B×heads×C×HW[D]`` stack (DynUNet), returned as a list of full-size heads.
        spatial_dims, in_channels, out_channels, size_divisor, deep_supervision: see
            :class:`~pipeline.networks._base.SegmentationNetwork`.
    """

    def __init__(
        self,
        net: nn.Module,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        size_divisor: int,
        deep_supervision: bool = False,
    ) -> None:
        super().__init__(spatial_dims, in_channels, out_channels, size_divisor, "replicate", deep_supervision)
        self.net = net

    def forward_padded(self, x: torch.Tensor) -> list[torch.Tensor]:
        out = self.net(x)
        if out.ndim == self.spatial_dims + 3:  # DynUNet's stacked deep-supervision heads
            return list(out.unbind(1))
        return [out]


def _check_dims(spatial_dims: int) -> None:
    if spatial_dims not in (2, 3) or isinstance(spatial_dims, bool):
        raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims!r}")


def _ints(name: str, values: Sequence[int]) -> tuple[int, ...]:
    values = (values,) if isinstance(values, int) else tuple(values)
    if not values or any(not isinstance(v, int) or isinstance(v, bool) or v < 1 for v in values):
        raise ValueError(f"{name} must be a non-empty list of positive ints, got {values!r}")
    return values


@NETWORKS.register("monai_unet")
def monai_unet(
    spatial_dims: int,
    in_channels: int,
    out_channels: int,
    *,
    channels: Sequence[int] = (16, 32, 64, 128, 256),
    strides: Sequence[int] = (2, 2, 2, 2),
    num_res_units: int = 2,
    dropout: float = 0.0,
) -> MonaiNetwork:
    """MONAI UNet (residual units, strided-conv down-sampling from full resolution), instance norm, PReLU."""
    _check_dims(spatial_dims)
    strides = _ints("strides", strides)
    net = UNet(spatial_dims, in_channels, out_channels, channels, strides, num_res_units=num_res_units, dropout=dropout)
    return MonaiNetwork(net, spatial_dims, in_channels, out_channels, math.prod(strides))


@NETWORKS.register("monai_basic_unet")
def monai_basic_unet(
    spatial_dims: int,
    in_channels: int,
    out_channels: int,
    *,
    features: Sequence[int] = (32, 32, 64, 128, 256, 32),
    dropout: float = 0.0,
    upsample: str = "deconv",
) -> MonaiNetwork:
    """MONAI BasicUNet: two conv-norm-act blocks per level at full width from full resolution, 5 levels."""
    _check_dims(spatial_dims)
    features = _ints("features", features)
    if len(features) != 6:
        raise ValueError(f"features must have 6 entries (5 levels + the last decoder block), got {features!r}")
    net = BasicUNet(spatial_dims, in_channels, out_channels, features=features, dropout=dropout, upsample=upsample)
    return MonaiNetwork(net, spatial_dims, in_channels, out_channels, 16)


@NETWORKS.register("monai_dynunet")
def monai_dynunet(
    spatial_dims: int,
    in_channels: int,
    out_channels: int,
    *,
    strides: Sequence[int] = (1, 2, 2, 2, 2, 2),
    filters: Sequence[int] = (),
    res_block: bool = False,
    dropout: float = 0.0,
    deep_supervision: bool = False,
    deep_supr_num: int = 2,
) -> MonaiNetwork:
    """MONAI DynUNet, nnU-Net style: 3×3 kernels, 32 filters doubling per level (capped 320 in 3D, 512 in 2D)."""
    _check_dims(spatial_dims)
    strides = _ints("strides", strides)
    if not filters:
        cap = 320 if spatial_dims == 3 else 512
        filters = tuple(min(32 * 2**i, cap) for i in range(len(strides)))
    filters = _ints("filters", filters)
    if len(filters) != len(strides):
        raise ValueError(f"filters needs one entry per stride ({len(strides)}), got {filters!r}")
    net = DynUNet(
        spatial_dims,
        in_channels,
        out_channels,
        kernel_size=[3] * len(strides),
        strides=list(strides),
        upsample_kernel_size=list(strides[1:]),
        filters=list(filters),
        dropout=dropout or None,
        deep_supervision=deep_supervision,
        deep_supr_num=deep_supr_num,
        res_block=res_block,
    )
    return MonaiNetwork(net, spatial_dims, in_channels, out_channels, math.prod(strides), deep_supervision)


@NETWORKS.register("monai_segresnet")
def monai_segresnet(
    spatial_dims: int,
    in_channels: int,
    out_channels: int,
    *,
    init_filters: int = 8,
    blocks_down: Sequence[int] = (1, 2, 2, 4),
    blocks_up: Sequence[int] = (1, 1, 1),
    dropout: float = 0.0,
) -> MonaiNetwork:
    """MONAI SegResNet (Myronenko 2018): pre-activation residual encoder, group norm, light decoder."""
    _check_dims(spatial_dims)
    blocks_down, blocks_up = _ints("blocks_down", blocks_down), _ints("blocks_up", blocks_up)
    if len(blocks_up) != len(blocks_down) - 1:
        raise ValueError(f"blocks_up needs len(blocks_down) - 1 = {len(blocks_down) - 1} entries, got {blocks_up!r}")
    net = SegResNet(
        spatial_dims,
        init_filters,
        in_channels,
        out_channels,
        dropout_prob=dropout or None,
        blocks_down=blocks_down,
        blocks_up=blocks_up,
    )
    return MonaiNetwork(net, spatial_dims, in_channels, out_channels, 2 ** (len(blocks_down) - 1))
