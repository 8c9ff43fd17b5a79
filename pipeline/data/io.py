"""Writing the files of each dataset layout (used by the synthetic generators and tests).

2D arrays here are NumPy views of the picture, ``H W [C]`` (row = y), as PIL reads and writes
them; the transform chain's loader transposes them to MONAI's ``W H`` (see :mod:`transforms.io`).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from PIL import Image

__all__ = ["write_2d", "write_nifti", "write_json", "ct_affine"]


def write_2d(path: str | Path, array: np.ndarray, mode: str | None = None) -> Path:
    """Write ``H W`` (grey) or ``H W C`` (RGB / RGBA) uint8 as PNG, TIFF or GIF (by suffix).

    GIF stores a palette; our loader turns a grey palette back into grey values.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    array = np.ascontiguousarray(array)
    if array.dtype != np.uint8:
        raise TypeError(f"write_2d expects uint8, got {array.dtype} for {path}")
    image = Image.fromarray(array, mode) if mode else Image.fromarray(array)
    if path.suffix.lower() in (".tif", ".tiff"):
        image.save(path, compression="tiff_deflate")
    else:
        image.save(path)
    return path


def ct_affine(spacing: Sequence[float], shape: Sequence[int]) -> np.ndarray:
    """A scanner-like LPS affine (x, y flipped, as DICOM-converted CT usually is), centred on 0."""
    sx, sy, sz = (float(s) for s in spacing)
    affine = np.diag([-sx, -sy, sz, 1.0])
    affine[:3, 3] = [sx * (shape[0] - 1) / 2, sy * (shape[1] - 1) / 2, -sz * (shape[2] - 1) / 2]
    return affine


def write_nifti(path: str | Path, array: np.ndarray, affine: np.ndarray) -> Path:
    """Write a NIfTI-1 volume with the affine as both qform and sform, units mm."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    img = nib.Nifti1Image(np.asarray(array), affine)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    img.header.set_xyzt_units("mm", "sec")
    nib.save(img, str(path))
    return path


def write_json(path: str | Path, data: Any) -> Path:
    """Write pretty JSON (``dataset.json``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=4) + "\n", encoding="utf-8")
    return path
