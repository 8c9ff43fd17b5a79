"""Signed distance maps: our EDT against scipy per case, and the augmentation strategy.

1. Per case, a 2-class 256×256×128 label: ``SignedDistanceMap`` (edt package, one multi-label
   pass) against scipy as MONAI's ``BoundaryLoss`` uses it (2 EDTs per class = 4) and against
   the leanest scipy route (2 EDTs: class 1 inside and outside, class 0 derived).
2. Per patch (96³ 3D, 256² 2D) after RandRotate/RandZoom/RandFlip: *recompute* the maps on the
   augmented label, or *carry* cached full-case maps through the same transforms (bilinear,
   border padding, values rescaled by the zoom); time of each and the carry error against an
   exact recomputation on the augmented label.

Run: ``PYTHONPATH=. python bench/distance.py [--threads 1] [--repeats 3] [--patches 6]``
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch
from monai.data import MetaTensor
from monai.losses import BoundaryLoss
from monai.transforms import Compose, RandFlipd, RandRotated, RandZoomd
from scipy.ndimage import distance_transform_edt

from transforms._distance import signed_distance
from transforms.array import SignedDistanceMap


def median_time(fn, repeats: int) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def synthetic_label(shape: tuple[int, ...], seed: int = 0, blobs: int = 6) -> np.ndarray:
    """Class indices 0/1: a union of ellipsoids (organ-, vessel- and lesion-like sizes)."""
    rng = np.random.default_rng(seed)
    grid = np.ogrid[tuple(slice(0, s) for s in shape)]
    label = np.zeros(shape, np.uint8)
    for _ in range(blobs):
        centre = rng.uniform(0.2, 0.8, len(shape)) * shape
        radii = rng.uniform(0.04, 0.25, len(shape)) * shape
        label[sum(((g - c) / r) ** 2 for g, c, r in zip(grid, centre, radii, strict=True)) < 1] = 1
    return label


def scipy_two_edts(label: np.ndarray) -> np.ndarray:
    """The leanest scipy route to both maps of a 2-class label."""
    mask = label == 1
    inside, outside = distance_transform_edt(mask), distance_transform_edt(~mask)
    sdm1 = np.where(mask, 1 - inside, outside).astype(np.float32)
    return np.stack([1 - sdm1, sdm1])


def case_benchmark(repeats: int = 3, shape: tuple[int, ...] = (256, 256, 128)) -> dict[str, float]:
    """Time one case's maps; print and return the figures."""
    label = synthetic_label(shape)
    ours_t, ours = median_time(lambda: SignedDistanceMap(num_classes=2)(label[None]), repeats)
    lean_t, lean = median_time(lambda: scipy_two_edts(label), repeats)
    onehot = torch.from_numpy(np.stack([label == 0, label == 1])[None]).float()
    monai_t, monai = median_time(lambda: BoundaryLoss().compute_distance_map(onehot), max(1, repeats - 2))
    err_lean = float(np.abs(ours - lean).max())
    err_monai = float(np.abs(ours - monai[0].numpy()).max())
    print(f"\n== signed distance maps per case: 2-class {'x'.join(map(str, shape))} label, median of {repeats} ==")
    rows = [
        ("ours (SignedDistanceMap, edt)", ours_t),
        ("scipy as in MONAI BoundaryLoss (4 EDTs)", monai_t),
        ("scipy, leanest (2 EDTs)", lean_t),
    ]
    for i, (name, t) in enumerate(rows):
        ratio = f"   ours is {t / ours_t:5.1f}x faster" if i else ""
        print(f"  {name:40s} {t * 1e3:9.1f} ms{ratio}")
    print(f"  max |ours - scipy| = {err_lean:.1e} (MONAI maps: {err_monai:.1e}), largest distance {ours.max():.0f}")
    return {"ours_s": ours_t, "monai_s": monai_t, "lean_s": lean_t}


def _augment(keys: list[str], modes: list[str], ndim: int) -> Compose:
    interp = "bilinear" if ndim == 2 else "trilinear"
    # labels zoom with "nearest-exact": torch's "nearest" floors the source index, shifting the
    # label up to half a voxel against anything resampled linearly (image, distance map)
    zoom_modes = [interp if m == "bilinear" else "nearest-exact" for m in modes]
    ranges = {"range_x": 0.3} if ndim == 2 else {"range_x": 0.3, "range_y": 0.3, "range_z": 0.3}
    return Compose(
        [
            RandRotated(keys, prob=1.0, mode=modes, padding_mode="border", **ranges),
            RandZoomd(keys, min_zoom=0.85, max_zoom=1.15, prob=1.0, mode=zoom_modes, padding_mode="edge"),
            RandFlipd(keys, prob=0.5, spatial_axis=0),
        ]
    )


def strategy_benchmark(patches: int = 6) -> None:
    """Recompute-per-patch against carry-the-cached-map, 3D 96³ and 2D 256² patches."""
    print(f"\n== augmentation strategy: per patch, median over {patches} patches ==")
    for ndim, shape, size in ((3, (192, 192, 128), 96), (2, (768, 768), 256)):
        label = synthetic_label(shape, seed=1)
        cached = SignedDistanceMap(num_classes=2)(label[None])  # once per case, as the cache would
        rng = np.random.default_rng(0)
        fg = np.argwhere(label == 1)
        recompute_t, carry_extra_t, near, overall, p99 = [], [], [], [], []
        for i in range(patches):
            centre = fg[rng.integers(len(fg))]
            lo = [int(np.clip(c - size // 2, 0, s - size)) for c, s in zip(centre, shape, strict=True)]
            crop = tuple(slice(a, a + size) for a in lo)
            patch = MetaTensor(torch.from_numpy(label[crop][None].astype(np.float32)))
            dist = MetaTensor(torch.from_numpy(cached[(slice(None), *crop)].copy()))
            label_only = _augment(["label"], ["nearest"], ndim)
            both = _augment(["label", "dist"], ["nearest", "bilinear"], ndim)
            label_only.set_random_state(i)
            both.set_random_state(i)
            t0 = time.perf_counter()
            label_only({"label": patch.clone()})
            t1 = time.perf_counter()
            out = both({"label": patch.clone(), "dist": dist})
            t2 = time.perf_counter()
            zoom = float(patch.pixdim[0] / out["label"].pixdim[0])  # RandZoomd rescales the affine
            carried = out["dist"].numpy() * zoom
            t3 = time.perf_counter()
            exact = SignedDistanceMap(num_classes=2, spacing=1.0)(out["label"])
            t4 = time.perf_counter()
            exact = exact.numpy()
            recompute_t.append(t4 - t3)
            carry_extra_t.append((t2 - t1) - (t1 - t0) + (t3 - t2))
            err = np.abs(carried - exact)
            band = np.abs(exact) <= 5
            near.append(float(err[band].mean()))
            overall.append(float(err.mean()))
            p99.append(float(np.percentile(err[band], 99)))
        name = f"{size}^{ndim}"
        print(f"  {name:7s} recompute on the augmented label (exact) {statistics.median(recompute_t) * 1e3:7.1f} ms")
        print(f"  {name:7s} carry cached maps (extra transform time) {statistics.median(carry_extra_t) * 1e3:7.1f} ms")
        print(
            f"  {name:7s} carry error vs exact: within 5 voxels of the edge mean {statistics.median(near):.3f}, "
            f"p99 {statistics.median(p99):.2f}; whole patch mean {statistics.median(overall):.2f} (voxels)"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--patches", type=int, default=6)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} threads; edt runs single-threaded")
    # sanity: the fast path is exact on this input before we time it
    label = synthetic_label((64, 64, 32), seed=3)
    ref = scipy_two_edts(label)
    assert np.abs(signed_distance(label == 1) - ref[1]).max() < 1e-4
    case_benchmark(args.repeats)
    strategy_benchmark(args.patches)


if __name__ == "__main__":
    main()
