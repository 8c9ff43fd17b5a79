"""``dense``: dense fluorescence nuclei in 2D or 3D, touching and overlapping, with instance ids.

Denser than :func:`pipeline.data.synth.cell.nuclei` (whose clumps are sparse) and N-D, for the
instance benchmark and tests: most nuclei sit in clumps where neighbours touch or overlap by up
to ``overlap`` of their radii. Where shapes overlap, the fluorescence of both adds up (a brighter
lens, as in widefield images of stacked nuclei) while each pixel's id goes to the nucleus whose
boundary is relatively farther (a weighted Voronoi split, as annotators draw it), so the ids tile
without overlap.

The module is not called ``nuclei``: importing a submodule binds its name on the package, and
``pipeline.data.synth`` already uses the name ``nuclei`` for :func:`pipeline.data.synth.cell.nuclei`
(``make_dataset("cell")`` would then call a module).

Example:
    >>> import numpy as np
    >>> image, ids = dense_nuclei(np.random.default_rng(0), (64, 64))
    >>> image.dtype, image.shape, ids.dtype, int(ids.max()) > 10
    (dtype('float32'), (64, 64), dtype('int32'), True)
    >>> sorted(np.unique(ids)) == list(range(int(ids.max()) + 1))  # ids 0..N, no gaps
    True
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage

from pipeline.data.synth._draw import smooth_noise

__all__ = ["dense_nuclei"]


def _rotation(rng: np.random.Generator, ndim: int) -> np.ndarray:
    q, r = np.linalg.qr(rng.standard_normal((ndim, ndim)))
    return q * np.sign(np.diag(r))  # uniform over rotations (and reflections, harmless here)


def dense_nuclei(
    rng: np.random.Generator,
    shape: Sequence[int] = (128, 128),
    *,
    density: float = 0.45,
    radius: tuple[float, float] = (4.0, 9.0),
    overlap: float = 0.3,
    clump: float = 0.7,
) -> tuple[np.ndarray, np.ndarray]:
    """One field of dense nuclei: a noisy fluorescence image and its instance ids.

    Args:
        rng: the generator (the same seed gives the same field).
        shape: ``H W`` or ``H W D`` in pixels.
        density: fraction of the field the nuclei would cover without overlap (0.45 is dense:
            about 70 nuclei in 128² with the default radii).
        radius: range of the nuclei's radii in pixels (each is an ellipse / ellipsoid with axes
            between 0.7 and 1 times its radius).
        overlap: how far two nuclei may interpenetrate, as a fraction of the sum of their radii
            (0 = at most touching).
        clump: probability that a nucleus is placed against an earlier one.

    Returns:
        ``image`` float32 in ``[0, 1]`` and ``ids`` int32 (0 = background, 1..N), both ``shape``.

    Raises:
        ValueError: for a shape that is not 2 or 3 sizes >= 8, or settings out of range.
    """
    shape = tuple(int(s) for s in shape)
    if len(shape) not in (2, 3) or min(shape) < 8:
        raise ValueError(f"shape must be 2 or 3 sizes >= 8, got {shape!r}")
    if not 0 < density <= 1 or not 0 <= overlap < 1 or not 0 <= clump <= 1:
        raise ValueError(f"need 0 < density <= 1, 0 <= overlap < 1, 0 <= clump <= 1, got {density}, {overlap}, {clump}")
    if not 0 < radius[0] <= radius[1]:
        raise ValueError(f"radius must be (min, max) with 0 < min <= max, got {radius!r}")
    ndim = len(shape)
    dims = np.asarray(shape, np.float64)
    mean_r = (radius[0] + radius[1]) / 2
    unit = np.pi * mean_r**2 if ndim == 2 else 4 / 3 * np.pi * mean_r**3
    n_target = max(1, int(round(density * float(np.prod(dims)) / (unit * 0.85))))

    best = np.full(shape, np.inf, np.float32)  # normalised radius of the nucleus owning each pixel
    owner = np.zeros(shape, np.int32)
    signal = np.zeros(shape, np.float32)
    centres: list[np.ndarray] = []
    radii: list[float] = []
    for _ in range(n_target * 4):  # rejected placements are retried
        if len(centres) >= n_target:
            break
        r = rng.uniform(*radius)
        if centres and rng.random() < clump:
            k = int(rng.integers(len(centres)))
            direction = rng.standard_normal(ndim)
            direction /= np.linalg.norm(direction)
            gap = rng.uniform(1 - overlap, 1.0) * (r + radii[k])
            c = centres[k] + direction * gap
        else:
            c = rng.uniform(0, dims)
        if np.any(c < 0) or np.any(c > dims - 1):
            continue
        if centres:
            dist = np.linalg.norm(np.asarray(centres) - c, axis=1)
            if np.any(dist < (1 - overlap) * (np.asarray(radii) + r)):
                continue  # would hide too much of another nucleus
        centres.append(c)
        radii.append(r)
        axes = r * np.concatenate([[1.0], rng.uniform(0.7, 1.0, ndim - 1)])
        rot = _rotation(rng, ndim)
        pad = int(np.ceil(r * 1.2)) + 1
        lo = np.maximum(0, np.floor(c).astype(int) - pad)
        hi = np.minimum(shape, np.floor(c).astype(int) + pad + 1)
        box = tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))
        grid = np.stack(np.meshgrid(*[np.arange(a, b) for a, b in zip(lo, hi, strict=True)], indexing="ij"), -1)
        local = (grid - c) @ rot  # coordinates in the nucleus' own axes
        rho = np.sqrt(np.sum((local / axes) ** 2, axis=-1))
        if ndim == 2:  # slightly lobed outlines
            phi = np.arctan2(local[..., 1], local[..., 0])
            rho = rho / (1.0 + sum(rng.normal(0, 0.04) * np.cos(m * phi + rng.uniform(0, 2 * np.pi)) for m in (2, 3)))
        inside = rho < 1.0
        mine = inside & (rho < best[box])
        best[box][mine] = rho[mine]
        owner[box][mine] = len(centres)
        profile = np.sqrt(np.clip(1.0 - rho**4, 0.0, 1.0))
        signal[box] += np.where(inside, rng.uniform(0.4, 1.0) * (0.55 + 0.45 * profile), 0.0).astype(np.float32)

    ids, ids_map = np.unique(owner, return_inverse=True)
    ids_map = ids_map.reshape(shape).astype(np.int32)
    if ids[0] != 0:
        ids_map += 1
    texture = 1.0 + 0.15 * smooth_noise(rng, shape, 2.0)
    background = 0.06 + 0.03 * smooth_noise(rng, shape, 30.0)
    image = ndimage.gaussian_filter(signal * texture, sigma=rng.uniform(0.8, 1.3)) + background
    photons = rng.uniform(60, 200)
    image = rng.poisson(np.clip(image, 0, None) * photons) / photons + rng.normal(0, 0.015, shape)
    image = np.clip(image / max(float(np.percentile(image, 99.9)), 1e-6), 0, 1).astype(np.float32)
    return image, ids_map
