"""Drawing helpers shared by the synthetic generators: branching tubes, smooth noise."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from scipy import ndimage

Inside = Callable[[np.ndarray], np.ndarray]


def smooth_noise(rng: np.random.Generator, shape: Sequence[int], scale: float) -> np.ndarray:
    """Zero-mean, unit-std noise with features about ``scale`` pixels wide (float32).

    White noise on a grid ``scale / 2`` times coarser, smoothed there and interpolated up
    (linearly, with torch), so the cost does not grow with ``scale``.
    """
    factor = max(1.0, scale / 2.0)
    coarse = [max(3, int(np.ceil(n / factor)) + 1) for n in shape]
    field = ndimage.gaussian_filter(rng.standard_normal(coarse).astype(np.float32), sigma=1.0, mode="wrap")
    mode = {1: "linear", 2: "bilinear", 3: "trilinear"}[len(shape)]
    up = torch.nn.functional.interpolate(
        torch.from_numpy(field)[None, None], size=tuple(int(n) for n in shape), mode=mode, align_corners=True
    )
    out = up[0, 0].numpy()
    out -= out.mean()
    return out / (out.std() + 1e-8)


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def _turn(rng: np.random.Generator, direction: np.ndarray, angle: float) -> np.ndarray:
    """``direction`` turned by ``angle`` radians (2D: signed; 3D: about a random perpendicular axis)."""
    if direction.size == 2:
        c, s = np.cos(angle), np.sin(angle)
        return np.array([c * direction[0] - s * direction[1], s * direction[0] + c * direction[1]])
    axis = _unit(np.cross(direction, rng.standard_normal(3)))
    # Rodrigues' rotation of `direction` about `axis` (perpendicular, so the dot term vanishes).
    return _unit(direction * np.cos(angle) + np.cross(axis, direction) * np.sin(angle))


def grow_tree(
    rng: np.random.Generator,
    start: Sequence[float],
    direction: Sequence[float],
    radius: float,
    *,
    inside: Inside,
    step: float,
    min_radius: float,
    length_per_radius: float = 12.0,
    branch_angle: float = 70.0,
    wiggle: float = 0.08,
    taper: float = 0.1,
    max_points: int = 40_000,
    tries: int = 4,
    branch_at_boundary: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Grow a branching vessel tree; return centreline points ``(M, d)`` and radii ``(M,)``.

    Each segment is a random walk of the direction (``wiggle`` radians per unit length**0.5),
    about ``length_per_radius * radius`` long, tapering by ``taper``; it stops where ``inside``
    is false. A segment that ends inside splits in two with Murray's law (``r**3 = r1**3 +
    r2**3``); the thinner child turns away more, so thick vessels run on and thin ones branch
    off. A child is aimed into the domain (the planned turn, then up to ``tries - 1`` wider
    random turns, until its first half-segment stays inside) and dropped if none does, or if
    it is thinner than ``min_radius``. A segment that reaches the boundary ends there; with
    ``branch_at_boundary`` it still splits (children aimed back inside, so a tree fills an
    organ), otherwise its subtree is not grown (vessels leaving a field of view). Units are
    those of ``start``.
    """
    stack = [(np.asarray(start, float), _unit(np.asarray(direction, float)), float(radius))]
    pts: list[np.ndarray] = []
    rad: list[np.ndarray] = []
    total = 0
    dims = len(start)
    while stack and total < max_points:
        p, d, r = stack.pop()
        n = max(2, int(length_per_radius * r * rng.uniform(0.6, 1.4) / step))
        if dims == 2:
            theta = np.arctan2(d[1], d[0]) + np.cumsum(rng.normal(0, wiggle * np.sqrt(step), n))
            dirs = np.stack([np.cos(theta), np.sin(theta)], axis=1)
        else:
            dirs = _unit(d + np.cumsum(rng.normal(0, wiggle * np.sqrt(step), (n, 3)), axis=0))
        seg = p + np.cumsum(dirs * step, axis=0)
        radii = r * (1.0 - taper * np.arange(n) / n)
        ok = inside(seg)
        stop = int(np.argmin(ok)) if not ok.all() else n
        pts.append(seg[:stop])
        rad.append(radii[:stop])
        total += stop
        if stop < n and (not branch_at_boundary or stop < 2):
            continue
        seg, end_r, end_d = seg[:stop], radii[stop - 1], dirs[stop - 1]
        share = rng.uniform(0.15, 0.5)
        small, big = end_r * share ** (1 / 3), end_r * (1 - share) ** (1 / 3)
        angle = np.radians(branch_angle) * rng.uniform(0.7, 1.3)
        sign = rng.choice([-1.0, 1.0])
        for child_r, turn in ((big, -sign * angle * share), (small, sign * angle * (1 - share))):
            if child_r < min_radius:
                continue
            # aim the child into the domain: retry a few turns whose first half-segment stays inside
            probe = 0.5 * length_per_radius * child_r
            for attempt in range(tries):
                wider = rng.choice([-1.0, 1.0]) * rng.uniform(abs(turn), 0.8 * np.pi)
                child_d = _turn(rng, end_d, turn if attempt == 0 else wider)
                if inside((seg[-1] + child_d * probe)[None])[0]:
                    stack.append((seg[-1], child_d, child_r))
                    break
    if not pts:
        return np.zeros((0, dims)), np.zeros(0)
    return np.concatenate(pts), np.concatenate(rad)


def tube_field(
    points: np.ndarray, radii: np.ndarray, shape: Sequence[int], spacing: Sequence[float], margin: float
) -> np.ndarray:
    """``min_m |x - p_m| - r_m`` at every voxel centre, in physical units, capped at ``margin``.

    Negative inside the union of spheres along the centreline (the tubes), positive outside;
    only voxels within ``r + margin`` of a point are visited, grouped by box size so each group
    is one vectorised scatter (``np.minimum.at``).
    """
    shape = tuple(int(n) for n in shape)
    spacing_a = np.asarray(spacing, float)
    field = np.full(int(np.prod(shape)), margin, dtype=np.float32)
    if len(points) == 0:
        return field.reshape(shape)
    reach = np.ceil((radii[:, None] + margin) / spacing_a[None]).astype(int)  # (M, d) half box in voxels
    keys = [tuple(k) for k in reach]
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, k in enumerate(keys):
        groups.setdefault(k, []).append(i)
    strides = np.array([int(np.prod(shape[i + 1 :])) for i in range(len(shape))])
    for half, idx in groups.items():
        idx_a = np.asarray(idx)
        grids = np.meshgrid(*[np.arange(-h, h + 1) for h in half], indexing="ij")
        offsets = np.stack([g.ravel() for g in grids], axis=1)  # (K, d)
        centre = np.round(points[idx_a] / spacing_a).astype(int)  # (m, d)
        vox = centre[:, None, :] + offsets[None]  # (m, K, d)
        dist = np.linalg.norm(vox * spacing_a - points[idx_a][:, None, :], axis=-1) - radii[idx_a][:, None]
        valid = np.all((vox >= 0) & (vox < np.asarray(shape)), axis=-1) & (dist < margin)
        flat = (vox[valid] * strides).sum(axis=-1)
        np.minimum.at(field, flat, dist[valid].astype(np.float32))
    return field.reshape(shape)
