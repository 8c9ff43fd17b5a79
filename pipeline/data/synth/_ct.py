"""Shared pieces of the synthetic CT volumes: geometry, blobs, the MSD writer."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from scipy import ndimage

from pipeline.data.synth._draw import smooth_noise
from pipeline.io import atomic_write_text, write_image

MSD_FILES = ("dataset.json", "imagesTr", "labelsTr", "imagesTs")
"""What :func:`write_msd` writes under a dataset root."""


def volume_grid(size: Sequence[int], fov_mm: float, z_mm: float) -> tuple[tuple[int, int, int], np.ndarray]:
    """Shape and spacing (mm) of a CT volume covering ``fov_mm`` in-plane and ``z_mm`` along z."""
    shape = tuple(int(n) for n in size)
    if len(shape) != 3 or min(shape) < 8:
        raise ValueError(f"size must be three ints >= 8, got {size!r}")
    spacing = np.array([fov_mm / shape[0], fov_mm / shape[1], z_mm / shape[2]])
    return shape, spacing  # type: ignore[return-value]


def coords(shape: Sequence[int], spacing: np.ndarray) -> list[np.ndarray]:
    """Physical coordinates (mm, centred on the volume) of each axis, broadcastable (open grid)."""
    return [
        ((np.arange(n) - (n - 1) / 2) * s).reshape([-1 if i == a else 1 for i in range(3)]).astype(np.float32)
        for a, (n, s) in enumerate(zip(shape, spacing, strict=True))
    ]


def blob(
    rng: np.random.Generator,
    shape: Sequence[int],
    spacing: np.ndarray,
    centre: Sequence[float],
    radii: Sequence[float],
    roughness: float = 0.15,
) -> np.ndarray:
    """A deformed ellipsoid (bool): ``sum((x - c)**2 / r**2) < 1 + roughness * smooth noise``."""
    x, y, z = coords(shape, spacing)
    q = ((x - centre[0]) / radii[0]) ** 2 + ((y - centre[1]) / radii[1]) ** 2 + ((z - centre[2]) / radii[2]) ** 2
    wobble = smooth_noise(rng, shape, scale=max(shape) / 4)
    return q < 1.0 + roughness * wobble


def finish_ct(
    rng: np.random.Generator, hu: np.ndarray, spacing: np.ndarray, blur_mm: float = 0.8, noise_hu: float = 18.0
) -> np.ndarray:
    """Scanner blur (anisotropic: thick slices blur along z), quantum noise, int16 HU."""
    sigma = [max(blur_mm / s, 0.3) for s in spacing[:2]] + [max(0.45, 0.5 * blur_mm / spacing[2] + 0.35)]
    hu = ndimage.gaussian_filter(hu, sigma=sigma)
    hu += rng.normal(0.0, noise_hu, hu.shape).astype(np.float32)
    return np.clip(np.round(hu), -1024, 3071).astype(np.int16)


def ct_affine(spacing: Sequence[float], shape: Sequence[int]) -> np.ndarray:
    """A scanner-like LPS affine (x, y flipped, as DICOM-converted CT usually is), centred on 0."""
    sx, sy, sz = (float(s) for s in spacing)
    affine = np.diag([-sx, -sy, sz, 1.0])
    affine[:3, 3] = [sx * (shape[0] - 1) / 2, sy * (shape[1] - 1) / 2, -sz * (shape[2] - 1) / 2]
    return affine


def write_msd(
    out: Path, task: str, prefix: str, labels: dict[str, str], cases: list[tuple[np.ndarray, np.ndarray, np.ndarray]]
) -> None:
    """Write ``(image, label, spacing)`` cases in the Medical Segmentation Decathlon layout."""
    training = []
    for i, (image, label, spacing) in enumerate(cases, start=1):
        name = f"{prefix}_{i:03d}.nii.gz"
        affine = ct_affine(spacing, image.shape)
        write_image(out / "imagesTr" / name, image, affine=affine)
        write_image(out / "labelsTr" / name, label.astype(np.uint8), affine=affine)
        training.append({"image": f"./imagesTr/{name}", "label": f"./labelsTr/{name}"})
    (out / "imagesTs").mkdir(parents=True, exist_ok=True)
    meta = {
        "name": task,
        "description": f"medseg synthetic look-alike of MSD {task}",
        "reference": "synthetic (pipeline.data.synth)",
        "licence": "CC-BY-SA 4.0",
        "release": "1.0",
        "tensorImageSize": "3D",
        "modality": {"0": "CT"},
        "labels": labels,
        "numTraining": len(training),
        "numTest": 0,
        "training": training,
        "test": [],
    }
    atomic_write_text(out / "dataset.json", json.dumps(meta, indent=4) + "\n")
