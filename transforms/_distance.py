"""Exact signed distance maps: the Euclidean distance transform (EDT) core shared by
:class:`transforms.array.SignedDistanceMap` and :class:`pipeline.losses.KervadecBoundaryLoss`.

Convention (Kervadec et al., MIDL 2019; ``monai.losses.BoundaryLoss``): for a binary mask ``M``
and ``d`` the Euclidean distance between voxel centres in physical units (``spacing``),

* ``sdm(x) = -(d(x, not M) - h)`` inside ``M``: 0 on the inner boundary, negative deeper in;
* ``sdm(x) = d(x, M)`` outside ``M``: positive;
* all zeros when ``M`` is empty or fills the whole array (there is no interface).

``h`` is one voxel length, the smallest spacing. With unit spacing it is the reference's ``-1``
offset, so the maps equal MONAI's. The reference subtracts ``1`` whatever the spacing, which
with 0.5 mm voxels makes the first inner layer ``+0.5``: positive, i.e. it penalises correct
foreground. Subtracting ``h`` keeps the inner boundary at 0 and makes the map exactly
``s × (unit-spacing map)`` for isotropic spacing ``s``.

Backends:

* ``"edt"``: the ``edt`` package (seung-lab; exact Felzenszwalb–Huttenlocher, C++, 2D/3D).
  One *multi-label* pass over ``mask + 1`` gives, at every voxel, the distance to the nearest
  voxel of the other phase: the inside and the outside distances at once (scipy needs two
  passes). About 14× faster than two ``scipy.ndimage.distance_transform_edt`` calls on a
  256×256×128 mask (``bench/distance.py``). float32 output.
* ``"scipy"``: two ``scipy.ndimage.distance_transform_edt`` calls (float64, any dimension).
* ``"cupy"``: ``cupyx.scipy.ndimage.distance_transform_edt`` on CUDA tensors (the optional
  ``gpu`` extra); exact, about a millisecond for a 96³ patch, so a loss can afford it per step.
* ``"auto"``: ``cupy`` for CUDA tensors when CuPy imports, else ``edt`` when installed, else
  ``scipy``.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from contextlib import nullcontext
from typing import Any

import numpy as np
import torch

__all__ = [
    "BACKENDS",
    "resolve_spacing",
    "signed_distance",
    "label_signed_distance",
    "batch_signed_distance",
    "has_cupy",
]

BACKENDS = ("auto", "edt", "scipy", "cupy")

try:  # the fast CPU path; optional so a bare install still works (through scipy)
    import edt as _edt
except ImportError:  # pragma: no cover - exercised only without the package
    _edt = None


@functools.cache
def _cupy_modules() -> tuple[Any, Any] | None:
    """``(cupy, cupyx.scipy.ndimage)`` or ``None`` when CuPy is missing or unusable."""
    try:
        import cupy
        from cupyx.scipy import ndimage
    except Exception:  # ImportError, or a CuPy built for another CUDA raising at import
        return None
    return cupy, ndimage


def has_cupy() -> bool:
    """Whether the CuPy backend can be used."""
    return _cupy_modules() is not None


def check_backend(backend: str) -> str:
    """Return ``backend`` or raise ``ValueError`` naming the options."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    return backend


def resolve_spacing(spacing: float | Sequence[float] | None, ndim: int) -> tuple[float, ...]:
    """Spacing as one positive float per spatial axis (``None`` means 1.0).

    Raises:
        ValueError: wrong length, or a value that is not finite and positive.
    """
    if spacing is None:
        return (1.0,) * ndim
    if isinstance(spacing, (int, float)):
        values = (float(spacing),) * ndim
    else:
        values = tuple(float(s) for s in np.asarray(spacing, dtype=float).ravel())
    if len(values) != ndim:
        raise ValueError(f"spacing needs {ndim} values (one per spatial axis), got {spacing!r}")
    if not all(np.isfinite(v) and v > 0 for v in values):
        raise ValueError(f"spacing must be finite and positive, got {spacing!r}")
    return values


def _cpu_backend(backend: str, ndim: int) -> str:
    if backend in ("auto", "edt") and _edt is not None and ndim in (2, 3):
        return "edt"
    if backend == "edt":
        why = "is not installed" if _edt is None else f"supports 2D and 3D only, got {ndim}D"
        raise ValueError(f"backend 'edt': the edt package {why}; use backend='scipy'")
    return "scipy"


def signed_distance(
    mask: np.ndarray, spacing: float | Sequence[float] | None = None, backend: str = "auto"
) -> np.ndarray:
    """Signed distance map of one binary mask (see the module docstring for the convention).

    Args:
        mask: boolean (or 0/1) array, spatial axes only (``HW`` or ``HWD``).
        spacing: voxel size per axis in physical units; ``None`` is 1.0.
        backend: ``"auto"``, ``"edt"`` or ``"scipy"`` (CPU backends).

    Returns:
        float32 array shaped like ``mask``.
    """
    mask = np.ascontiguousarray(mask, dtype=bool)
    sp = resolve_spacing(spacing, mask.ndim)
    if check_backend(backend) == "cupy":
        raise ValueError("backend 'cupy' needs a CUDA tensor: use batch_signed_distance")
    count = int(mask.sum())
    if count == 0 or count == mask.size:
        return np.zeros(mask.shape, np.float32)
    h = min(sp)
    if _cpu_backend(backend, mask.ndim) == "edt":
        # two labels (1 = outside, 2 = inside) and no zeros: the multi-label EDT returns, for
        # every voxel, the distance to the nearest voxel of the other phase.
        phases = mask.view(np.uint8) + np.uint8(1)
        dist = _edt.edt(phases, anisotropy=sp, black_border=False, parallel=1).astype(np.float32, copy=False)
        np.subtract(np.float32(h), dist, out=dist, where=mask)  # in place: one pass, no temporaries
        return dist
    from scipy.ndimage import distance_transform_edt

    inside = distance_transform_edt(mask, sampling=sp)
    outside = distance_transform_edt(~mask, sampling=sp)
    return np.where(mask, h - inside, outside).astype(np.float32)


def label_signed_distance(
    label: np.ndarray,
    num_classes: int,
    spacing: float | Sequence[float] | None = None,
    backend: str = "auto",
) -> np.ndarray:
    """One signed distance map per class of a class-index label.

    For two classes one EDT serves both maps: class 0 is the complement of class 1, and the
    map of a complement is ``h - map`` (``h`` = smallest spacing).

    Args:
        label: class indices (integer, or whole-valued floats), spatial axes only (``HW[D]``),
            values in ``[0, num_classes)``.
        num_classes: ``K``, background included.
        spacing: voxel size per axis; ``None`` is 1.0.
        backend: CPU backend (``"auto"``, ``"edt"``, ``"scipy"``).

    Returns:
        float32 array ``K H W [D]``.
    """
    label = np.asarray(label)
    out = np.empty((num_classes, *label.shape), np.float32)
    if num_classes == 2:
        out[1] = signed_distance(label == 1, spacing, backend)
        if out[1].any():  # otherwise class 1 is empty or full, so class 0 is full or empty
            np.subtract(np.float32(min(resolve_spacing(spacing, label.ndim))), out[1], out=out[0])
        else:
            out[0] = 0.0
        return out
    for k in range(num_classes):
        out[k] = signed_distance(label == k, spacing, backend)
    return out


def batch_signed_distance(
    target: torch.Tensor, spacing: float | Sequence[float] | None = None, backend: str = "auto"
) -> torch.Tensor:
    """Signed distance maps of a batch of one-hot (or multi-label) masks.

    Args:
        target: ``BKHW[D]``; a voxel belongs to class ``k`` where ``target[:, k] > 0.5``.
        spacing: voxel size per spatial axis; ``None`` is 1.0.
        backend: ``"auto"`` uses CuPy for CUDA tensors when it imports, else the CPU backends.

    Returns:
        float32 ``BKHW[D]`` on ``target``'s device.

    Raises:
        ValueError: backend ``"cupy"`` without CuPy.
    """
    check_backend(backend)
    masks = (target.detach() > 0.5).reshape(-1, *target.shape[2:])
    sp = resolve_spacing(spacing, target.dim() - 2)
    use_cupy = backend == "cupy" or (backend == "auto" and target.is_cuda and has_cupy())
    if use_cupy:
        modules = _cupy_modules()
        if modules is None:
            raise ValueError("backend 'cupy': CuPy is not installed (pip install medseg[gpu])")
        out = _cupy_signed_distance(masks, sp, modules)
    else:
        arr = masks.cpu().numpy()
        out = torch.from_numpy(np.stack([signed_distance(m, sp, backend) for m in arr]))
    return out.reshape(target.shape).to(device=target.device)


def _cupy_signed_distance(masks: torch.Tensor, spacing: tuple[float, ...], modules: tuple[Any, Any]) -> torch.Tensor:
    """CuPy EDT of ``N, *spatial`` boolean masks; tensors cross by DLPack, no host copy."""
    cp, ndimage = modules
    counts = masks.flatten(1).sum(1).tolist()  # one host sync for the empty/full test
    size = masks[0].numel()
    out = torch.zeros(masks.shape, dtype=torch.float32, device=masks.device)
    h = min(spacing)
    # run CuPy's kernels on torch's current stream so they are ordered with the training step
    stream = cp.cuda.ExternalStream(torch.cuda.current_stream(masks.device).cuda_stream) if masks.is_cuda else None
    with stream if stream is not None else nullcontext():
        for i, count in enumerate(counts):
            if count == 0 or count == size:
                continue
            inside_mask = masks[i].to(torch.uint8).contiguous()
            phase = cp.from_dlpack(inside_mask)
            inside = torch.from_dlpack(ndimage.distance_transform_edt(phase, sampling=spacing))
            outside = torch.from_dlpack(ndimage.distance_transform_edt(1 - phase, sampling=spacing))
            out[i] = torch.where(masks[i], h - inside, outside).float()
    return out
