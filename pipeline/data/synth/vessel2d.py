"""``vessel2d``: DRIVE-like colour fundus photographs with vessel and field-of-view masks."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from pipeline.data.synth._draw import grow_tree, smooth_noise, tube_field
from pipeline.data.synth._kinds import SynthKind, write_picture
from pipeline.registry import SYNTH_KINDS

DEFAULT_SIZE = 192


def fundus(rng: np.random.Generator, size: int = DEFAULT_SIZE) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One synthetic fundus image.

    A circular field of view; an optic disc to one side with four arcades leaving it, each a
    branching tree whose vessels thin by Murray's law down to ~1 px; vessels darken the green
    channel most, thin ones least; a dark macula, a vignette and an illumination gradient across
    the field; slight blur and sensor noise. Widths scale with ``size`` (DRIVE is 565 px wide).

    Returns:
        ``rgb`` ``H W 3`` uint8, ``vessels`` ``H W`` uint8 0/255, ``fov`` ``H W`` uint8 0/255.
    """
    h = w = int(size)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    cy, cx = (h - 1) / 2 + rng.uniform(-0.02, 0.02) * h, (w - 1) / 2 + rng.uniform(-0.02, 0.02) * w
    fov_r = 0.46 * size
    rr = np.hypot(yy - cy, xx - cx)
    fov = rr <= fov_r
    side = rng.choice([-1.0, 1.0])  # left or right eye: disc on one side, macula on the other
    disc = np.array([cy + rng.uniform(-0.06, 0.06) * size, cx + side * rng.uniform(0.26, 0.32) * size])
    macula = np.array([cy + rng.uniform(-0.04, 0.04) * size, cx - side * rng.uniform(0.05, 0.12) * size])

    # The tree is grown at DRIVE's scale (565 px) and shrunk to `size`; vessels that would be
    # thinner than a pixel are kept at ~1 px (as DRIVE's annotators drew capillaries) or dropped.
    scale = size / 565.0

    def inside(p: np.ndarray) -> np.ndarray:
        return np.hypot(p[:, 0] * scale - cy, p[:, 1] * scale - cx) < fov_r - 1.0

    r0 = 5.0 * rng.uniform(0.9, 1.1)
    min_r, seg = 0.6, 14.0
    trunks = []  # (direction, relative radius)
    # superior/inferior temporal arcades curve around the macula; nasal vessels run to the edge
    for vert in (-1.0, 1.0):
        a = np.radians(rng.uniform(40, 70))
        trunks.append((np.array([vert * np.sin(a), -side * np.cos(a)]), 1.0))
        a = np.radians(rng.uniform(10, 50))
        trunks.append((np.array([vert * np.sin(a), side * np.cos(a)]), 0.75))
    for _ in range(int(rng.integers(2, 5))):  # smaller vessels leaving the disc anywhere
        a = rng.uniform(0, 2 * np.pi)
        trunks.append((np.array([np.sin(a), np.cos(a)]), rng.uniform(0.35, 0.55)))
    pts, rad = [], []
    for direction, rel in trunks:
        p, r = grow_tree(
            rng,
            disc / scale,
            direction,
            r0 * rel,
            inside=inside,
            step=0.5,
            min_radius=min_r,
            length_per_radius=seg,
            branch_angle=65.0,
            wiggle=0.05,
            taper=0.06,
        )
        pts.append(p)
        rad.append(r)
    points, radii = np.concatenate(pts) * scale, np.concatenate(rad) * scale
    keep = radii >= min(0.3, 0.6 * scale)
    points, radii = points[keep], np.maximum(radii[keep], 0.55)
    field = tube_field(points, radii, (h, w), (1.0, 1.0), margin=2.0)
    vessels = (field <= 0) & fov
    coverage = np.clip(0.5 - field, 0.0, 1.0)  # fraction of the pixel the vessel covers
    # the darkening of each pixel follows the widest vessel near it: thin vessels are faint
    local_r = ndimage.maximum_filter(np.where(field < 0.5, _radius_map(points, radii, (h, w)), 0.0), size=3)
    depth = 0.6 * (1.0 - np.exp(-local_r / 0.7)) * rng.uniform(0.8, 1.1)

    light = 1.0 - 0.55 * (rr / fov_r) ** 2.2  # vignette
    grad = rng.uniform(-0.25, 0.25, 2)
    light *= 1.0 + grad[0] * (yy - cy) / fov_r + grad[1] * (xx - cx) / fov_r
    light *= 1.0 + 0.06 * smooth_noise(rng, (h, w), 0.15 * size) + 0.03 * smooth_noise(rng, (h, w), 0.03 * size)
    dm = np.hypot(yy - macula[0], xx - macula[1])
    light *= 1.0 - rng.uniform(0.25, 0.4) * np.exp(-((dm / (0.12 * size)) ** 2))
    dd = np.hypot(yy - disc[0], xx - disc[1])
    disc_glow = np.exp(-((dd / (0.065 * size)) ** 4))
    green = 0.5 * light * (1.0 - depth * coverage) + 0.4 * disc_glow
    red = 0.85 * light * (1.0 - 0.35 * depth * coverage) + 0.25 * disc_glow
    blue = 0.12 * light * (1.0 - 0.5 * depth * coverage) + 0.25 * disc_glow
    rgb = np.stack([red, green, blue], axis=-1) * rng.uniform(0.8, 1.1)
    rgb = ndimage.gaussian_filter(rgb, sigma=(0.5, 0.5, 0))
    rgb += rng.normal(0.0, 0.018, rgb.shape)
    rgb *= fov[..., None]
    rgb += np.abs(rng.normal(0.0, 0.01, rgb.shape))  # dark, noisy outside the field of view
    out = np.clip(rgb * 255.0, 0, 255).astype(np.uint8)
    return out, vessels.astype(np.uint8) * 255, fov.astype(np.uint8) * 255


def _radius_map(points: np.ndarray, radii: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Largest vessel radius whose centreline passes through each pixel (0 elsewhere), dilated to cover the tube."""
    out = np.zeros(shape, dtype=np.float32)
    idx = np.clip(np.round(points).astype(int), 0, np.array(shape) - 1)
    np.maximum.at(out, (idx[:, 0], idx[:, 1]), radii.astype(np.float32))
    reach = int(np.ceil(radii.max())) + 1 if len(radii) else 1
    return ndimage.grey_dilation(out, size=(2 * reach + 1, 2 * reach + 1))


def _write(out, n: int, rng, size: int, *, n_test: int | None = None) -> None:
    """DRIVE's layout: ``training/`` and ``test/`` with ``images/``, ``1st_manual/``, ``mask/``."""
    n_test = max(1, n // 4) if n_test is None else n_test
    if isinstance(n_test, bool) or not isinstance(n_test, int) or n_test < 0:
        raise ValueError(f"n_test must be a non-negative int, got {n_test!r}")
    first = max(21, n_test + 1)  # DRIVE numbers its test images 01-20 and training 21-40
    jobs = [("training", first + i, i) for i in range(n)] + [("test", i + 1, n + i) for i in range(n_test)]
    for part, num, index in jobs:
        rgb, vessels, fov = fundus(rng(index), size)
        write_picture(out / part / "images" / f"{num:02d}_{part}.tif", rgb)
        write_picture(out / part / "1st_manual" / f"{num:02d}_manual1.gif", vessels)
        write_picture(out / part / "mask" / f"{num:02d}_{part}_mask.gif", fov)


SYNTH_KINDS.register("vessel2d", SynthKind("drive", 2, DEFAULT_SIZE, ("training", "test"), 0, _write))
