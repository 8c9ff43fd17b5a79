"""Instance pictures (pipeline.instances.render)."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.instances.render import colours, overlay


def test_colours_are_distinct_and_background_black():
    c = colours(50)
    assert c.shape == (51, 3) and (c[0] == 0).all()
    assert len({tuple(row) for row in c[1:]}) == 50
    assert np.abs(c[1:-1].astype(int) - c[2:]).sum(1).min() > 60  # consecutive ids contrast


def test_fill_and_outline_of_touching_objects():
    ids = np.zeros((10, 10), int)
    ids[2:8, 1:5], ids[2:8, 5:9] = 1, 2
    image = np.linspace(0, 100, 100).reshape(10, 10)
    filled = overlay(image, ids)
    assert (filled[0, 0] == 0).all() and (filled[9, 9] == 255).all()  # background: the image, min-max scaled
    assert not np.array_equal(filled[4, 2], filled[4, 6])  # two objects, two colours
    outlined = overlay(image, ids, mode="outline")
    c = colours(2)
    assert (outlined[4, 4] == c[1]).all() and (outlined[4, 5] == c[2]).all()  # both sides of the contact
    assert np.array_equal(outlined[4, 2], overlay(image, np.zeros_like(ids))[4, 2])  # interiors untouched
    rgb = overlay(np.dstack([image] * 3), ids)
    assert rgb.shape == (10, 10, 3)


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match=r"same H W, got \(4, 4\) and \(4, 5\)"):
        overlay(np.zeros((4, 5)), np.zeros((4, 4), int))
    with pytest.raises(ValueError, match="mode must be one of"):
        overlay(np.zeros((4, 4)), np.zeros((4, 4), int), mode="edges")
