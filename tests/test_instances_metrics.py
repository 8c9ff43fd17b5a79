"""Instance metrics against hand-computed tables (ties, empty maps, one-to-many, label gaps, 3D).

The same definitions are checked against StarDist's and Cellpose's own code on random maps by
``bench/instances_reference.py`` (300 maps, 0 of 39,501 values differ by more than 1e-6); here every value is
worked out by hand or by brute force over all matchings.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from pipeline.instances import metrics as M
from pipeline.instances.metrics import THRESHOLDS, aggregated_jaccard_index, aji_kumar, instance_metrics, match


def _strip(*intervals: tuple[int, int, int], width: int = 20) -> np.ndarray:
    """A 1 x width map with object ``k`` on ``[a, b)`` for each ``(k, a, b)``."""
    out = np.zeros((1, width), np.int32)
    for k, a, b in intervals:
        out[0, a:b] = k
    return out


def test_thresholds_are_the_dsb2018_ones():
    assert THRESHOLDS == tuple(round(0.5 + 0.05 * i, 2) for i in range(10))
    assert THRESHOLDS[2] == 0.6 and THRESHOLDS[4] == 0.7  # exact literals, not 0.6000000000000001
    m = match(_strip((1, 0, 10)), _strip((1, 0, 7)), thresholds=(0.7, 0.75))  # IoU 7/10: at 0.7 it matches
    assert m["tp"] == [1, 0]


def test_one_true_split_in_two_predictions():
    true = np.zeros((4, 4), int)
    true[:, :] = 1  # 16 px
    pred = np.zeros((4, 4), int)
    pred[:, :2] = 2  # 8 px inside: IoU exactly 0.5, matches (>=)
    pred[:, 2] = 3  # 4 px inside: IoU 0.25
    m = match(true, pred)
    assert (m["tp"][0], m["fp"][0], m["fn"][0]) == (1, 1, 0)
    assert m["precision"][0] == 0.5 and m["recall"][0] == 1.0
    assert m["f1"][0] == pytest.approx(2 / 3) and m["ap"][0] == 0.5
    assert m["sq"][0] == 0.5 and m["pq"][0] == pytest.approx(0.5 / 1.5)
    assert m["tp"][1:] == [0] * 9 and m["ap"][1:] == [0.0] * 9
    assert m["mean_ap"] == pytest.approx(0.05)
    assert m["matches"][0] == [(1, 2)]
    # Cellpose's AJI: true 1 assigned to pred 2 (8 px), union 16; Kumar's adds unused pred 3 (4 px)
    assert aggregated_jaccard_index(true, pred) == 0.5
    assert aji_kumar(true, pred) == pytest.approx(8 / 20)


def test_half_half_tie_counts_one_match():
    true = _strip((1, 0, 8))
    pred = _strip((1, 0, 4), (2, 4, 8))  # both IoU exactly 0.5
    m = match(true, pred, thresholds=0.5)
    assert (m["tp"], m["fp"], m["fn"], m["sq"]) == ([1], [1], [0], [0.5])
    assert m["matches"] == [[(1, 1)]]  # the lower id of the tied pair
    assert aggregated_jaccard_index(true, pred) == 0.5  # 4 of 8 whichever is assigned
    assert aji_kumar(true, pred) == pytest.approx(4 / 12)
    # the mirror case: one prediction covering two true halves
    m = match(pred, true, thresholds=0.5)
    assert (m["tp"], m["fp"], m["fn"]) == ([1], [0], [1])


def test_optimal_assignment_below_one_half_beats_greedy():
    # T1 = [0,10), T2 = [10,16), P1 = [5,13), P2 = [0,3): IoU T1P1 = 5/13, T1P2 = 3/10, T2P1 = 3/11.
    # Greedy on the best IoU takes T1-P1 and leaves T2 alone; the optimum matches both.
    true = _strip((1, 0, 10), (2, 10, 16))
    pred = _strip((1, 5, 13), (2, 0, 3))
    m = match(true, pred, thresholds=(0.25, 0.35, 0.5))
    assert m["tp"] == [2, 1, 0]
    assert m["matches"][:2] == [[(1, 2), (2, 1)], [(1, 1)]]
    assert m["sq"][0] == pytest.approx((3 / 10 + 3 / 11) / 2)
    assert m["sq"][1] == pytest.approx(5 / 13)


@pytest.mark.parametrize(
    ("true_ids", "pred_ids", "expected"),
    [
        ((), (), dict(tp=0, fp=0, fn=0, ap=1.0, f1=1.0, precision=1.0, recall=1.0, pq=1.0, aji=1.0, count_error=0.0)),
        (
            (1, 2),
            (),
            dict(tp=0, fp=0, fn=2, ap=0.0, f1=0.0, precision=0.0, recall=0.0, pq=0.0, aji=0.0, count_error=-1.0),
        ),
        (
            (),
            (1, 2, 3),
            dict(tp=0, fp=3, fn=0, ap=0.0, f1=0.0, precision=0.0, recall=0.0, pq=0.0, aji=0.0, count_error=3.0),
        ),
    ],
    ids=["both_empty", "pred_empty", "true_empty"],
)
def test_empty_maps(true_ids, pred_ids, expected):
    def draw(ids):
        out = np.zeros((6, 12), int)
        for k, i in enumerate(ids):
            out[1:5, 4 * k : 4 * k + 3] = i
        return out

    true, pred = draw(true_ids), draw(pred_ids)
    m = match(true, pred)
    row = instance_metrics(true, pred)
    assert (m["tp"][0], m["fp"][0], m["fn"][0]) == (expected["tp"], expected["fp"], expected["fn"])
    for key in ("ap", "f1", "precision", "recall", "pq"):
        assert m[key] == [expected[key]] * 10, key
    assert row["aji"] == expected["aji"] and row["count_error"] == expected["count_error"]
    assert aji_kumar(true, pred) == expected["aji"]


def test_label_gaps_are_objects_not_missing_ids():
    rng = np.random.default_rng(0)
    true = np.zeros((16, 16), int)
    true[1:6, 1:6], true[8:14, 2:7], true[3:9, 9:15] = 1, 2, 3
    pred = np.roll(true, 1, axis=1)
    pred[pred == 3] = 0
    pred[12:15, 12:15] = 4  # a false positive
    gapped_true = np.array([0, 1, 5, 9])[true]
    gapped_pred = np.array([0, 2, 7, 100, 40])[pred]
    a, b = match(true, pred), match(gapped_true, gapped_pred)
    for key in ("tp", "fp", "fn", "ap", "sq", "pq"):
        assert a[key] == b[key], key
    assert (b["n_true"], b["n_pred"]) == (3, 3)  # not max(id) = 9 / 100
    assert b["matches"][0] == [(1, 2), (5, 7)]
    assert aggregated_jaccard_index(true, pred) == aggregated_jaccard_index(gapped_true, gapped_pred)
    # a permutation of ids changes nothing either
    perm = np.concatenate([[0], rng.permutation(np.arange(1, 5))])
    assert match(true, perm[pred])["ap"] == a["ap"]


def test_3d_cubes_shifted_by_one_slice():
    true = np.zeros((10, 10, 10), int)
    true[1:5, 1:5, 1:5], true[5:9, 5:9, 5:9] = 1, 2
    pred = np.roll(true, 1, axis=2)  # each cube: 48 of 64 voxels shared, union 80, IoU 0.6 exactly
    m = match(true, pred)
    assert m["tp"] == [2, 2, 2] + [0] * 7  # 0.6 >= 0.6 matches
    assert m["mean_ap"] == pytest.approx(0.3)
    assert m["sq"][0] == pytest.approx(0.6) and m["pq"][0] == pytest.approx(0.6)
    assert aggregated_jaccard_index(true, pred) == pytest.approx(96 / 160)
    assert aji_kumar(true, pred) == pytest.approx(96 / 160)


def _brute_force(true: np.ndarray, pred: np.ndarray, thr: float) -> tuple[int, float]:
    """Max matches at IoU >= thr, then max IoU sum among those, over every one-to-one assignment."""
    nt, np_ = int(true.max()), int(pred.max())
    iou = np.zeros((nt, np_))
    for i, j in itertools.product(range(nt), range(np_)):
        a, b = true == i + 1, pred == j + 1
        iou[i, j] = (a & b).sum() / max((a | b).sum(), 1)
    best = (0, 0.0)
    small, large = (nt, np_) if nt <= np_ else (np_, nt)
    for perm in itertools.permutations(range(large), small):
        pairs = [(k, perm[k]) if nt <= np_ else (perm[k], k) for k in range(small)]
        ok = [iou[i, j] for i, j in pairs if iou[i, j] >= thr]
        best = max(best, (len(ok), round(sum(ok), 12)))
    return best


@pytest.mark.parametrize("seed", range(6))
def test_matching_equals_brute_force_at_low_thresholds(seed):
    rng = np.random.default_rng(seed)
    true = np.repeat(np.repeat(rng.integers(0, 5, (4, 5)), 3, 0), 3, 1)
    pred = np.roll(true, int(rng.integers(1, 3)), axis=int(rng.integers(2)))
    pred[rng.random(pred.shape) < 0.15] = 0
    true, pred = _consecutive(true), _consecutive(pred)
    thresholds = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6)
    m = match(true, pred, thresholds)
    for k, t in enumerate(thresholds):
        tp, total = _brute_force(true, pred, t)
        assert m["tp"][k] == tp
        assert m["sq"][k] * m["tp"][k] == pytest.approx(total)


def _consecutive(a: np.ndarray) -> np.ndarray:
    ids, inv = np.unique(a, return_inverse=True)
    return inv.reshape(a.shape) + (ids[0] != 0)


def test_grouped_solver_equals_dense(monkeypatch):
    rng = np.random.default_rng(3)
    from scipy import ndimage

    true, _ = ndimage.label(ndimage.gaussian_filter(rng.random((64, 64)), 2) > 0.5)
    pred, _ = ndimage.label(ndimage.gaussian_filter(rng.random((64, 64)), 2) > 0.5)
    thresholds = (0.05, 0.2, 0.5)
    dense = (match(true, pred, thresholds), aggregated_jaccard_index(true, pred))
    monkeypatch.setattr(M, "DENSE_LIMIT", 0)
    grouped = (match(true, pred, thresholds), aggregated_jaccard_index(true, pred))
    assert dense[0]["tp"] == grouped[0]["tp"] and dense[0]["tp"][0] > 0
    assert np.allclose(dense[0]["sq"], grouped[0]["sq"]) and dense[1] == pytest.approx(grouped[1])


def test_instance_metrics_row_and_summary():
    true = np.zeros((8, 8), int)
    true[:4, :4], true[4:, 4:] = 1, 2
    pred = true.copy()
    pred[4:, 4:] = 0
    row = instance_metrics(true, pred)
    assert row["ap_0.50"] == 0.5 and row["recall"] == 0.5 and row["precision"] == 1.0
    assert row["count_error"] == -0.5 and row["aji"] == 0.5
    assert row["rq"] == row["f1"] == pytest.approx(2 / 3) and row["pq"] == pytest.approx(2 / 3)
    s = M.summarise([row, instance_metrics(true, true)])
    assert s["mean_ap_0.50"] == 0.75
    assert s["pooled_ap_0.50"] == pytest.approx(3 / 4)  # tp 3, fn 1 over both images
    assert s["mean_abs_count_error"] == 0.25


def test_bad_inputs_raise():
    a = np.zeros((4, 4), int)
    with pytest.raises(ValueError, match=r"same shape, got \(4, 4\) and \(4, 5\)"):
        match(a, np.zeros((4, 5), int))
    with pytest.raises(ValueError, match="non-negative ids"):
        match(a - 1, a)
    with pytest.raises(ValueError, match="whole-number ids"):
        match(a + 0.5, a)
    with pytest.raises(ValueError, match=r"thresholds must be IoU values in \[0, 1\]"):
        match(a, a, thresholds=1.5)
    # float maps holding whole ids (MetaTensor labels load as float32) are fine
    assert match(a.astype(np.float32) + 1, a + 1)["ap"][0] == 1.0
