"""``cell``: DSB2018-like fluorescence nuclei, one mask PNG per nucleus."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from pipeline.data.synth._draw import smooth_noise
from pipeline.data.synth._kinds import SynthKind, write_picture
from pipeline.data.synth.dense import dense_nuclei
from pipeline.instances.postprocess import remove_small
from pipeline.io import write_image
from pipeline.registry import SYNTH_KINDS

DEFAULT_SIZE = 128


def nuclei(rng: np.random.Generator, size: int = DEFAULT_SIZE) -> tuple[np.ndarray, np.ndarray]:
    """One fluorescence microscopy field of nuclei (``size`` x ``size`` px, ~15–30 per 128²).

    Nuclei are lobed ellipses of varied size (radius 4–11 px whatever ``size``), orientation and
    brightness, some in clumps so neighbours touch: where two overlap, each pixel goes to the
    nucleus whose boundary is relatively farther (a weighted Voronoi split), so the instance
    masks tile without overlap. Chromatin texture, uneven background, optical blur (PSF),
    Poisson shot noise and Gaussian read noise.

    Returns:
        ``image`` ``H W`` uint8 and ``instances`` ``H W`` int32 (0 = background, 1..N).
    """
    h = w = int(size)
    n_target = max(1, int(rng.integers(15, 31) * (size / 128.0) ** 2))
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    best = np.full((h, w), np.inf, dtype=np.float32)  # normalised radius of the nucleus owning each pixel
    owner = np.zeros((h, w), dtype=np.int32)
    brightness = [0.0]
    centres: list[np.ndarray] = []
    for _ in range(n_target):
        r = rng.uniform(4.0, 11.0)
        if centres and rng.random() < 0.4:  # clump: place against an earlier nucleus
            c = centres[int(rng.integers(len(centres)))] + rng.normal(0, 1, 2) / np.sqrt(2) * r * 1.6
        else:
            c = rng.uniform(r, [h - r, w - r])
        c = np.clip(c, 0, [h - 1, w - 1])
        if any(np.hypot(*(c - o)) < 0.9 * r for o in centres):
            continue  # would mostly hide another nucleus
        centres.append(c)
        ecc, theta = rng.uniform(0.7, 1.0), rng.uniform(0, np.pi)
        ax, ay = r, r * ecc
        pad = int(np.ceil(r * 1.4)) + 1
        y0, y1 = max(0, int(c[0]) - pad), min(h, int(c[0]) + pad + 1)
        x0, x1 = max(0, int(c[1]) - pad), min(w, int(c[1]) + pad + 1)
        dy, dx = yy[y0:y1, x0:x1] - c[0], xx[y0:y1, x0:x1] - c[1]
        u = dx * np.cos(theta) + dy * np.sin(theta)
        v = -dx * np.sin(theta) + dy * np.cos(theta)
        phi = np.arctan2(v, u)
        lobes = 1.0 + sum(rng.normal(0, 0.05) * np.cos(m * phi + rng.uniform(0, 2 * np.pi)) for m in (2, 3, 4))
        rho = np.hypot(u / ax, v / ay) / lobes
        mine = (rho < 1.0) & (rho < best[y0:y1, x0:x1])
        best[y0:y1, x0:x1][mine] = rho[mine]
        owner[y0:y1, x0:x1][mine] = len(brightness)
        brightness.append(rng.uniform(0.35, 1.0))
    # renumber so ids are 1..N with no gaps (a nucleus may have lost every pixel)
    ids, instances = np.unique(owner, return_inverse=True)
    instances = instances.reshape(h, w).astype(np.int32)
    level = np.asarray(brightness, dtype=np.float32)[ids][instances]
    profile = np.where(instances > 0, np.sqrt(np.clip(1.0 - best**4, 0.0, 1.0)), 0.0)
    texture = 1.0 + 0.18 * smooth_noise(rng, (h, w), 2.0)
    signal = level * (0.55 + 0.45 * profile) * texture * (instances > 0)
    background = 0.06 + 0.03 * smooth_noise(rng, (h, w), 40.0)
    image = ndimage.gaussian_filter(signal, sigma=rng.uniform(0.8, 1.4)) + background
    photons = rng.uniform(80, 250)
    image = rng.poisson(np.clip(image, 0, None) * photons) / photons + rng.normal(0, 0.01, image.shape)
    gain = rng.uniform(0.6, 1.0)
    return np.clip(image * gain * 255.0, 0, 255).astype(np.uint8), instances


def _write(out, n: int, rng, size: int, dense: bool = False) -> None:
    """DSB2018's layout: ``stage1_train/<id>/images/<id>.png`` (RGBA) and one mask per nucleus.

    ``dense``: fields of :func:`pipeline.data.synth.dense.dense_nuclei` (most nuclei in clumps,
    touching or overlapping) instead of :func:`nuclei`'s sparser ones.
    """
    for i in range(n):
        r = rng(i)
        if dense:
            field, instances = dense_nuclei(r, (size, size))
            image = np.clip(field * 255.0, 0, 255).astype(np.uint8)
        else:
            image, instances = nuclei(r, size)
        case = r.bytes(32).hex()
        rgba = np.dstack([image, image, image, np.full_like(image, 255)])
        write_picture(out / "stage1_train" / case / "images" / f"{case}.png", rgba)
        for k in range(1, int(instances.max()) + 1):
            mask = (instances == k).astype(np.uint8) * 255
            write_picture(out / "stage1_train" / case / "masks" / f"{r.bytes(32).hex()}.png", mask)


SYNTH_KINDS.register("cell", SynthKind("dsb2018", 2, DEFAULT_SIZE, ("stage1_train",), 3, _write))


def _write_3d(out, n: int, rng, size: tuple[int, int, int]) -> None:
    """Dense 3D nuclei in the ``folders`` layout: ``images/<case>.nii.gz`` (float32, spacing
    0.5 x 0.5 x 1.0 µm) and ``labels/<case>.nii.gz`` (uint16 instance ids, 0 = background).

    Volumes are drawn isotropic at the lateral pixel size and every second plane is kept along
    the third axis, as a confocal stack sampled coarser in depth.
    """
    spacing = (0.5, 0.5, 1.0)
    for i in range(n):
        r = rng(i)
        image, ids = dense_nuclei(r, (size[0], size[1], size[2] * 2), radius=(4.0, 8.0))
        image, ids = image[..., ::2], ids[..., ::2]
        ids = remove_small(ids, 1)  # a nucleus whose planes were all skipped
        case = f"cell3d_{i:03d}"
        write_image(out / "images" / f"{case}.nii.gz", image, spacing=spacing)
        write_image(out / "labels" / f"{case}.nii.gz", ids.astype(np.uint16), spacing=spacing)


SYNTH_KINDS.register("cell3d", SynthKind("folders", 3, (64, 64, 24), ("images", "labels"), 4, _write_3d))
