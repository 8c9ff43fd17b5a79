"""Mean filter: ours (cumulative sums, O(1) per pixel) against the seed's double loop.

Prints medians over repeats, measured in this run:
- ours vs the seed's loop (accumulating wide, as fixed) on a 128 x 128 uint8 image, k = 5
  (target: at least 200x faster), after checking that both give the same pixels;
- ours at k = 3 and k = 31 (target: within 1.5x of each other: time does not grow with k).

Run: ``PYTHONPATH=. python bench/mean_filter.py``
"""

from __future__ import annotations

import statistics
import time

import numpy as np
import torch

from transforms.array import mean_filter


def seed_loop(img: np.ndarray, k: int) -> np.ndarray:
    """The seed's algorithm, with ``np.zeros`` spelled right and a Python-int (wide) sum."""
    h, w = img.shape
    r = k // 2
    out = np.zeros((h, w), dtype=img.dtype)
    for i in range(h):
        for j in range(w):
            total, count = 0, 0
            for m in range(max(i - r, 0), min(i + r + 1, h)):
                for n in range(max(j - r, 0), min(j + r + 1, w)):
                    total += int(img[m, n])
                    count += 1
            out[i, j] = total // count
    return out


def median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    torch.set_num_threads(1)
    img = np.random.default_rng(0).integers(0, 256, (128, 128), dtype=np.uint8)
    assert np.array_equal(mean_filter(img, 5), seed_loop(img, 5)), "results differ"
    ours = median_time(lambda: mean_filter(img, 5), 50)
    loop = median_time(lambda: seed_loop(img, 5), 3)
    print(f"128x128 uint8, k=5: ours {ours * 1e3:.3f} ms, seed loop {loop * 1e3:.1f} ms, speed-up {loop / ours:.0f}x")
    k3 = median_time(lambda: mean_filter(img, 3), 50)
    k31 = median_time(lambda: mean_filter(img, 31), 50)
    print(f"ours k=3 {k3 * 1e3:.3f} ms, k=31 {k31 * 1e3:.3f} ms, ratio k31/k3 {k31 / k3:.2f}")
    vol = np.random.default_rng(1).integers(0, 256, (96, 96, 96), dtype=np.uint8)
    v3 = median_time(lambda: mean_filter(vol, 3), 5)
    v31 = median_time(lambda: mean_filter(vol, 31), 5)
    print(f"96^3 uint8: ours k=3 {v3 * 1e3:.1f} ms, k=31 {v31 * 1e3:.1f} ms, ratio {v31 / v3:.2f}")


if __name__ == "__main__":
    main()
