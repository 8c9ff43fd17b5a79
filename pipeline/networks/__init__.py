"""Segmentation networks, registered in :data:`pipeline.registry.NETWORKS` by importing them.

Every network is called ``NETWORKS.get(name)(spatial_dims, in_channels, out_channels, **kwargs)``
and maps ``BCHW[D]`` images of any size (down to ``size_divisor`` per axis) to logits of the
same spatial size; with ``deep_supervision=True`` training mode returns a list of heads (see
:mod:`pipeline.networks._base`). Ours: ``unet``, ``resunet``, ``denseunet``; MONAI's, wrapped for
comparison: ``monai_unet``, ``monai_basic_unet``, ``monai_dynunet``, ``monai_segresnet``.
"""

from __future__ import annotations

import torch

from pipeline.networks._base import SegmentationNetwork
from pipeline.networks.denseunet import DenseUNet
from pipeline.networks.monai_nets import MonaiNetwork, monai_basic_unet, monai_dynunet, monai_segresnet, monai_unet
from pipeline.networks.resunet import ResUNet
from pipeline.networks.unet import UNet
from pipeline.registry import NETWORKS

__all__ = [
    "NETWORKS",
    "SegmentationNetwork",
    "UNet",
    "ResUNet",
    "DenseUNet",
    "MonaiNetwork",
    "monai_unet",
    "monai_basic_unet",
    "monai_dynunet",
    "monai_segresnet",
    "count_parameters",
    "network_table",
]


def count_parameters(net: torch.nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in net.parameters() if p.requires_grad)


def _describe(obj: object) -> str:
    doc = (obj.__doc__ or "").strip()
    return doc.splitlines()[0].rstrip(".") if doc else ""


def _millions(n: int) -> str:
    return f"{n / 1e6:.2f} M"


def network_table(in_channels: int = 1, out_channels: int = 2) -> str:
    """A markdown table of every registered network: name, parameters in its default 2D and 3D
    configuration, size divisor and a one-line description.

    Networks are built on the ``meta`` device, so no memory is allocated for the weights.
    """
    rows = ["| name | params 2D | params 3D | size divisor | description |", "| --- | --: | --: | --: | --- |"]
    for name in NETWORKS.names():
        counts, divisor = [], 0
        for dims in (2, 3):
            with torch.device("meta"):
                net = NETWORKS.build(name, dims, in_channels, out_channels)
            counts.append(_millions(count_parameters(net)))
            divisor = getattr(net, "size_divisor", "?")
        rows.append(f"| {name} | {counts[0]} | {counts[1]} | {divisor} | {_describe(NETWORKS.get(name))} |")
    return "\n".join(rows)
