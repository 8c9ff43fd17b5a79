"""Time pipeline.metrics.evaluate_case against MONAI's stock metrics on the same cases.

Cases: a 256x256x128 CT-like volume with 3 classes (anisotropic spacing) and 20 DRIVE-size
(584x565) vessel maps. Baseline: MONAI DiceMetric + HausdorffDistanceMetric(percentile=95) +
SurfaceDistanceMetric(symmetric=True) + SurfaceDiceMetric on one-hot tensors, the metrics both
compute (clDice is ours only and timed separately). Prints medians over repeats and the ratio.

    PYTHONPATH=. python bench/metrics.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import time
import warnings

import numpy as np
import torch
from scipy import ndimage

from pipeline.metrics import evaluate_case

SURFACE = ("dice", "hd95", "assd", "nsd")


def volume_case(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, tuple[float, ...]]:
    field = ndimage.zoom(ndimage.gaussian_filter(rng.standard_normal((128, 128, 64)), 3), 2, order=1)
    label = np.zeros(field.shape, np.uint8)
    label[field > 0.05] = 1  # large, organ-like
    label[field > 0.12] = 2  # small islands inside
    label[field < -0.1] = 3
    noisy = field + 0.01 * ndimage.zoom(rng.standard_normal((128, 128, 64)), 2, order=1)
    pred = np.zeros_like(label)
    pred[noisy > 0.05] = 1
    pred[noisy > 0.12] = 2
    pred[noisy < -0.1] = 3
    return pred, label, (0.8, 0.8, 2.5)


def vessel_case(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    field = ndimage.gaussian_filter(rng.standard_normal((584, 565)), 4)
    ridges = np.abs(field) < 0.004  # thin, branching curves like vessels
    pred = ridges ^ (ndimage.gaussian_filter(rng.standard_normal((584, 565)), 1) > 0.35)
    return pred.astype(np.uint8), ridges.astype(np.uint8)


def monai_case(pred: np.ndarray, label: np.ndarray, spacing, n_classes: int) -> None:
    from monai.metrics import DiceMetric, HausdorffDistanceMetric, SurfaceDiceMetric, SurfaceDistanceMetric

    def onehot(a):
        return torch.nn.functional.one_hot(torch.as_tensor(a, dtype=torch.long), n_classes + 1).movedim(-1, 0)[None]

    yp, y = onehot(pred), onehot(label)
    kw = {"include_background": False, "reduction": "none"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        DiceMetric(**kw)(yp, y)
        HausdorffDistanceMetric(percentile=95, **kw)(yp, y, spacing=spacing)
        SurfaceDistanceMetric(symmetric=True, **kw)(yp, y, spacing=spacing)
        SurfaceDiceMetric([1.0] * n_classes, **kw)(yp, y, spacing=spacing)


def median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)

    pred, label, spacing = volume_case(rng)
    ours = median_time(lambda: evaluate_case(pred, label, spacing, metrics=SURFACE), args.repeats)
    base = median_time(lambda: monai_case(pred, label, spacing, 3), args.repeats)
    full = median_time(lambda: evaluate_case(pred, label, spacing), args.repeats)
    print(
        f"256x256x128, 3 classes, dice+hd95+assd+nsd: ours {ours:.2f} s, MONAI {base:.2f} s, "
        f"MONAI/ours {base / ours:.1f}x; all metrics incl. clDice: ours {full:.2f} s"
    )

    cases = [vessel_case(rng) for _ in range(20)]
    ours = median_time(lambda: [evaluate_case(p, lab, metrics=SURFACE) for p, lab in cases], args.repeats)
    base = median_time(lambda: [monai_case(p, lab, (1.0, 1.0), 1) for p, lab in cases], args.repeats)
    full = median_time(lambda: [evaluate_case(p, lab) for p, lab in cases], args.repeats)
    print(
        f"20 x 584x565 vessel maps, dice+hd95+assd+nsd: ours {ours:.2f} s, MONAI {base:.2f} s, "
        f"MONAI/ours {base / ours:.1f}x; all metrics incl. clDice: ours {full:.2f} s"
    )


if __name__ == "__main__":
    main()
