"""Layers and blocks shared by UNet, ResUNet and DenseUNet, for 2D and 3D.

``spatial_dims`` picks the layer types through MONAI's factories (``Conv[Conv.CONV, dims]``,
``get_norm_layer``, ``get_act_layer``); the blocks themselves are ours because MONAI has no
dense block and its ``ResidualUnit`` cannot take parallel dilated branches. Every block maps a
``BCHW[D]`` tensor to a ``BC'H'W'[D']`` tensor.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from monai.networks.layers.factories import Conv, Pool
from monai.networks.layers.utils import get_act_layer, get_norm_layer
from torch import nn
from torch.utils.checkpoint import checkpoint

NORMS = ("batch", "instance", "group")
ACTS = ("relu", "leakyrelu", "prelu", "elu", "gelu", "mish", "swish")
PAD_MODES = ("replicate", "zeros")
UPSAMPLES = ("transpose", "interp")


def check_choice(name: str, value: object, options: Sequence[str]) -> None:
    """Raise ``ValueError`` naming ``value`` and ``options`` unless ``value`` is one of them."""
    if value not in options:
        raise ValueError(f"{name} must be one of {list(options)}, got {value!r}")


def check_common(
    spatial_dims: int,
    in_channels: int,
    out_channels: int,
    channels: Sequence[int],
    norm: str,
    norm_groups: int,
    act: str,
    dropout: float,
) -> tuple[int, ...]:
    """Validate the arguments every network of ours takes; return ``channels`` as a tuple.

    Raises:
        ValueError: naming the bad value and the allowed ones.
        TypeError: ``channels`` is not a sequence of ints.
    """
    if spatial_dims not in (2, 3) or isinstance(spatial_dims, bool):
        raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims!r}")
    for name, value in (("in_channels", in_channels), ("out_channels", out_channels), ("norm_groups", norm_groups)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    if isinstance(channels, (str, bytes)) or not isinstance(channels, Sequence):
        raise TypeError(f"channels must be a sequence of ints (one per level), got {channels!r}")
    channels = tuple(channels)
    if len(channels) < 2:
        raise ValueError(f"channels needs at least 2 levels (one down-sampling), got {channels!r}")
    if any(not isinstance(c, int) or isinstance(c, bool) or c < 1 for c in channels):
        raise ValueError(f"channels must be positive ints, got {channels!r}")
    check_choice("norm", norm, NORMS)
    check_choice("act", act, ACTS)
    if not isinstance(dropout, (int, float)) or isinstance(dropout, bool) or not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
    return channels


#: A size per spatial axis, or one int for every axis.
AxisSize = int | Sequence[int]


def per_axis(value: AxisSize, dims: int) -> tuple[int, ...]:
    """``value`` as a tuple of ``dims`` ints (an int is repeated)."""
    if isinstance(value, int) and not isinstance(value, bool):
        return (value,) * dims
    return tuple(value)


def _plain(value: AxisSize) -> AxisSize:
    """An isotropic tuple as one int, so default layers are built exactly as before."""
    if isinstance(value, int):
        return value
    value = tuple(value)
    return value[0] if len(set(value)) == 1 else value


def conv(
    dims: int,
    cin: int,
    cout: int,
    kernel: AxisSize = 3,
    stride: AxisSize = 1,
    dilation: int = 1,
    bias: bool = False,
) -> nn.Module:
    """A 'same'-padded convolution (output size = input size / stride per axis).

    ``kernel`` and ``stride`` are one int or one int per axis (``(1, 3, 3)``: no mixing across
    the thick-slice axis, as nnU-Net's planner gives strongly anisotropic data).
    """
    padding = tuple(dilation * (k // 2) for k in per_axis(kernel, dims))
    return Conv[Conv.CONV, dims](
        cin, cout, _plain(kernel), stride=_plain(stride), padding=_plain(padding), dilation=dilation, bias=bias
    )


def norm_layer(name: str, dims: int, ch: int, groups: int = 8) -> nn.Module:
    """Batch / instance (affine, like nnU-Net) / group norm; group count is ``gcd(groups, ch)``
    so any width works."""
    if name == "group":
        return get_norm_layer(("group", {"num_groups": math.gcd(groups, ch)}), dims, ch)
    if name == "instance":
        return get_norm_layer(("instance", {"affine": True}), dims, ch)
    return get_norm_layer(name, dims, ch)


class ConvNormAct(nn.Sequential):
    """conv → norm → act (→ dropout): the post-activation layer of UNet and ResUNet."""

    def __init__(
        self,
        dims: int,
        cin: int,
        cout: int,
        *,
        norm: str,
        groups: int,
        act: str,
        dropout: float = 0.0,
        stride: AxisSize = 1,
        dilation: int = 1,
        kernel: AxisSize = 3,
    ) -> None:
        layers = [
            conv(dims, cin, cout, kernel, stride, dilation),
            norm_layer(norm, dims, cout, groups),
            get_act_layer(act),
        ]
        if dropout:
            layers.append(nn.Dropout(dropout))
        super().__init__(*layers)


class DoubleConv(nn.Sequential):
    """Two :class:`ConvNormAct`; the first may be strided (UNet's down-sampling by conv)."""

    def __init__(
        self,
        dims: int,
        cin: int,
        cout: int,
        *,
        norm: str,
        groups: int,
        act: str,
        dropout: float = 0.0,
        stride: AxisSize = 1,
        kernel: AxisSize = 3,
    ) -> None:
        kw = {"norm": norm, "groups": groups, "act": act, "dropout": dropout, "kernel": kernel}
        super().__init__(ConvNormAct(dims, cin, cout, stride=stride, **kw), ConvNormAct(dims, cout, cout, **kw))


class ResidualUnit(nn.Module):
    """ResNet unit ``act(shortcut(x) + Σ_b F_b(x))`` with ``F_b`` = conv-norm-act-conv-norm.

    One branch per dilation rate: a single rate is a plain (dilated) residual unit, several rates
    are ResUNet-a's multi-atrous unit (Diakogiannis et al. 2020), whose parallel branches are
    summed. The shortcut is the identity, or a strided 1×1 conv + norm where shape changes.
    """

    def __init__(
        self,
        dims: int,
        cin: int,
        cout: int,
        *,
        norm: str,
        groups: int,
        act: str,
        dropout: float = 0.0,
        stride: AxisSize = 1,
        dilations: Sequence[int] = (1,),
        kernel: AxisSize = 3,
    ) -> None:
        super().__init__()

        def branch(d: int) -> nn.Sequential:
            layers = [
                conv(dims, cin, cout, kernel, stride, d),
                norm_layer(norm, dims, cout, groups),
                get_act_layer(act),
            ]
            if dropout:
                layers.append(nn.Dropout(dropout))
            return nn.Sequential(*layers, conv(dims, cout, cout, kernel, 1, d), norm_layer(norm, dims, cout, groups))

        self.branches = nn.ModuleList(branch(d) for d in dilations)
        self.shortcut = (
            nn.Identity()
            if cin == cout and set(per_axis(stride, dims)) == {1}
            else nn.Sequential(conv(dims, cin, cout, 1, stride), norm_layer(norm, dims, cout, groups))
        )
        self.act = get_act_layer(act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.shortcut(x)
        for b in self.branches:
            out = out + b(x)
        return self.act(out)


class _PreActConv(nn.Module):
    """norm → act → conv (→ dropout) over the concatenation of its inputs (DenseNet's layer)."""

    def __init__(
        self,
        dims: int,
        cin: int,
        cout: int,
        kernel: AxisSize,
        *,
        norm: str,
        groups: int,
        act: str,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.norm = norm_layer(norm, dims, cin, groups)
        self.act = get_act_layer(act)
        self.conv = conv(dims, cin, cout, kernel)
        self.drop = nn.Dropout(dropout) if dropout else nn.Identity()

    def forward(self, *features: torch.Tensor) -> torch.Tensor:
        return self.drop(self.conv(self.act(self.norm(torch.cat(features, 1)))))


class DenseBlock(nn.Module):
    """Dense block with a transition conv and a residual link around it.

    ``layers`` BN-ReLU-Conv3×3 layers, each seeing the concatenation of the block input and all
    earlier layers' outputs and adding ``growth`` channels; a BN-ReLU-Conv1×1 transition
    compresses the concatenation (``cin + layers·growth`` channels) to ``cout``; the block input
    is added back, through a 1×1 conv when ``cin != cout``.

    With ``checkpointing`` (training only), every concatenating layer is recomputed in the
    backward pass instead of storing its concatenated, normalised input (Pleiss et al. 2017,
    memory-efficient DenseNet): peak memory drops, time rises by roughly one extra forward.
    Batch-norm running statistics are then updated twice per step (as in torchvision's
    memory-efficient DenseNet); the estimate is unaffected, only its averaging window shortens.
    """

    def __init__(
        self,
        dims: int,
        cin: int,
        cout: int,
        *,
        layers: int,
        growth: int,
        norm: str,
        groups: int,
        act: str,
        dropout: float = 0.0,
        checkpointing: bool = False,
        kernel: AxisSize = 3,
    ) -> None:
        super().__init__()
        kw = {"norm": norm, "groups": groups, "act": act}
        self.layers = nn.ModuleList(
            _PreActConv(dims, cin + i * growth, growth, kernel, dropout=dropout, **kw) for i in range(layers)
        )
        self.transition = _PreActConv(dims, cin + layers * growth, cout, 1, **kw)
        self.shortcut = nn.Identity() if cin == cout else conv(dims, cin, cout, 1)
        self.checkpointing = checkpointing

    def _call(self, fn: nn.Module, features: list[torch.Tensor]) -> torch.Tensor:
        if self.checkpointing and self.training and torch.is_grad_enabled():
            return checkpoint(fn, *features, use_reentrant=False)
        return fn(*features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = [x]
        for layer in self.layers:
            features.append(self._call(layer, features))
        return self.shortcut(x) + self._call(self.transition, features)


class Upsample(nn.Module):
    """×``scale`` up-sampling (default 2; one int or one per axis) from ``cin`` to ``cout`` channels.

    ``"transpose"``: transposed conv, kernel 2 stride 2 (the seed's 反卷积; no overlapping
    kernels, so no checkerboard). ``"interp"``: 1×1 conv then (bi/tri)linear interpolation; both
    are linear maps that commute, so this equals interpolate-then-conv at a quarter (2D) or an
    eighth (3D) of the cost.
    """

    def __init__(self, dims: int, cin: int, cout: int, mode: str = "transpose", scale: AxisSize = 2) -> None:
        super().__init__()
        check_choice("upsample", mode, UPSAMPLES)
        self.mode = mode
        self.interp = "bilinear" if dims == 2 else "trilinear"
        self.scale = _plain(scale)
        self.conv = (
            Conv[Conv.CONVTRANS, dims](cin, cout, self.scale, stride=self.scale)
            if mode == "transpose"
            else conv(dims, cin, cout, 1)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        if self.mode == "interp":
            scale = self.scale if isinstance(self.scale, int) else tuple(float(s) for s in self.scale)
            x = F.interpolate(x, scale_factor=scale, mode=self.interp, align_corners=False)
        return x


def max_pool(dims: int, stride: AxisSize = 2) -> nn.Module:
    """Max-pooling by ``stride`` (one int or one per axis; 1 leaves that axis alone)."""
    return Pool[Pool.MAX, dims](_plain(stride))


def avg_pool(x: torch.Tensor, stride: AxisSize) -> torch.Tensor:
    """Average-pool ``x`` (``BCHW[D]``) by ``stride`` per axis."""
    dims = x.ndim - 2
    pool = F.avg_pool2d if dims == 2 else F.avg_pool3d
    return pool(x, _plain(stride))
