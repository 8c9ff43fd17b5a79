"""Reading image files the same way everywhere: NIfTI through nibabel, 2D formats through PIL.

MONAI's ``LoadImage`` is used for both, so every loaded array is a ``MetaTensor`` with MONAI's
metadata (affine, spatial shape, file name) and can be inverted and written back by MONAI.
What we add, in :class:`Image2DReader`:

- TIFF and GIF, which MONAI's ``PILReader`` does not accept by suffix (DRIVE ships both);
- palette / bilevel / alpha images turned into plain grey or RGB values: a palette GIF (DRIVE's
  masks) would otherwise load as palette *indices* (0/1) instead of its grey values (0/255), and
  DSB2018's RGBA PNGs would gain an alpha channel.

Orientation: like MONAI's ``PILReader`` (``reverse_indexing=True``), a 2D file of width ``W``
and height ``H`` loads as spatial axes ``(W, H)``, i.e. the transpose of ``numpy.asarray`` of
the PIL image. MONAI's ``PILWriter`` (``SaveImage(..., output_ext=".png")``) transposes back,
so a prediction written with it lies exactly over its input.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from monai.data import NibabelReader, PILReader
from PIL import Image

from pipeline.data._utils import IMAGE_2D_SUFFIXES, NIFTI_SUFFIXES, split_suffix

__all__ = ["Image2DReader", "normalise_mode", "file_kind"]


def normalise_mode(img: Image.Image) -> Image.Image:
    """Return ``img`` as grey (``L``/``I``/``F``) or ``RGB`` values, without alpha or palette.

    A palette image becomes ``L`` when every palette colour used is grey, ``RGB`` otherwise.
    """
    mode = img.mode
    if mode in ("L", "I", "I;16", "I;16B", "I;16L", "F", "RGB"):
        return img
    if mode == "1":
        return img.convert("L")
    if mode in ("LA", "La"):
        return img.convert("L")
    if mode in ("RGBA", "RGBa", "RGBX", "CMYK", "YCbCr", "LAB", "HSV"):
        return img.convert("RGB")
    if mode in ("P", "PA"):
        rgb = np.asarray(img.convert("RGB"))
        grey = (rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all()
        return Image.fromarray(np.ascontiguousarray(rgb[..., 0])) if grey else Image.fromarray(rgb)
    return img


class Image2DReader(PILReader):
    """MONAI's ``PILReader`` for PNG, TIFF, GIF, JPEG and BMP, with modes normalised.

    Spatial axes follow MONAI's ``PILReader`` convention ``(W, H)`` (see the module docstring).
    """

    def __init__(self, **kwargs) -> None:
        super().__init__(converter=normalise_mode, reverse_indexing=True, **kwargs)

    def verify_suffix(self, filename: Sequence[str | Path] | str | Path) -> bool:
        names = [filename] if isinstance(filename, (str, Path)) else list(filename)
        return all(split_suffix(Path(n).name)[1].lower() in IMAGE_2D_SUFFIXES for n in names)


def file_kind(path: str | Path) -> str | None:
    """``"nifti"``, ``"2d"`` or ``None`` (unsupported) from the file suffix."""
    suffix = split_suffix(Path(path).name)[1].lower()
    if suffix in NIFTI_SUFFIXES:
        return "nifti"
    if suffix in IMAGE_2D_SUFFIXES:
        return "2d"
    return None


def nifti_reader() -> NibabelReader:
    """MONAI's nibabel reader, as used by the loader (kept here so there is one place to change)."""
    return NibabelReader()
