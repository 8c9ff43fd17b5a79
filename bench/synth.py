"""Synthetic data generation time per case, against the issue's budget (1 s per 2D image,
5 s per 128^3 volume), medians over repeats, one thread; and how far Otsu thresholding of the
green channel gets on the synthetic vessels (the issue asks for Dice <= 0.75: thresholding must
not solve it).

Run: ``PYTHONPATH=. python bench/synth.py``
"""

from __future__ import annotations

import statistics
import time

import numpy as np
import torch
from skimage.filters import threshold_otsu

from pipeline.data.synth import case_rng
from pipeline.data.synth.cell import nuclei
from pipeline.data.synth.lung import chest_ct
from pipeline.data.synth.vessel2d import fundus
from pipeline.data.synth.vessel3d import hepatic_ct

CASES = [
    ("vessel2d", "192^2 (default)", lambda rng: fundus(rng, 192), 1.0),
    ("vessel2d", "565^2 (DRIVE size)", lambda rng: fundus(rng, 565), 1.0),
    ("cell", "128^2 (default)", lambda rng: nuclei(rng, 128), 1.0),
    ("cell", "512^2", lambda rng: nuclei(rng, 512), 1.0),
    ("vessel3d", "96x96x48 (default)", lambda rng: hepatic_ct(rng, (96, 96, 48)), 5.0),
    ("vessel3d", "128^3", lambda rng: hepatic_ct(rng, (128, 128, 128)), 5.0),
    ("lung", "96x96x48 (default)", lambda rng: chest_ct(rng, (96, 96, 48)), 5.0),
    ("lung", "128^3", lambda rng: chest_ct(rng, (128, 128, 128)), 5.0),
]


def main(repeats: int = 3) -> None:
    torch.set_num_threads(1)
    print(f"{'kind':9s} {'size':20s} {'median s':>9s} {'budget s':>9s}")
    for kind, label, make, budget in CASES:
        times = []
        for i in range(repeats):
            rng = case_rng(kind, 0, i)
            start = time.perf_counter()
            make(rng)
            times.append(time.perf_counter() - start)
        t = statistics.median(times)
        flag = "" if t <= budget else "  OVER BUDGET"
        print(f"{kind:9s} {label:20s} {t:9.3f} {budget:9.1f}{flag}")
    print(f"\n{'vessel2d':9s} {'size':6s} {'Otsu Dice (mean, max over 8 cases)':>36s}")
    for size in (128, 192, 256):
        dices = []
        for i in range(8):
            rgb, vessels, fov = fundus(case_rng("vessel2d", 0, i), size)
            inside = fov > 0
            green = rgb[..., 1].astype(float)
            pred = (green < threshold_otsu(green[inside])) & inside
            truth = vessels > 0
            dices.append(2 * (pred & truth).sum() / (pred.sum() + truth.sum()))
        print(f"{'':9s} {size:<6d} {np.mean(dices):28.3f}, {np.max(dices):.3f}")


if __name__ == "__main__":
    main()
