from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from scipy import ndimage

from pipeline.metrics import METRICS, cldice, evaluate_case, image_diagonal, overlap_metrics


def square(shape, r0, r1, c0, c1, dtype=np.uint8):
    a = np.zeros(shape, dtype)
    a[r0:r1, c0:c1] = 1
    return a


def point(shape, idx):
    a = np.zeros(shape, np.uint8)
    a[idx] = 1
    return a


# ---- overlap metrics, by hand ------------------------------------------------------------------


@pytest.mark.parametrize(
    "pred_box, expected",
    [
        # label is the 4x4 square [2:6, 2:6] (16 px)
        ((2, 6, 2, 4), {"dice": 2 * 8 / 24, "iou": 8 / 16, "precision": 1.0, "recall": 0.5}),
        ((2, 6, 2, 8), {"dice": 2 * 16 / 40, "iou": 16 / 24, "precision": 16 / 24, "recall": 1.0}),
        ((4, 8, 4, 8), {"dice": 2 * 4 / 32, "iou": 4 / 28, "precision": 4 / 16, "recall": 4 / 16}),
        ((2, 6, 2, 6), {"dice": 1.0, "iou": 1.0, "precision": 1.0, "recall": 1.0}),
    ],
)
def test_overlap_metrics_by_hand(pred_box, expected):
    label = square((10, 10), 2, 6, 2, 6)
    res = evaluate_case(square((10, 10), *pred_box), label, metrics=("dice", "iou", "precision", "recall"))[1]
    for key, value in expected.items():
        assert res[key] == pytest.approx(value, abs=1e-12), key
    assert overlap_metrics(square((10, 10), *pred_box) > 0, label > 0) == pytest.approx(expected)


# ---- surface distances, by hand -------------------------------------------------------------------


@pytest.mark.parametrize(
    "spacing, expected",
    [((1.0, 1.0), 3.0), ((2.0, 0.5), 1.5), ((0.5, 2.0), 6.0)],
)
def test_single_pixels_distance_honours_spacing(spacing, expected):
    label, pred = point((6, 8), (2, 2)), point((6, 8), (2, 5))
    res = evaluate_case(pred, label, spacing=spacing, nsd_tolerance=expected - 1e-3)[1]
    assert res["hd95"] == pytest.approx(expected)
    assert res["assd"] == pytest.approx(expected)
    assert res["nsd"] == 0.0  # tolerance just below the distance
    assert evaluate_case(pred, label, spacing=spacing, nsd_tolerance=expected)[1]["nsd"] == 1.0


def test_single_voxels_3d_anisotropic():
    label, pred = point((5, 5, 6), (1, 2, 1)), point((5, 5, 6), (2, 2, 3))
    res = evaluate_case(pred, label, spacing=(0.5, 1.0, 3.0))[1]
    assert res["hd95"] == pytest.approx(math.sqrt(0.5**2 + 6.0**2))
    assert res["dice"] == 0.0 and res["status"] == "ok"


@pytest.mark.parametrize("s", [1.0, 0.5])
def test_concentric_squares(s):
    # label: 7x7 square (edge ring of 24 px), pred: centred 3x3 square (ring of 8 px), gap of 2 px.
    # pred -> label: all 8 at 2. label -> pred: 12 side pixels at 2, 8 at sqrt(5), 4 corners at sqrt(8).
    label, pred = square((12, 12), 2, 9, 2, 9), square((12, 12), 4, 7, 4, 7)
    res = evaluate_case(pred, label, spacing=(s, s), nsd_tolerance=2.0 * s)[1]
    assert res["assd"] == pytest.approx(s * (8 * 2 + 12 * 2 + 8 * math.sqrt(5) + 4 * math.sqrt(8)) / 32)
    assert res["hd95"] == pytest.approx(s * math.sqrt(8))  # 95th pct of 24 values: index 21.85, both sqrt(8)
    assert res["nsd"] == pytest.approx((8 + 12) / 32)
    assert evaluate_case(pred, label, spacing=(s, s), nsd_tolerance=2.3 * s)[1]["nsd"] == pytest.approx(28 / 32)
    assert res["dice"] == pytest.approx(2 * 9 / (9 + 49))


# ---- empty-mask conventions ----------------------------------------------------------------------------


def test_both_empty_missed_hallucinated_never_nan():
    shape, spacing = (10, 20), (0.5, 2.0)
    diag = math.sqrt(5.0**2 + 40.0**2)
    label = np.zeros(shape, np.uint8)
    label[2:5, 2:5] = 1  # class 1 only in the label: missed
    pred = np.zeros(shape, np.uint8)
    pred[6:8, 10:12] = 2  # class 2 only in the prediction: hallucinated
    res = evaluate_case(pred, label, spacing, classes=[1, 2, 3])
    assert [res[c]["status"] for c in (1, 2, 3)] == ["missed", "hallucinated", "both_empty"]
    for c in (1, 2):
        assert res[c]["hd95"] == pytest.approx(diag) and res[c]["assd"] == pytest.approx(diag)
        assert {res[c][m] for m in ("dice", "iou", "precision", "recall", "nsd", "cldice")} == {0.0}
    assert res[3] == {**{m: 1.0 for m in METRICS}, "hd95": 0.0, "assd": 0.0, "status": "both_empty"}
    assert not any(isinstance(v, float) and math.isnan(v) for r in res.values() for v in r.values())
    assert image_diagonal(shape, spacing) == pytest.approx(diag)


def test_default_classes_are_those_present():
    label = square((8, 8), 1, 3, 1, 3) * 2
    pred = square((8, 8), 5, 7, 5, 7) * 4
    res = evaluate_case(pred, label)
    assert sorted(res) == [2, 4]
    assert res[2]["status"] == "missed" and res[4]["status"] == "hallucinated"


# ---- equality with MONAI ----------------------------------------------------------------------


def _blobs(shape, rng):
    field = ndimage.gaussian_filter(rng.standard_normal(shape), 2.0)
    lab = np.zeros(shape, np.int64)
    lab[field > 0.04] = 1
    lab[field > 0.12] = 2
    lab[field < -0.1] = 3
    return lab


@pytest.mark.parametrize(
    "shape, spacing",
    [((40, 46), (0.7, 1.3)), ((22, 26, 18), (0.8, 1.1, 2.5)), ((20, 24, 16), (3.0, 0.6, 1.0))],
)
def test_equals_monai_metrics(shape, spacing):
    torch = pytest.importorskip("torch")
    from monai.metrics import DiceMetric, HausdorffDistanceMetric, SurfaceDiceMetric, SurfaceDistanceMetric

    rng = np.random.default_rng(len(shape) * 7 + int(spacing[0] * 10))
    label, pred = _blobs(shape, rng), _blobs(shape, rng)
    pred[ndimage.binary_erosion(label == 2)] = 2  # some overlap for class 2
    tol = 1.5

    def onehot(a):
        return torch.nn.functional.one_hot(torch.as_tensor(a), 4).movedim(-1, 0)[None].float()

    yp, y = onehot(pred), onehot(label)
    kw = {"include_background": False, "reduction": "none"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = {
            "dice": DiceMetric(**kw)(yp, y),
            "hd95": HausdorffDistanceMetric(percentile=95, **kw)(yp, y, spacing=spacing),
            "assd": SurfaceDistanceMetric(symmetric=True, **kw)(yp, y, spacing=spacing),
            "nsd": SurfaceDiceMetric([tol] * 3, **kw)(yp, y, spacing=spacing),
        }
    ours = evaluate_case(pred, label, spacing, nsd_tolerance=tol)
    assert sorted(ours) == [1, 2, 3] and all(r["status"] == "ok" for r in ours.values())
    for name, monai_value in expected.items():
        for c in (1, 2, 3):
            assert ours[c][name] == pytest.approx(float(monai_value[0, c - 1]), abs=1e-4), (name, c)
    # a torch tensor input gives the same numbers
    assert evaluate_case(torch.as_tensor(pred), torch.as_tensor(label), spacing, nsd_tolerance=tol) == ours


# ---- clDice ------------------------------------------------------------------------------------


def test_cldice_thin_line_vs_shifted_line():
    label = square((12, 20), 5, 6, 2, 18)
    assert cldice(label > 0, label > 0) == 1.0
    shifted = square((12, 20), 6, 7, 2, 18)
    res = evaluate_case(shifted, label, metrics=("dice", "cldice"))[1]
    assert res["cldice"] == 0.0 and res["dice"] == 0.0


def test_cldice_thick_vessel_shifted_by_one_keeps_topology():
    label = square((16, 20), 4, 9, 2, 18)  # 5 px wide band: skeleton around row 6
    shifted = square((16, 20), 5, 10, 2, 18)  # skeleton around row 7, still inside the label band
    res = evaluate_case(shifted, label, metrics=("dice", "cldice"))[1]
    assert res["dice"] == pytest.approx(2 * 64 / 160)
    assert res["cldice"] == pytest.approx(1.0)
    far = square((16, 20), 8, 13, 2, 18)  # overlaps the label (row 8) but its skeleton lies outside
    res = evaluate_case(far, label, metrics=("dice", "cldice"))[1]
    assert res["dice"] == pytest.approx(2 * 16 / 160) and res["cldice"] == 0.0


def test_cldice_3d_broken_tube():
    label = np.zeros((9, 9, 24), np.uint8)
    label[3:6, 3:6, 2:22] = 1
    broken = label.copy()
    broken[:, :, 10:14] = 0  # a gap: the prediction's skeleton stays inside, the label's is cut
    res = evaluate_case(broken, label, metrics=("cldice",))[1]["cldice"]
    assert evaluate_case(label, label, metrics=("cldice",))[1]["cldice"] == 1.0
    assert 0.5 < res < 1.0


# ---- field of view ----------------------------------------------------------------------------


def test_fov_restricts_every_metric():
    label = square((16, 16), 4, 9, 4, 9)
    pred = label.copy()
    pred[13:15, 13:15] = 1  # a false positive in the corner
    fov = np.ones((16, 16), bool)
    fov[12:, 12:] = False
    without = evaluate_case(pred, label)[1]
    inside = evaluate_case(pred, label, fov=fov)[1]
    assert without["precision"] == pytest.approx(25 / 29) and without["hd95"] > 0
    assert inside["precision"] == 1.0 and inside["dice"] == 1.0 and inside["hd95"] == 0.0
    # a label structure only outside the FOV is not counted at all
    assert evaluate_case(pred * (1 - fov), label * (1 - fov), classes=[1], fov=fov)[1]["status"] == "both_empty"


# ---- arguments -----------------------------------------------------------------------------


def test_metric_subset_and_bool_input():
    label = square((8, 8), 2, 6, 2, 6)
    res = evaluate_case(label.astype(bool), label, metrics=("hd95", "dice"))[1]
    assert res == {"dice": 1.0, "hd95": 0.0, "status": "ok"}


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"pred": np.zeros((4, 5), np.uint8)}, ValueError, r"pred shape \(4, 5\) != label shape \(4, 4\)"),
        ({"pred": np.zeros((1, 4, 4, 1)), "label": np.zeros((1, 4, 4, 1))}, ValueError, "2D or 3D"),
        ({"spacing": (1.0, 2.0, 3.0)}, ValueError, r"spacing must be 2 positive finite numbers.*\(1\.0, 2\.0, 3\.0\)"),
        ({"spacing": (1.0, 0.0)}, ValueError, "spacing must be 2 positive"),
        ({"classes": [0, 1]}, ValueError, r"classes must be >= 1 \(0 is background\)"),
        ({"metrics": ("dice", "hd99")}, ValueError, "metrics must be a non-empty subset"),
        ({"nsd_tolerance": -1.0}, ValueError, "nsd_tolerance must be a finite number >= 0"),
        ({"pred": np.full((4, 4), 0.5)}, ValueError, "pred must hold class indices, got non-integer"),
        ({"label": -np.ones((4, 4), np.int8)}, ValueError, "label must hold class indices >= 0"),
        ({"fov": np.ones((3, 4), bool)}, ValueError, r"fov shape \(3, 4\) != pred/label shape \(4, 4\)"),
    ],
)
def test_bad_arguments(kwargs, error, match):
    args = {"pred": np.zeros((4, 4), np.uint8), "label": np.zeros((4, 4), np.uint8), **kwargs}
    with pytest.raises(error, match=match):
        evaluate_case(**args)


# ---- the registry -----------------------------------------------------------------------------


def test_metric_registry_carries_direction_and_empty_values():
    assert list(METRICS) == ["dice", "iou", "precision", "recall", "hd95", "assd", "nsd", "cldice"]
    assert {m for m in METRICS if not METRICS.get(m).higher_is_better} == {"hd95", "assd"}
    assert METRICS.get("hd95").empty_value("missed", 7.5) == 7.5
    assert METRICS.get("hd95").empty_value("both_empty", 7.5) == 0.0
    assert METRICS.get("dice").empty_value("hallucinated", 7.5) == 0.0
    with pytest.raises(ValueError, match="unknown metric 'dcie'. Did you mean 'dice'"):
        METRICS.get("dcie")


def test_a_new_metric_is_one_registration(monkeypatch):
    """Registering is all it takes: evaluate_case and the Evaluator table report it, with its own
    direction and empty-case values."""
    from pipeline.engines.evaluator import Evaluator
    from pipeline.metrics import register_metric

    monkeypatch.setattr(METRICS, "_items", dict(METRICS._items))  # the registration ends with the test

    @register_metric("volume_ratio", higher_is_better=False, both_empty=1.0, missed=0.0, hallucinated=99.0)
    def _ratio(pair):
        return float(pair.pred.sum() / pair.label.sum())

    label = square((8, 8), 2, 6, 2, 6)
    pred = square((8, 8), 2, 6, 2, 4)
    assert evaluate_case(pred, label, metrics=("dice", "volume_ratio"))[1]["volume_ratio"] == 0.5
    assert evaluate_case(pred * 0, label, metrics=["volume_ratio"])[1]["volume_ratio"] == 0.0
    ev = Evaluator([1, 2], metrics=("volume_ratio",))
    ev.add("a", pred, label)
    assert "volume_ratio↓" in ev.table()
    assert ev.summary()["per_class"]["2"]["volume_ratio"]["mean"] == 1.0  # both empty
