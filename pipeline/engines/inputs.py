"""What :class:`pipeline.engines.predictor.Predictor` (and so :class:`pipeline.api.Segmenter`)
accepts as one image: a path, a NumPy array, a torch tensor or a MONAI ``MetaTensor``.

Arrays and tensors are in the order :mod:`pipeline.io` reads files (``X Y [Z]``; a 2D picture
``W H``, the transpose of ``numpy.asarray(PIL.Image.open(path))``), with an optional leading
channel axis: an array with as many axes as the network's spatial dims is one channel, one axis
more is channel-first. Their geometry is ``spacing`` (mm per voxel along each axis, a diagonal
affine); without it, the network's training spacing (``transforms.spacing``), so the array is
taken as already resampled and is not resampled again. A ``MetaTensor`` (from
:func:`pipeline.io.read_image` or MONAI's ``LoadImage``) brings its own affine and must be
channel-first.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from monai.data import MetaTensor
from monai.utils import MetaKeys, SpaceKeys

from pipeline.errors import MedsegError
from pipeline.io import check_file, read_image

__all__ = ["as_image", "read_any", "IN_MEMORY"]

IN_MEMORY = "<array>"
"""The ``filename_or_obj`` of an image given as an array (error messages name it so)."""


def read_any(value: Any) -> MetaTensor:
    """The predictor's reader: a path through :func:`pipeline.io.read_image`, an in-memory image
    (:func:`as_image`) as a copy, so the transform chain never changes the caller's tensor."""
    if isinstance(value, MetaTensor):
        return value.clone()
    return read_image(value)


def as_image(
    image: Any, spacing: Sequence[float] | None, spatial_dims: int, default_spacing: Sequence[float] | None = None
) -> str | list[MetaTensor]:
    """One image for the predictor's chain: a path as a string, an in-memory image as a one-item
    list holding a channel-first float32 ``MetaTensor`` (the chain's loader stacks lists as
    channels, so a tensor must not be given bare).

    Raises:
        MedsegError: an array with the wrong number of axes, ``spacing`` of the wrong length or
            not positive, ``spacing`` with a path or a MetaTensor (they carry their own), an
            unsupported type.
        DataError: a path that does not exist or is not an image (:func:`pipeline.io.check_file`).
    """
    if isinstance(image, (str, os.PathLike)):
        if spacing is not None:
            raise MedsegError(f"{image}: spacing is for arrays; a file carries its own geometry")
        return str(check_file(image))
    if isinstance(image, MetaTensor):
        if spacing is not None:
            raise MedsegError("spacing is for arrays; a MetaTensor carries its own affine")
        if image.ndim != spatial_dims + 1:
            raise MedsegError(
                f"a MetaTensor must be channel-first, C + {spatial_dims} spatial axes; got shape {tuple(image.shape)}"
            )
        return [image.float()]
    if isinstance(image, np.ndarray):
        tensor = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))
    elif isinstance(image, torch.Tensor):
        tensor = image.detach().to("cpu", torch.float32)
    else:
        what = type(image).__name__
        raise MedsegError(f"cannot segment a {what}: give a path, a NumPy array, a tensor or a MetaTensor")
    if tensor.ndim == spatial_dims:
        tensor = tensor[None]
    if tensor.ndim != spatial_dims + 1:
        raise MedsegError(
            f"an array of shape {tuple(image.shape)} is neither {spatial_dims}D nor channel-first {spatial_dims}D "
            "(what the network segments)"
        )
    size = spacing if spacing is not None else default_spacing
    size = [float(s) for s in size] if size is not None else [1.0] * spatial_dims
    if len(size) != spatial_dims or not all(np.isfinite(size)) or min(size) <= 0:
        raise MedsegError(f"spacing {list(size)}: expected {spatial_dims} positive numbers (mm per voxel)")
    affine = torch.eye(4, dtype=torch.float64)  # 4x4 for 2D too, as pipeline.io's pictures have
    affine[range(spatial_dims), range(spatial_dims)] = torch.tensor(size, dtype=torch.float64)
    meta = {
        MetaKeys.AFFINE: affine,
        MetaKeys.ORIGINAL_AFFINE: affine.clone(),
        MetaKeys.SPATIAL_SHAPE: np.asarray(tensor.shape[1:]),
        MetaKeys.ORIGINAL_CHANNEL_DIM: 0,
        MetaKeys.SPACE: SpaceKeys.RAS,
        "filename_or_obj": IN_MEMORY,
    }
    return [MetaTensor(tensor.clone(), meta=meta)]
