"""``vessel3d``: MSD Task08_HepaticVessel-like contrast CT, a vessel tree inside a liver."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from pipeline.data.synth._ct import MSD_FILES, blob, coords, finish_ct, volume_grid, write_msd
from pipeline.data.synth._draw import grow_tree, smooth_noise, tube_field
from pipeline.data.synth._kinds import SynthKind
from pipeline.registry import SYNTH_KINDS

DEFAULT_SIZE = (96, 96, 48)


def hepatic_ct(
    rng: np.random.Generator, size: Sequence[int] = DEFAULT_SIZE
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One portal-venous-phase abdominal CT with hepatic vessels.

    The body is an elliptic cylinder (fat rim, muscle), the liver a deformed ellipsoid in the
    right upper abdomen at ~100 HU, and the portal/hepatic veins a branching tree grown from
    the hilum at ~190 HU, thinning by Murray's law to about one in-plane voxel. Slices are
    twice as thick as the in-plane spacing, blurred along z, with ~18 HU noise.

    Returns:
        ``image`` int16 HU ``X Y Z``, ``label`` uint8 (1 = vessel), ``spacing`` (mm) of 3 floats.
    """
    shape, spacing = volume_grid(size, fov_mm=300.0, z_mm=300.0 * size[2] / size[0] * 2.0)
    x, y, z = coords(shape, spacing)
    half = np.array(shape) * spacing / 2
    ring = (x / (0.92 * half[0])) ** 2 + (y / (0.72 * half[1])) ** 2
    body = ring < 1.0 + 0.03 * smooth_noise(rng, shape, max(shape) / 3)
    inner = np.broadcast_to((x / (0.84 * half[0])) ** 2 + (y / (0.64 * half[1])) ** 2 < 1.0, shape)
    centre = np.array([-37.0, -8.0, 0.0]) + rng.uniform(-8.0, 8.0, 3)
    radii = np.array([63.0, 63.0, 82.0]) * rng.uniform(0.9, 1.1, 3)  # mm
    liver = blob(rng, shape, spacing, centre, radii, roughness=0.2) & inner

    idx = np.argwhere(liver)
    origin = (np.array(shape) - 1) / 2 * spacing

    def inside(p: np.ndarray) -> np.ndarray:
        v = np.round((p + origin) / spacing).astype(int)
        ok = np.all((v >= 0) & (v < np.array(shape)), axis=1)
        out = np.zeros(len(p), bool)
        out[ok] = liver[tuple(v[ok].T)]
        return out

    hilum = centre + np.array([0.35 * radii[0], 0.25 * radii[1], -0.2 * radii[2]])
    if not inside(hilum[None])[0] and len(idx):
        hilum = idx[len(idx) // 2] * spacing - origin
    min_r = 0.5 * spacing[:2].min()
    r0 = max(4.0, 2.0 * spacing[0]) * rng.uniform(0.9, 1.1)
    pts, rad = [], []
    for _ in range(4):  # portal branches fanning out from the hilum
        direction = (centre - hilum) / radii + rng.normal(0, 0.7, 3)
        p, r = grow_tree(
            rng,
            hilum,
            direction,
            r0,
            inside=inside,
            step=0.5 * spacing.min(),
            min_radius=min_r,
            length_per_radius=8.0,
            branch_angle=70.0,
            wiggle=0.04,
            taper=0.08,
            tries=6,
            branch_at_boundary=True,
        )
        pts.append(p)
        rad.append(r)
    points, rads = np.concatenate(pts) + origin, np.concatenate(rad)
    field = tube_field(points, rads, shape, spacing, margin=2.0 * spacing.max())
    vessel = (field <= 0) & liver
    vessel_soft = np.clip(0.5 - field / spacing[:2].min(), 0.0, 1.0) * liver

    hu = np.full(shape, -1000.0, dtype=np.float32)
    hu[body] = -100.0  # subcutaneous fat
    hu[inner] = 45.0 + 8.0 * smooth_noise(rng, shape, 6)[inner]  # muscle and bowel
    hu[liver] = rng.uniform(90, 115) + 6.0 * smooth_noise(rng, shape, 4)[liver]
    hu += vessel_soft * (rng.uniform(170, 210) - hu) * liver
    image = finish_ct(rng, hu, spacing, noise_hu=rng.uniform(14, 22))
    return image, vessel.astype(np.uint8), spacing


def _write(out, n: int, rng, size) -> None:
    """MSD Task08's layout: ``dataset.json``, ``imagesTr/``, ``labelsTr/``."""
    cases = [hepatic_ct(rng(i), size) for i in range(n)]
    write_msd(out, "HepaticVessel", "hepaticvessel", {"0": "background", "1": "vessel"}, cases)


SYNTH_KINDS.register("vessel3d", SynthKind("msd", 3, DEFAULT_SIZE, MSD_FILES, 1, _write))
