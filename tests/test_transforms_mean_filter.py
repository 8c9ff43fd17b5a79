"""Mean filter: bit-exact against the seed's loop (accumulating wide), O(1) per pixel, 2D and 3D."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from transforms.array import MeanFilter, mean_filter
from transforms.dictionary import MeanFilterd


def seed_loop(img: np.ndarray, k: int) -> np.ndarray:
    """The seed's double loop, with its two bugs fixed: ``np.zeros`` and a wide accumulator.

    The seed writes ``sum = 0; sum += img[m, n]``: under NumPy 2 that sum becomes uint8 and
    wraps past 255. Python ints do not wrap; the floor division and the dtype are the seed's.
    """
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


@pytest.mark.parametrize("k", [1, 3, 5, 7, 31])
@pytest.mark.parametrize("shape", [(13, 9), (7, 20), (1, 5)])
def test_bit_exact_against_the_seed_loop_on_uint8(k, shape):
    img = np.random.default_rng(k * 100 + shape[0]).integers(0, 256, shape, dtype=np.uint8)
    ours = mean_filter(img, k)
    assert ours.dtype == np.uint8 and ours.shape == img.shape
    np.testing.assert_array_equal(ours, seed_loop(img, k))


def test_a_uint8_accumulator_would_wrap_but_ours_does_not():
    img = np.full((5, 5), 200, dtype=np.uint8)
    assert (mean_filter(img, 3) == 200).all()
    wrapped = np.uint8(0)
    with np.errstate(over="ignore"):
        for _ in range(9):
            wrapped = wrapped + img[0, 0]  # what the seed's `sum += img[m, n]` does under NumPy 2
    assert wrapped.dtype == np.uint8
    assert wrapped // 9 != 200


def test_3d_and_per_axis_kernel_match_brute_force():
    rng = np.random.default_rng(0)
    img = rng.integers(-50, 300, (6, 7, 5)).astype(np.int16)
    k = (3, 5, 1)
    out = mean_filter(img, k)
    ref = np.zeros_like(img)
    for idx in np.ndindex(img.shape):
        sl = tuple(slice(max(i - kk // 2, 0), i + kk // 2 + 1) for i, kk in zip(idx, k, strict=True))
        win = img[sl].astype(np.int64)
        ref[idx] = win.sum() // win.size  # floor, also for negative sums
    np.testing.assert_array_equal(out, ref)


def test_float_input_is_the_exact_mean():
    img = np.random.default_rng(1).normal(size=(9, 11)).astype(np.float32)
    out = mean_filter(img, 5)
    assert out.dtype == np.float32
    i, j = 0, 4  # a border pixel: the window is 3 x 5 inside the image
    np.testing.assert_allclose(out[i, j], img[0:3, 2:7].mean(), rtol=1e-6)
    np.testing.assert_allclose(out[4, 5], img[2:7, 3:8].mean(), rtol=1e-6)


def test_transform_filters_each_channel_and_keeps_type_and_meta():
    rng = np.random.default_rng(2)
    img = rng.integers(0, 256, (2, 8, 6), dtype=np.uint8)
    out = MeanFilter(3)(img)
    np.testing.assert_array_equal(out[1], seed_loop(img[1], 3))
    t = MetaTensor(torch.as_tensor(img.astype(np.float32)), meta={"filename_or_obj": "x.png"})
    out_t = MeanFilter(3)(t)
    assert isinstance(out_t, MetaTensor) and out_t.meta["filename_or_obj"] == "x.png"
    np.testing.assert_allclose(out_t[0].numpy(), mean_filter(img[0].astype(np.float32), 3), rtol=1e-6)
    d = MeanFilterd("image", kernel_size=5)({"image": img, "label": img})
    np.testing.assert_array_equal(d["image"][0], seed_loop(img[0], 5))
    assert d["label"] is img


@pytest.mark.parametrize("bad", [2, 0, -3, (3, 4), 3.0, True])
def test_even_or_bad_kernel_sizes_raise(bad):
    with pytest.raises(ValueError, match="kernel_size"):
        mean_filter(np.zeros((4, 4), np.uint8), bad)


def test_bool_input_is_refused():
    with pytest.raises(TypeError, match="needs an integer or float image, got torch.bool"):
        mean_filter(np.zeros((4, 4), bool), 3)
