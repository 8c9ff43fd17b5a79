"""Per-object measurements and label-map dtype (pipeline.instances.measure)."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.instances.measure import as_instance_map, columns, instance_dtype, objects_table


def test_table_2d_in_physical_units_with_id_gaps():
    ids = np.zeros((10, 12), np.int32)
    ids[1:5, 2:4] = 5  # 8 px
    ids[6:9, 6:12] = 9  # 18 px
    image = np.arange(120, dtype=float).reshape(10, 12)
    rows = objects_table(ids, image, spacing=(2.0, 0.5))
    assert [r["id"] for r in rows] == [5, 9]
    assert list(rows[0]) == columns(2)
    a, b = rows
    assert a["area"] == 8.0 and b["area"] == 18.0  # 1 unit² per pixel
    assert (a["centroid_0"], a["centroid_1"]) == (5.0, 1.25)  # (2.5 px * 2, 2.5 px * 0.5)
    assert (a["bbox_min_0"], a["bbox_min_1"], a["bbox_max_0"], a["bbox_max_1"]) == (1, 2, 5, 4)
    assert a["mean_intensity"] == pytest.approx(image[ids == 5].mean())
    assert b["equivalent_diameter"] == pytest.approx(2 * np.sqrt(18.0 / np.pi))


def test_table_3d_volume_and_no_image():
    ids = np.zeros((6, 6, 6), np.uint16)
    ids[1:4, 1:4, 1:3] = 1
    rows = objects_table(ids, spacing=(1.0, 1.0, 2.5))
    assert list(rows[0]) == columns(3, with_intensity=False)
    assert rows[0]["volume"] == pytest.approx(18 * 2.5)
    assert rows[0]["centroid_2"] == pytest.approx(1.5 * 2.5)
    assert rows[0]["equivalent_diameter"] == pytest.approx((6 * 45 / np.pi) ** (1 / 3))
    assert objects_table(np.zeros((4, 4), int)) == []


def test_dtype_switches_beyond_65535():
    assert instance_dtype(0) == np.uint16 and instance_dtype(65_535) == np.uint16
    assert instance_dtype(65_536) == np.uint32
    many = np.arange(70_000, dtype=np.int64).reshape(280, 250)  # 69,999 objects
    out = as_instance_map(many)
    assert out.dtype == np.uint32 and np.array_equal(out, many)
    assert as_instance_map(many % 1000).dtype == np.uint16
    with pytest.raises(ValueError, match="do not fit a uint32"):
        instance_dtype(2**32)
    with pytest.raises(ValueError, match="must be >= 0"):
        as_instance_map(np.array([-1, 2]))


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match=r"H W or H W D \(no channel axis\), got shape \(1, 2, 3, 4\)"):
        objects_table(np.zeros((1, 2, 3, 4), int))
    with pytest.raises(ValueError, match=r"image must have the shape of instances \(4, 4\), got \(4, 5\)"):
        objects_table(np.ones((4, 4), int), np.zeros((4, 5)))
    with pytest.raises(ValueError, match="spacing must be 2 positive values"):
        objects_table(np.ones((4, 4), int), spacing=(1.0,))
