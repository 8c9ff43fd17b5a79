"""RandSpatiald: rotation, zoom and flips in one resample, checked against MONAI's transforms."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from monai.transforms import Rotate, Zoom

from transforms.dictionary import RandSpatiald

INNER_2D = (slice(None), slice(14, 50), slice(10, 38))  # away from the border padding


def _smooth(shape: tuple[int, ...]) -> torch.Tensor:
    axes = torch.meshgrid(*(torch.linspace(-1, 1, n) for n in shape), indexing="ij")
    return sum(torch.sin((2 + i) * a + i) for i, a in enumerate(axes))[None]


def test_2d_rotation_samples_as_monai_rotate_on_a_non_square_crop():
    image = _smooth((64, 48))
    t = RandSpatiald(["image"], ["bilinear"], rotate_prob=1.0, ranges=[math.pi])
    t.set_random_state(1)
    out = t({"image": image})["image"]
    angle = t._angles[0]
    ref = Rotate(angle=angle, mode="bilinear", padding_mode="border", keep_size=True)(image)
    assert out.shape == image.shape
    assert abs(angle) > 0.1
    assert torch.allclose(out[INNER_2D], torch.as_tensor(ref)[INNER_2D], atol=1e-4)


def test_3d_single_angle_rotates_within_axes_0_1_as_monai():
    image = _smooth((20, 16, 12))
    t = RandSpatiald(["image"], ["bilinear"], rotate_prob=1.0, ranges=[0.5])
    t.set_random_state(3)
    out = t({"image": image})["image"]
    ref = Rotate(angle=(0.0, 0.0, t._angles[0]), mode="bilinear", padding_mode="border")(image)
    inner = (slice(None), slice(5, 15), slice(4, 12), slice(None))
    assert torch.allclose(out[inner], torch.as_tensor(ref)[inner], atol=1e-4)


def _seed_with_a_large_angle(t: RandSpatiald, axis: int) -> int:
    """A seed whose drawn angle about ``axis`` is not near zero (the test would then test little)."""
    for seed in range(50):
        t.set_random_state(seed)
        t.randomize()
        if abs(t._angles[axis]) > 0.2:
            return seed
    raise AssertionError("no seed draws a large angle")


def test_3d_three_angles_match_monai_rotate_about_each_axis_and_composed():
    image = _smooth((18, 18, 18))
    inner = (slice(None), slice(6, 12), slice(6, 12), slice(6, 12))
    for axis in (0, 1, 2, None):
        ranges = [0.6] * 3 if axis is None else [0.6 if a == axis else 0.0 for a in range(3)]
        t = RandSpatiald(["image"], ["bilinear"], rotate_prob=1.0, ranges=ranges)
        t.set_random_state(_seed_with_a_large_angle(t, 0 if axis is None else axis))
        out = t({"image": image})["image"]
        ref = Rotate(angle=tuple(t._angles), mode="bilinear", padding_mode="border")(image)
        assert torch.allclose(out[inner], torch.as_tensor(ref)[inner], atol=1e-4), axis


def test_zoom_magnifies_about_the_centre_as_monai_zoom():
    image = _smooth((64, 48))
    t = RandSpatiald(["image"], ["bilinear"], zoom_prob=1.0, zoom_range=(1.3, 1.3))
    out = t({"image": image})["image"]
    ref = torch.as_tensor(Zoom(1.3, mode="bilinear", keep_size=True)(image))
    # MONAI interpolates then crops (half-pixel differences at the resize); same picture
    assert (out - ref)[INNER_2D].abs().max() < 0.05
    assert (out - image)[INNER_2D].abs().max() > 0.3  # and it did zoom


def test_label_keeps_its_values_and_stays_aligned_with_the_image():
    rng = np.random.default_rng(0)
    label = torch.zeros(1, 48, 48)
    for _ in range(6):
        y, x = rng.integers(8, 40, 2)
        label[0, y - 5 : y + 5, x - 5 : x + 5] = float(rng.integers(1, 4))
    image = label * 10.0
    t = RandSpatiald(
        ["image", "label"],
        ["bilinear", "nearest"],
        rotate_prob=1.0,
        ranges=[math.pi],
        zoom_prob=1.0,
        zoom_range=(0.8, 1.25),
        flip_prob=0.5,
        flip_axes=[0, 1],
    )
    for seed in range(10):
        t.set_random_state(seed)
        out = t({"image": image, "label": label})
        assert set(out["label"].unique().tolist()) <= {0.0, 1.0, 2.0, 3.0}
        # where the image's bilinear samples lie on a flat plateau, the label is that plateau
        level = (out["image"] / 10.0).round()
        flat = ((out["image"] / 10.0 - level).abs() < 1e-4) & (level > 0)
        assert flat.sum() > 50
        assert torch.equal(out["label"][flat], level[flat])


def test_flips_alone_are_exact_and_nothing_drawn_returns_the_input():
    image = torch.randn(1, 7, 5, 3)
    label = torch.randint(0, 3, (1, 7, 5, 3))
    t = RandSpatiald(["image", "label"], ["bilinear", "nearest"], flip_prob=1.0, flip_axes=[0, 2])
    out = t({"image": image, "label": label})
    assert torch.equal(out["image"], torch.flip(image, [1, 3]))
    assert torch.equal(out["label"], torch.flip(label, [1, 3])) and out["label"].dtype == label.dtype
    none = RandSpatiald(["image", "label"], ["bilinear", "nearest"], rotate_prob=0.0, flip_prob=0.0, flip_axes=[0])
    out = none({"image": image, "label": label})
    assert out["image"] is image and out["label"] is label


def test_integer_maps_keep_their_dtype_and_missing_keys_are_allowed():
    ids = torch.randint(0, 300, (1, 16, 16), dtype=torch.int32)
    t = RandSpatiald(["label", "fov"], ["nearest", "nearest"], rotate_prob=1.0, ranges=[1.0], allow_missing_keys=True)
    out = t({"label": ids})
    assert out["label"].dtype == torch.int32 and "fov" not in out
    assert set(out["label"].unique().tolist()) <= set(ids.unique().tolist())
    with pytest.raises(KeyError, match="fov"):
        RandSpatiald(["label", "fov"], ["nearest", "nearest"], rotate_prob=1.0, ranges=[1.0])({"label": ids})


def test_each_part_is_drawn_with_its_own_probability_and_a_seed_repeats_the_draws():
    t = RandSpatiald(
        ["image"],
        ["bilinear"],
        rotate_prob=0.3,
        ranges=[1.0],
        zoom_prob=0.2,
        zoom_range=(0.8, 1.2),
        flip_prob=0.5,
        flip_axes=[0, 1],
    )
    t.set_random_state(0)
    draws = []
    for _ in range(4000):
        t.randomize()
        draws.append((t._angles is not None, t._zoom is not None, len(t._flips)))
    rot, zoom, flips = (np.mean([d[i] for d in draws]) for i in range(3))
    assert abs(rot - 0.3) < 0.03 and abs(zoom - 0.2) < 0.03 and abs(flips - 1.0) < 0.05
    image = torch.randn(1, 24, 24)
    a, b = (t.set_random_state(7)({"image": image})["image"] for _ in range(2))
    assert torch.equal(a, b)


def test_a_bad_mode_is_refused():
    with pytest.raises(ValueError, match="bicubic"):
        RandSpatiald(["image"], ["bicubic"])
