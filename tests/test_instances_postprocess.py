"""Post-processing to instances: watershed separates touching objects, thresholds chosen on validation."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy import ndimage

from pipeline.instances.metrics import match
from pipeline.instances.postprocess import (
    fill_small_holes,
    instances_from_classes,
    instances_from_probabilities,
    postprocess,
    remove_small,
    select_thresholds,
)
from pipeline.instances.targets import boundary_distance, instance_classes


def _disks(shape=(40, 60), centres=((20, 20), (20, 37)), r=10.0) -> np.ndarray:
    """Touching disks, split where they overlap by the nearer centre."""
    grid = np.indices(shape).transpose(1, 2, 0) if len(shape) == 2 else np.indices(shape).transpose(1, 2, 3, 0)
    d = np.stack([np.linalg.norm(grid - np.asarray(c), axis=-1) for c in centres])
    ids = np.argmin(d, 0) + 1
    ids[d.min(0) > r] = 0
    return ids


def _onehot(classes: np.ndarray) -> np.ndarray:
    return np.stack([classes == k for k in range(3)]).astype(np.float32)


def test_watershed_separates_touching_disks_that_components_merge():
    true = _disks()
    _, n_components = ndimage.label(true > 0)
    assert n_components == 1  # the baseline merges them
    ids = instances_from_classes(instance_classes(true), min_size=0)
    assert ids.max() == 2 and ids.dtype == np.uint16
    m = match(true, ids)
    assert m["tp"][0] == 2 and m["sq"][0] > 0.9  # border pixels went back to their disks
    # with noisy probabilities too
    rng = np.random.default_rng(0)
    logits = 4 * _onehot(instance_classes(true)) + rng.normal(0, 0.8, (3, *true.shape))
    probs = np.exp(logits) / np.exp(logits).sum(0)
    assert match(true, instances_from_probabilities(probs, min_size=10))["tp"][0] == 2


def test_distance_markers_split_a_binary_mask():
    true = _disks()
    probs = np.stack([true == 0, true > 0]).astype(np.float32)  # 2 classes: no border information
    ids = instances_from_probabilities(probs, markers="distance", min_distance=5, min_size=0)
    assert match(true, ids)["tp"][0] == 2
    # seeds from a (predicted) distance map instead: one peak per object
    dist = boundary_distance(true, normalise=True)
    ids = instances_from_probabilities(probs, markers="distance", distance=dist, min_distance=5, min_size=0)
    assert match(true, ids)["tp"][0] == 2
    with pytest.raises(ValueError, match=r"distance must have the spatial shape \(40, 60\)"):
        instances_from_probabilities(probs, markers="distance", distance=dist[:10])
    with pytest.raises(ValueError, match="markers='interior' needs 3 channels"):
        instances_from_probabilities(probs)


def test_3d_touching_balls():
    true = _disks((24, 24, 40), ((12, 12, 11), (12, 12, 28)), r=9.0)
    assert ndimage.label(true > 0)[1] == 1
    ids = instances_from_classes(instance_classes(true), min_size=0)
    assert match(true, ids)["tp"][:5] == [2] * 5


def _selection_case() -> tuple[np.ndarray, np.ndarray]:
    """Three objects in a row; the link 1-2 has interior probability 0.55, object 3's interior 0.65.

    Seed threshold 0.5 merges 1 and 2; 0.7 loses 3's seed, so the watershed gives 3 to 2; only
    0.6 separates all three. A 5-pixel speck of foreground is a false positive below 8 pixels.
    """
    true = np.zeros((20, 50), np.int64)
    true[4:16, 2:16], true[4:16, 16:30], true[4:16, 30:44] = 1, 2, 3
    classes = instance_classes(true)
    p_interior = np.where(classes == 1, 0.9, 0.0)
    p_interior[true == 3] = np.where(classes[true == 3] == 1, 0.65, 0.0)
    p_interior[9:11, 14:18] = 0.55  # a bridge of interior across the 1-2 border
    p_fg = (true > 0).astype(float)
    p_fg[1:2, 46:49] = 1.0  # speck: 3 px ...
    p_fg[2:3, 47:49] = 1.0  # ... + 2 px
    probs = np.stack([1 - p_fg, p_interior, p_fg - p_interior]).astype(np.float32)
    return probs, true


def test_threshold_selection_picks_the_separating_threshold():
    probs, true = _selection_case()
    counts = {
        t: int(instances_from_probabilities(probs, interior_threshold=t, min_size=8).max()) for t in (0.5, 0.6, 0.7)
    }
    assert counts == {0.5: 2, 0.6: 3, 0.7: 2}
    s = select_thresholds([(probs, true)], interior_thresholds=(0.5, 0.6, 0.7), min_sizes=(0, 8, 1000))
    assert s["interior_threshold"] == 0.6 and s["min_size"] == 8
    scores = np.asarray(s["grid"]["scores"])
    assert s["score"] == scores.max() == scores[1, 1] and scores[0, 1] < s["score"] and scores[2, 1] < s["score"]
    assert scores[1, 0] < scores[1, 1] and scores[1, 2] == 0.0  # the speck costs; 1000 px removes all
    restored = json.loads(json.dumps(s))  # saved with the run, read back
    assert np.array_equal(
        postprocess(probs, restored), instances_from_probabilities(probs, interior_threshold=0.6, min_size=8)
    )


def test_hole_filling_and_small_objects():
    ids = np.zeros((12, 12), np.int64)
    ids[2:10, 2:10] = 1
    ids[5, 5] = 0  # 1-px hole
    probs = _onehot(instance_classes(ids))
    assert instances_from_probabilities(probs, min_size=0)[5, 5] == 1
    assert instances_from_probabilities(probs, min_size=0, max_hole_size=0)[5, 5] == 0
    ring = np.ones((7, 7), bool)
    ring[1:6, 1:6] = False  # a 25-px hole: larger than 24 stays
    assert not fill_small_holes(ring, 24)[3, 3] and fill_small_holes(ring, 25)[3, 3]
    assert remove_small(np.array([[3, 3, 3, 0, 9]]), 3).tolist() == [[1, 1, 1, 0, 0]]


def test_bad_settings_raise():
    probs = np.zeros((3, 4, 4), np.float32)
    with pytest.raises(ValueError, match=r"probs must be C H W \[D\] with C = 3"):
        instances_from_probabilities(np.zeros((4, 4, 4, 4, 4)))
    with pytest.raises(ValueError, match=r"markers must be one of \['interior', 'distance'\], got 'peaks'"):
        instances_from_probabilities(probs, markers="peaks")
    with pytest.raises(ValueError, match=r"interior_threshold must be in \[0.0, 1.0\], got 1.5"):
        instances_from_probabilities(probs, interior_threshold=1.5)
    with pytest.raises(ValueError, match="unknown post-processing settings"):
        postprocess(probs, {"threshold": 0.5})
    with pytest.raises(ValueError, match="at least one"):
        select_thresholds([])


@pytest.mark.parametrize("shape", [(128, 128), (40, 40, 32)])
def test_targets_round_trip_to_the_same_instances(shape):
    from pipeline.data.synth.dense import dense_nuclei

    _, true = dense_nuclei(np.random.default_rng(1), shape)
    _, n_components = ndimage.label(true > 0)
    ids = instances_from_classes(instance_classes(true), min_size=0)
    m = match(true, ids)
    assert n_components < true.max() / 2  # dense: components would merge most nuclei
    assert ids.max() == true.max() and m["ap"][0] == 1.0 and m["mean_ap"] > 0.98
