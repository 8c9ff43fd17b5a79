"""``lung``: MSD Task06_Lung-like chest CT in HU with lung-field and nodule labels."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from pipeline.data.synth._ct import MSD_FILES, blob, coords, finish_ct, volume_grid, write_msd
from pipeline.data.synth._draw import grow_tree, smooth_noise, tube_field
from pipeline.data.synth._kinds import SynthKind
from pipeline.registry import SYNTH_KINDS

DEFAULT_SIZE = (96, 96, 48)


def _segments(points: list[tuple[Sequence[float], Sequence[float]]], radius: float, step: float):
    pts = [np.linspace(a, b, max(2, int(np.linalg.norm(np.subtract(b, a)) / step))) for a, b in points]
    allp = np.concatenate(pts)
    return allp, np.full(len(allp), radius)


def chest_ct(
    rng: np.random.Generator, size: Sequence[int] = DEFAULT_SIZE, nodules: bool = True
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One chest CT: air, body wall (fat, muscle), spine and ribs, heart, airways, lungs.

    Lungs are two deformed, apex-tapered columns above a domed diaphragm with parenchyma near
    -860 HU (denser posteriorly), pulmonary vessels (a branching tree from each hilum, ~40 HU),
    trachea and main bronchi (air, not labelled). With ``nodules``, 0–3 lobulated solid nodules
    (4–12 mm radius, ~20 HU) sit inside the lungs. Spacing is anisotropic (slices twice as thick
    as the in-plane spacing), with scanner blur and ~20 HU noise.

    Returns:
        ``image`` int16 HU ``X Y Z``, ``label`` uint8 (1 = lung field, 2 = nodule), ``spacing`` (mm).
    """
    shape, spacing = volume_grid(size, fov_mm=340.0, z_mm=340.0 * size[2] / size[0] * 2.0)
    x, y, z = coords(shape, spacing)  # x: right-left, y: anterior(-) to posterior(+), z: foot to head
    full = np.zeros(shape, dtype=bool)
    a, b = 160.0 * rng.uniform(0.92, 1.05), 115.0 * rng.uniform(0.92, 1.05)
    body = full | ((x / a) ** 2 + (y / b) ** 2 < 1.0)
    inner = full | ((x / (a - 13)) ** 2 + (y / (b - 13)) ** 2 < 1.0)

    z_top, z_base = 125.0 * rng.uniform(0.9, 1.1), -115.0 * rng.uniform(0.9, 1.1)
    lungs = np.zeros(shape, dtype=bool)
    for side in (-1.0, 1.0):
        cx, ax, ay = side * 0.47 * a, 0.36 * a * rng.uniform(0.9, 1.05), 0.78 * b * rng.uniform(0.9, 1.05)
        taper = np.sqrt(np.clip((z_top - z) / 70.0, 0.0, 1.0))
        q = ((x - cx) / (ax * taper + 1e-3)) ** 2 + ((y - 0.02 * b) / (ay * taper + 1e-3)) ** 2
        dome = z_base + 35.0 * np.clip(1.0 - ((x - cx) / ax) ** 2 - (y / ay) ** 2, 0.0, 1.0)
        lungs |= (q < 1.0 + 0.12 * smooth_noise(rng, shape, max(shape) / 5)) & (z > dome) & (z < z_top)
    heart = blob(rng, shape, spacing, (0.12 * a, -0.3 * b, z_base + 45.0), (0.34 * a, 0.42 * b, 55.0), 0.08)
    lungs &= ~heart & inner

    # airways: trachea down to the carina, then main bronchi towards each hilum (not lung field)
    step = 0.5 * spacing.min()
    carina = (0.0, -0.15 * b, z_top - 85.0)
    hila = [(side * 0.3 * a, -0.05 * b, carina[2] - 20.0) for side in (-1.0, 1.0)]
    origin = (np.array(shape) - 1) / 2 * spacing
    pts, rad = _segments([((0.0, -0.2 * b, 0.5 * origin[2] + z_top), carina)], 8.0, step)
    bp, br = _segments([(carina, h) for h in hila], 5.5, step)
    airway = tube_field(np.concatenate([pts, bp]) + origin, np.concatenate([rad, br]), shape, spacing, 2.0) <= 0
    airway &= body

    def in_lung(p: np.ndarray) -> np.ndarray:
        v = np.round((p + origin) / spacing).astype(int)
        ok = np.all((v >= 0) & (v < np.array(shape)), axis=1)
        out = np.zeros(len(p), bool)
        out[ok] = lungs[tuple(v[ok].T)]
        return out

    vp, vr = [np.zeros((0, 3))], [np.zeros(0)]
    for h in hila:
        for _ in range(3):
            d = np.array([np.sign(h[0]), 0.0, 0.0]) + rng.normal(0, 0.8, 3)
            start = np.array(h) + np.array([np.sign(h[0]) * 15.0, 0.0, 0.0])
            p, r = grow_tree(
                rng,
                start,
                d,
                4.5,
                inside=in_lung,
                step=step,
                min_radius=0.45 * spacing[:2].min(),
                length_per_radius=9.0,
                branch_angle=60.0,
                wiggle=0.04,
                taper=0.1,
                tries=6,
                branch_at_boundary=True,
            )
            vp.append(p)
            vr.append(r)
    vessel_field = tube_field(np.concatenate(vp) + origin, np.concatenate(vr), shape, spacing, spacing.max())
    vessel = np.clip(0.5 - vessel_field / spacing[:2].min(), 0.0, 1.0) * lungs

    nodule = np.zeros(shape, dtype=bool)
    if nodules:
        candidates = np.argwhere(lungs)
        for _ in range(int(rng.integers(0, 4))):
            radius = rng.uniform(4.0, 12.0)
            for _try in range(20):
                c = candidates[rng.integers(len(candidates))] * spacing - origin
                probe = c + radius * np.array([[1, 0, 0], [-1, 0, 0], [0, 1, 0], [0, -1, 0], [0, 0, 1], [0, 0, -1]])
                if in_lung(probe).all():
                    nodule |= blob(rng, shape, spacing, c, [radius] * 3, roughness=0.3) & lungs
                    break

    spine_c = (0.0, 0.78 * b)
    rs = np.hypot(x - spine_c[0], y - spine_c[1]) + 0 * z
    disc = (np.mod(z + rng.uniform(0, 30), 30.0) < 6.0) & (rs < 18.0)
    ribs = np.zeros(shape, dtype=bool)
    ring = (x / (a - 16)) ** 2 + (y / (b - 16)) ** 2
    angle = np.arctan2(y, x)  # -pi/2: anterior (y < 0), +pi/2: posterior
    rib_z = z + 18.0 * np.sin(angle)  # ribs run down towards the front
    for zc in np.arange(z_base, z_top + 20.0, 26.0) + rng.uniform(0, 26.0):
        ribs |= (np.abs(rib_z - zc) < 5.0) & (np.abs(ring - 0.93) < 0.06) & (angle > -np.pi / 2 + 0.6)
        ribs |= (np.abs(rib_z - zc) < 5.0) & (np.abs(ring - 0.93) < 0.06) & (angle < -np.pi / 2 - 0.6)
    ribs &= ~lungs

    hu = np.full(shape, -1000.0, dtype=np.float32)
    hu[body] = -100.0 + 10.0 * smooth_noise(rng, shape, 8)[body]
    hu[inner] = 45.0 + 10.0 * smooth_noise(rng, shape, 6)[inner]
    hu[heart & inner] = 40.0
    hu[rs < 18.0] = 250.0  # cancellous vertebral body
    hu[(rs < 18.0) & (rs > 15.0)] = 650.0  # cortex
    hu[disc] = 80.0
    hu[ribs] = 550.0
    density = -860.0 + 30.0 * (y / b) + 20.0 * smooth_noise(rng, shape, 3)
    hu[lungs] = density[lungs]
    hu += vessel * (40.0 - hu)
    hu[airway] = -1000.0
    hu[nodule] = 20.0 + 25.0 * smooth_noise(rng, shape, 2)[nodule]
    image = finish_ct(rng, hu, spacing, blur_mm=1.0, noise_hu=rng.uniform(15, 25))
    label = np.zeros(shape, dtype=np.uint8)
    label[lungs & ~airway] = 1
    label[nodule] = 2
    return image, label, spacing


def _write(out, n: int, rng, size, *, nodules: bool = True) -> None:
    """MSD Task06's layout; class 2 (nodules) only with ``nodules``."""
    cases = [chest_ct(rng(i), size, nodules=nodules) for i in range(n)]
    write_msd(out, "Lung", "lung", {"0": "background", "1": "lung", "2": "nodule"}, cases)


SYNTH_KINDS.register("lung", SynthKind("msd", 3, DEFAULT_SIZE, MSD_FILES, 2, _write))
