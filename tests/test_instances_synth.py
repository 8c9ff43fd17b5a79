"""Dense synthetic nuclei (pipeline.data.synth.dense): seeded, touching, 2D and 3D."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from pipeline.data.synth.dense import dense_nuclei


def _touching_pairs(ids: np.ndarray) -> int:
    pairs = set()
    for axis in range(ids.ndim):
        a, b = np.moveaxis(ids, axis, 0)[:-1], np.moveaxis(ids, axis, 0)[1:]
        contact = (a > 0) & (b > 0) & (a != b)
        pairs |= {tuple(sorted(p)) for p in zip(a[contact].tolist(), b[contact].tolist(), strict=True)}
    return len(pairs)


@pytest.mark.parametrize("shape", [(96, 96), (32, 32, 24)])
def test_dense_touching_and_seeded(shape):
    image, ids = dense_nuclei(np.random.default_rng(5), shape)
    again, ids2 = dense_nuclei(np.random.default_rng(5), shape)
    assert np.array_equal(image, again) and np.array_equal(ids, ids2)
    assert not np.array_equal(ids, dense_nuclei(np.random.default_rng(6), shape)[1])
    n = int(ids.max())
    assert image.shape == ids.shape == shape and image.dtype == np.float32 and 0 <= image.min() <= image.max() <= 1
    assert np.array_equal(np.unique(ids), np.arange(n + 1))
    _, n_clumps = ndimage.label(ids > 0)
    assert n >= 2 * n_clumps  # clumps of touching nuclei: connected components would merge them
    assert _touching_pairs(ids) >= n // 2
    # nuclei are brighter than background
    assert image[ids > 0].mean() > 3 * image[ids == 0].mean()


def test_overlap_setting_controls_contacts():
    apart = dense_nuclei(np.random.default_rng(0), (96, 96), overlap=0.0, clump=0.0, density=0.1)[1]
    dense = dense_nuclei(np.random.default_rng(0), (96, 96), overlap=0.4, clump=0.9)[1]
    assert _touching_pairs(apart) < _touching_pairs(dense) / 4


def test_bad_settings_raise():
    with pytest.raises(ValueError, match="shape must be 2 or 3 sizes >= 8"):
        dense_nuclei(np.random.default_rng(0), (4, 4))
    with pytest.raises(ValueError, match="0 <= overlap < 1"):
        dense_nuclei(np.random.default_rng(0), (16, 16), overlap=1.0)


def test_importing_it_leaves_the_cell_kind_working(tmp_path):
    import pipeline.data.synth as synth
    import pipeline.data.synth.dense  # noqa: F401 - the import is the test

    assert callable(synth.cell.nuclei)  # a submodule named `nuclei` would have replaced the function
    root = synth.make_dataset("cell", tmp_path / "cells", n=1, size=48)
    assert len(list((root / "stage1_train").iterdir())) == 1
