"""Instance metrics: objects matched one-to-one by IoU, AP (DSB2018), F1, AJI, PQ, count error.

Definitions are those of StarDist's ``stardist.matching.matching`` (``criterion='iou'``) and
Cellpose's ``cellpose.metrics`` (``average_precision``, ``aggregated_jaccard_index``); our
numbers equal theirs (``bench/instances_reference.py`` runs both references on random maps):

- IoU of true object ``i`` and predicted object ``j``: ``|T_i ∩ P_j| / |T_i ∪ P_j|``, in float64.
- At threshold ``t`` a pair may match if ``IoU >= t`` (ties at ``t`` match). The matching is the
  one-to-one assignment that maximises the number of matched pairs, then the sum of their IoUs
  (``scipy.optimize.linear_sum_assignment`` on ``-(IoU >= t) - IoU / (2 min(n_true, n_pred))``,
  StarDist's cost). For ``t >= 0.5`` this assignment is unique and found without the solver:
  an object can have IoU >= 0.5 with two others only if both lie inside it and cover exactly
  half of it each, so the pairs at or above ``t`` already form a matching up to such ties.
- ``tp`` matched pairs, ``fp = n_pred - tp``, ``fn = n_true - tp``; precision ``tp/(tp+fp)``,
  recall ``tp/(tp+fn)``, F1 ``2tp/(2tp+fp+fn)``, **AP** ``tp/(tp+fp+fn)`` (DSB2018's "average
  precision", StarDist's ``accuracy``); ``mean_ap`` is the mean of AP over the thresholds.
- SQ = mean IoU of the matched pairs, RQ = F1, **PQ** = SQ x RQ (Kirillov et al. 2019; StarDist's
  ``panoptic_quality``, ``sum IoU / (tp + fp/2 + fn/2)``).
- **AJI** as Cellpose computes it: assign objects one-to-one with the cost above at ``t = 0.5``
  (every object of the smaller set is assigned, even to an object it does not touch), then sum
  of the intersections of the assigned pairs over the area of the union of both foregrounds.
  Kumar et al.'s original (2017) lets several true objects take the same prediction and adds
  the unused predictions to the denominator instead; ``aji_kumar`` gives that one.
- count error: ``(n_pred - n_true) / max(n_true, 1)`` (signed; the summary also gives its mean
  absolute value).

Ids need not be consecutive (1, 5, 9 is three objects; StarDist relabels too, while Cellpose's
``average_precision`` counts ``max(id)`` objects, so it must be given consecutive ids).

Where we differ from the references, on purpose: both maps empty.

==========================  ======================  ===============  ==================
case                        medseg                  StarDist         Cellpose
==========================  ======================  ===============  ==================
both maps empty             1 (AP, F1, P, R, PQ,    0                NaN (AP, AJI)
                            SQ, AJI); count err. 0
==========================  ======================  ===============  ==================

StarDist 0.9 computes IoUs in float32 and compares them with the threshold in float32, so an
IoU within float32 rounding (~3e-8) of a threshold without being equal to it would match there
and not here; IoUs are fractions of pixel counts, so that needs objects of ~10^7 pixels.

Both-empty images score 1, like :mod:`pipeline.metrics`' ``both_empty`` status, so a mean over
images counts them as solved rather than failed. One empty map scores 0 (AJI too).

Example:
    >>> import numpy as np
    >>> true = np.zeros((8, 8), int); true[1:4, 1:4] = 1; true[5:8, 5:8] = 2
    >>> pred = np.zeros((8, 8), int); pred[1:4, 1:3] = 7
    >>> r = match(true, pred, thresholds=(0.5, 0.7))
    >>> r["tp"], r["fp"], r["fn"], [round(a, 4) for a in r["ap"]]
    ([1, 0], [0, 1], [1, 2], [0.5, 0.0])
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

THRESHOLDS: tuple[float, ...] = (0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95)
"""IoU thresholds of the DSB2018 score, 0.5:0.05:0.95, as exact decimal literals."""

DENSE_LIMIT = 4_000_000
"""Above ``n_true * n_pred`` this many, the assignment is solved per connected group of
overlapping objects instead of on the whole IoU matrix: the same optimum, found faster, but
among exactly tied optima scipy may then pick another one (the counts are the same)."""

__all__ = [
    "THRESHOLDS",
    "as_labels",
    "overlaps",
    "match",
    "aggregated_jaccard_index",
    "aji_kumar",
    "instance_metrics",
    "summarise",
]


def as_labels(labels: Any, name: str = "labels") -> np.ndarray:
    """``labels`` as an int64 array of non-negative ids; a float array must hold whole numbers.

    Raises:
        ValueError: for negative or fractional ids.
    """
    arr = np.asarray(labels)
    if arr.dtype == bool:
        arr = arr.astype(np.int64)
    if not np.issubdtype(arr.dtype, np.integer):
        if not np.issubdtype(arr.dtype, np.floating) or (arr.size and not np.all(np.mod(arr, 1) == 0)):
            raise ValueError(f"{name} must hold whole-number ids, got dtype {arr.dtype} with fractional values")
    arr = arr.astype(np.int64, copy=False)
    if arr.size and arr.min() < 0:
        raise ValueError(f"{name} must hold non-negative ids (0 = background), got minimum {arr.min()}")
    return arr


def _sequential(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Ids renumbered 1..n in increasing order (0 stays 0), and the original id of each new one."""
    top = int(labels.max()) if labels.size else 0
    if top <= max(4 * labels.size, 1 << 16):  # a lookup table: linear time, no sort
        present = np.bincount(labels.ravel(), minlength=top + 1) > 0
        present[0] = False
        table = np.cumsum(present)
        return table[labels], np.flatnonzero(present)
    ids, inverse = np.unique(labels, return_inverse=True)
    inverse = inverse.reshape(labels.shape)
    if ids[0] == 0:
        return inverse, ids[1:]
    return inverse + 1, ids


def overlaps(true: Any, pred: Any) -> dict[str, Any]:
    """Pixel counts of every pair of overlapping objects, sparse, and each object's area.

    Ids are renumbered 1..n in increasing order of the original ids (``true_ids[k]`` is the
    original id of object ``k + 1``).

    Returns:
        dict with ``n_true``, ``n_pred``, ``true_ids``, ``pred_ids`` (original ids), ``area_true``
        ``(n_true + 1,)`` and ``area_pred`` ``(n_pred + 1,)`` (index 0 = background),
        ``pairs_true``, ``pairs_pred`` (1-based indices of the overlapping pairs), ``inter``
        and ``iou`` (float64) per pair.

    Raises:
        ValueError: if the shapes differ or the ids are not non-negative whole numbers.

    Example:
        >>> o = overlaps(np.array([[1, 1, 0, 5]]), np.array([[2, 0, 0, 2]]))
        >>> o["n_true"], o["n_pred"], o["true_ids"].tolist(), o["iou"].round(3).tolist()
        (2, 1, [1, 5], [0.333, 0.5])
    """
    t, p = as_labels(true, "true"), as_labels(pred, "pred")
    if t.shape != p.shape:
        raise ValueError(f"true and pred must have the same shape, got {t.shape} and {p.shape}")
    ts, true_ids = _sequential(t)
    ps, pred_ids = _sequential(p)
    n_true, n_pred = int(true_ids.size), int(pred_ids.size)
    area_true = np.bincount(ts.ravel(), minlength=n_true + 1).astype(np.int64)
    area_pred = np.bincount(ps.ravel(), minlength=n_pred + 1).astype(np.int64)
    both = (ts > 0) & (ps > 0)
    keys = ts[both].astype(np.int64) * (n_pred + 1) + ps[both]
    if (n_true + 1) * (n_pred + 1) <= max(4 * keys.size, 1 << 20):
        counts = np.bincount(keys, minlength=(n_true + 1) * (n_pred + 1))
        keys = np.flatnonzero(counts)
        inter = counts[keys]
    else:
        keys, inter = np.unique(keys, return_counts=True)
    pt, pp = keys // (n_pred + 1), keys % (n_pred + 1)
    inter = inter.astype(np.int64)
    iou = inter / (area_true[pt] + area_pred[pp] - inter).astype(np.float64)
    return {
        "n_true": n_true,
        "n_pred": n_pred,
        "true_ids": true_ids,
        "pred_ids": pred_ids,
        "area_true": area_true,
        "area_pred": area_pred,
        "pairs_true": pt,
        "pairs_pred": pp,
        "inter": inter,
        "iou": iou,
    }


def _pair_index(rows: np.ndarray, cols: np.ndarray, ti: np.ndarray, pi: np.ndarray, width: int) -> np.ndarray:
    """Positions in (``rows``, ``cols``) of the assigned (``ti``, ``pi``) that are listed pairs (0-based)."""
    keys = rows.astype(np.int64) * width + cols
    order = np.argsort(keys, kind="stable")
    wanted = ti.astype(np.int64) * width + pi
    pos = np.minimum(np.searchsorted(keys[order], wanted), max(keys.size - 1, 0))
    hit = keys[order][pos] == wanted if keys.size else np.zeros(wanted.shape, bool)
    return order[pos[hit]]


def _solve(rows: np.ndarray, cols: np.ndarray, cost: np.ndarray, n_true: int, n_pred: int) -> tuple[np.ndarray, ...]:
    """Minimum-cost one-to-one assignment; pairs not listed cost 0. Returns the chosen pair indices."""
    from scipy.optimize import linear_sum_assignment

    if n_true * n_pred <= DENSE_LIMIT:
        # the whole matrix, as the references build it, so that exact ties resolve as theirs do
        dense = np.zeros((n_true, n_pred))
        dense[rows - 1, cols - 1] = cost
        ti, pi = linear_sum_assignment(dense)
        return _pair_index(rows - 1, cols - 1, ti, pi, n_pred)
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    # groups of objects linked by overlaps: the optimum is the union of each group's optimum
    graph = coo_matrix((np.ones(rows.size), (rows - 1, n_true + cols - 1)), shape=(n_true + n_pred,) * 2)
    _, group = connected_components(graph, directed=False)
    pair_group = group[rows - 1]
    order = np.argsort(pair_group, kind="stable")
    bounds = np.flatnonzero(np.diff(pair_group[order])) + 1
    chosen = []
    for members in np.split(order, bounds):
        r, rinv = np.unique(rows[members], return_inverse=True)
        c, cinv = np.unique(cols[members], return_inverse=True)
        if members.size == 1:
            chosen.append(members)
            continue
        dense = np.zeros((r.size, c.size))
        dense[rinv, cinv] = cost[members]
        ti, pi = linear_sum_assignment(dense)
        chosen.append(members[_pair_index(rinv, cinv, ti, pi, c.size)])
    return np.concatenate(chosen).astype(np.int64) if chosen else np.zeros(0, np.int64)


def _matched_pairs(o: Mapping[str, Any], thr: float) -> np.ndarray:
    """Indices (into the pair arrays) of the pairs matched at IoU >= ``thr``."""
    iou, rows, cols = o["iou"], o["pairs_true"], o["pairs_pred"]
    if thr >= 0.5:
        # pairs at or above 0.5 form a matching up to exact half-half ties (module docstring);
        # keep one per true object, then one per predicted object
        sel = np.flatnonzero(iou >= thr)
        _, first = np.unique(rows[sel], return_index=True)
        sel = sel[first]
        _, first = np.unique(cols[sel], return_index=True)
        return sel[first]
    n_min = min(o["n_true"], o["n_pred"])
    cost = -(iou >= thr).astype(np.float64) - iou / (2 * n_min)
    chosen = _solve(rows, cols, cost, o["n_true"], o["n_pred"])
    return chosen[iou[chosen] >= thr]


def _ratio(num: float, den: float) -> float:
    return float(num) / float(den) if den > 0 else 0.0


def _thresholds(thresholds: float | Sequence[float]) -> tuple[float, ...]:
    thr = (float(thresholds),) if np.isscalar(thresholds) else tuple(float(t) for t in thresholds)
    if not thr or any(not 0.0 <= t <= 1.0 for t in thr):
        raise ValueError(f"thresholds must be IoU values in [0, 1], got {thresholds!r}")
    return thr


def match(true: Any, pred: Any, thresholds: float | Sequence[float] = THRESHOLDS) -> dict[str, Any]:
    """Match objects one-to-one by IoU at each threshold; counts and scores per threshold.

    Args:
        true: reference instance map ``H W [D]``.
        pred: predicted instance map, same shape.
        thresholds: IoU threshold(s) in ``[0, 1]``; a pair matches if ``IoU >= t``.

    Returns:
        dict with ``thresholds``, ``n_true``, ``n_pred`` and, per threshold (lists), ``tp``,
        ``fp``, ``fn``, ``precision``, ``recall``, ``f1``, ``ap``, ``sq`` (mean IoU of matched
        pairs), ``pq``; ``matches`` (list of ``(true_id, pred_id)`` tuples, original ids) and
        ``mean_ap``.

    Raises:
        ValueError: for a threshold outside ``[0, 1]``, different shapes or bad ids.

    Example:
        >>> true = np.zeros((4, 4), int); true[:2, :2] = 1
        >>> match(true, np.roll(true, 1, axis=0), thresholds=0.3)["matches"]
        [[(1, 1)]]
    """
    return _match(overlaps(true, pred), _thresholds(thresholds))


def _match(o: Mapping[str, Any], thr: tuple[float, ...]) -> dict[str, Any]:
    n_true, n_pred = o["n_true"], o["n_pred"]
    out: dict[str, Any] = {"thresholds": list(thr), "n_true": n_true, "n_pred": n_pred}
    for key in ("tp", "fp", "fn", "precision", "recall", "f1", "ap", "sq", "pq", "matches"):
        out[key] = []
    for t in thr:
        if n_true == 0 and n_pred == 0:
            tp, fp, fn, scores, chosen = 0, 0, 0, 1.0, np.zeros(0, np.int64)
            values = {"precision": 1.0, "recall": 1.0, "f1": 1.0, "ap": 1.0, "sq": 1.0, "pq": 1.0}
        else:
            chosen = _matched_pairs(o, t) if n_true and n_pred else np.zeros(0, np.int64)
            tp = int(chosen.size)
            fp, fn = n_pred - tp, n_true - tp
            scores = float(np.sum(o["iou"][chosen]))
            values = {
                "precision": _ratio(tp, tp + fp),
                "recall": _ratio(tp, tp + fn),
                "f1": _ratio(2 * tp, 2 * tp + fp + fn),
                "ap": _ratio(tp, tp + fp + fn),
                "sq": _ratio(scores, tp),
                "pq": _ratio(scores, tp + fp / 2 + fn / 2),
            }
        out["tp"].append(tp)
        out["fp"].append(fp)
        out["fn"].append(fn)
        for key, value in values.items():
            out[key].append(value)
        ids = np.stack([o["true_ids"][o["pairs_true"][chosen] - 1], o["pred_ids"][o["pairs_pred"][chosen] - 1]], 1)
        out["matches"].append(sorted((int(a), int(b)) for a, b in ids.tolist()))
    out["mean_ap"] = float(np.mean(out["ap"]))
    return out


def aggregated_jaccard_index(true: Any, pred: Any) -> float:
    """AJI as Cellpose's ``aggregated_jaccard_index``: assigned intersections over the union.

    Objects are assigned one-to-one with StarDist's cost at IoU 0.5 (module docstring); the
    intersections of all assigned pairs are summed and divided by the area where either map is
    foreground. 1 when both maps are empty (Cellpose: NaN), 0 when one is.

    Example:
        >>> true = np.zeros((4, 4), int); true[:2, :2] = 1; true[2:, 2:] = 2
        >>> pred = true.copy(); pred[0, 0] = 0
        >>> round(aggregated_jaccard_index(true, pred), 4)  # 7 assigned pixels of 8
        0.875
    """
    return _aji(overlaps(true, pred))


def _aji(o: Mapping[str, Any]) -> float:
    union = int(o["area_true"][1:].sum() + o["area_pred"][1:].sum() - o["inter"].sum())
    if o["n_true"] == 0 and o["n_pred"] == 0:
        return 1.0
    if o["n_true"] == 0 or o["n_pred"] == 0 or o["iou"].size == 0:
        return 0.0
    n_min = min(o["n_true"], o["n_pred"])
    cost = -(o["iou"] >= 0.5).astype(np.float64) - o["iou"] / (2 * n_min)
    chosen = _solve(o["pairs_true"], o["pairs_pred"], cost, o["n_true"], o["n_pred"])
    return float(o["inter"][chosen].sum()) / union


def aji_kumar(true: Any, pred: Any) -> float:
    """AJI as Kumar et al. (IEEE TMI 2017) define it: best prediction per true object, not one-to-one.

    Each true object takes the predicted object of highest IoU with it (the first such id on a
    tie); ``C`` sums their intersections, ``U`` their unions plus the true objects' areas when
    they overlap nothing, plus the area of every prediction no true object took. AJI = C / U.
    1 when both maps are empty, 0 when one is.

    Example:
        >>> true = np.zeros((4, 4), int); true[:2, :] = 1
        >>> pred = np.zeros((4, 4), int); pred[:2, :2] = 1; pred[:2, 2:] = 2
        >>> round(aji_kumar(true, pred), 4)  # pred 1 is taken: C = 4, U = 8 + pred 2's 4 pixels
        0.3333
    """
    o = overlaps(true, pred)
    if o["n_true"] == 0 and o["n_pred"] == 0:
        return 1.0
    if o["n_true"] == 0 or o["n_pred"] == 0:
        return 0.0
    rows, cols, iou, inter = o["pairs_true"], o["pairs_pred"], o["iou"], o["inter"]
    order = np.lexsort((cols, -iou, rows))  # per true object: highest IoU first, then lowest id
    _, first = np.unique(rows[order], return_index=True)
    best = order[first]
    c = int(inter[best].sum())
    u = int((o["area_true"][rows[best]] + o["area_pred"][cols[best]] - inter[best]).sum())
    unmatched_true = np.setdiff1d(np.arange(1, o["n_true"] + 1), rows[best])
    u += int(o["area_true"][unmatched_true].sum())
    unused = np.setdiff1d(np.arange(1, o["n_pred"] + 1), cols[best])
    u += int(o["area_pred"][unused].sum())
    return c / u


def instance_metrics(true: Any, pred: Any, thresholds: Sequence[float] = THRESHOLDS) -> dict[str, float]:
    """One image's row: AP per threshold, mean AP, F1/precision/recall/PQ/SQ/RQ at the first, AJI, counts.

    Keys: ``ap_0.50`` … ``ap_0.95``, ``mean_ap``, ``f1``, ``precision``, ``recall``, ``pq``,
    ``sq``, ``rq`` (at ``thresholds[0]``, 0.5 by default), ``aji``, ``n_true``, ``n_pred``,
    ``count_error``, and ``tp_0.50``, ``fp_0.50``, ``fn_0.50`` … for pooling in :func:`summarise`.

    Example:
        >>> true = np.zeros((6, 6), int); true[:3, :3] = 1; true[3:, 3:] = 2
        >>> row = instance_metrics(true, true)
        >>> row["mean_ap"], row["aji"], row["count_error"]
        (1.0, 1.0, 0.0)
    """
    thr = _thresholds(thresholds)
    o = overlaps(true, pred)
    m = _match(o, thr)
    row: dict[str, float] = {}
    for i, t in enumerate(m["thresholds"]):
        row[f"ap_{t:.2f}"] = m["ap"][i]
    row["mean_ap"] = m["mean_ap"]
    for key in ("f1", "precision", "recall", "pq", "sq"):
        row[key] = m[key][0]
    row["rq"] = m["f1"][0]
    row["aji"] = _aji(o)
    row["n_true"] = float(m["n_true"])
    row["n_pred"] = float(m["n_pred"])
    row["count_error"] = (m["n_pred"] - m["n_true"]) / max(m["n_true"], 1)
    for i, t in enumerate(m["thresholds"]):
        for key in ("tp", "fp", "fn"):
            row[f"{key}_{t:.2f}"] = float(m[key][i])
    return row


def summarise(rows: Iterable[Mapping[str, float]]) -> dict[str, float]:
    """Summary over images: the mean of every column, and AP / F1 pooled over all objects.

    ``mean_<key>`` is the mean over images (each image weighs the same); ``pooled_ap_<t>`` and
    ``pooled_f1_<t>`` add up TP, FP and FN over images first (each object weighs the same, as
    StarDist's ``matching_dataset`` and the DSB2018 leaderboard's per-image mean differ);
    ``mean_abs_count_error`` is the mean of ``|count_error|``.

    Example:
        >>> s = summarise([{"ap_0.50": 1.0, "tp_0.50": 2.0, "fp_0.50": 0.0, "fn_0.50": 0.0, "count_error": 0.0},
        ...                {"ap_0.50": 0.0, "tp_0.50": 0.0, "fp_0.50": 1.0, "fn_0.50": 0.0, "count_error": 1.0}])
        >>> s["mean_ap_0.50"], round(s["pooled_ap_0.50"], 4), s["mean_abs_count_error"]
        (0.5, 0.6667, 0.5)
    """
    rows = list(rows)
    if not rows:
        return {}
    out: dict[str, float] = {"n_images": float(len(rows))}
    for key in rows[0]:
        out[f"mean_{key}"] = float(np.mean([r[key] for r in rows]))
    for key in rows[0]:
        if key.startswith("tp_"):
            t = key[3:]
            tp, fp, fn = (sum(r[f"{k}_{t}"] for r in rows) for k in ("tp", "fp", "fn"))
            empty = tp + fp + fn == 0
            out[f"pooled_ap_{t}"] = 1.0 if empty else _ratio(tp, tp + fp + fn)
            out[f"pooled_f1_{t}"] = 1.0 if empty else _ratio(2 * tp, 2 * tp + fp + fn)
    if "count_error" in rows[0]:
        out["mean_abs_count_error"] = float(np.mean([abs(r["count_error"]) for r in rows]))
    return out
