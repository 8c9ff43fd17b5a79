"""``medseg select RUN_A RUN_B ...``: choose a configuration or ensemble on out-of-fold Dice.

Every cross-validation run (:mod:`pipeline.engines.crossval`) and every two-run ensemble is scored
on the same out-of-fold (OOF) cases: a run by its OOF label maps, an ensemble by the mean of the
two runs' OOF probabilities (``medseg cv --probabilities``; a pair where a run lacks them is listed
as not available). The score of a case is its Dice averaged over foreground classes; the table
gives mean ± sd over cases and over folds. The runs must share their folds (same validation
cases in each fold), since comparing runs validated on different cases compares the cases.

The best candidate (highest mean Dice; on a tie the one with fewer members, then the first
listed) gets post-processing chosen on its OOF predictions
(:func:`pipeline.engines.postprocessing.choose_postprocessing`), and the recommendation is
written as JSON::

    {"members": ["/abs/RUN_A/fold_0/checkpoints/best.pt", ...], "runs": ["RUN_A"],
     "postprocessing": {...}, "expected": {"metric": "dice", "mean": 0.83, "std": 0.05, ...},
     "table": [...]}

``medseg infer --plan FILE`` (and ``evaluate --plan``) runs exactly those members with that
post-processing.
"""

from __future__ import annotations

import itertools
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.engines.crossval import oof_cases, oof_index, read_oof_labels, read_oof_probabilities
from pipeline.engines.inferer import to_labels
from pipeline.engines.members import checkpoint_paths
from pipeline.engines.postprocessing import apply_postprocessing, choose_postprocessing
from pipeline.engines.predictor import _load_reference
from pipeline.errors import MedsegError
from pipeline.io import atomic_write_text
from pipeline.metrics import overlap_metrics

__all__ = ["select_runs", "case_dice", "check_same_folds"]


def case_dice(pred: np.ndarray, label: np.ndarray, classes: Sequence[int]) -> float:
    """Dice averaged over ``classes`` (1 for a class absent from both)."""
    return float(np.mean([overlap_metrics(pred == c, label == c)["dice"] for c in classes]))


def check_same_folds(runs: Sequence[Path]) -> dict[int, list[str]]:
    """The folds the runs share (fold -> validation cases).

    Raises:
        MedsegError: a run without finished folds, or runs whose folds differ (named).
    """
    first: dict[int, list[str]] | None = None
    for run in runs:
        folds = oof_cases(run)
        if not folds:
            raise MedsegError(f"{run}: no finished fold; train it with medseg cv -c CONFIG")
        if first is None:
            first = folds
            continue
        if folds.keys() != first.keys():
            raise MedsegError(
                f"{run}: finished folds {sorted(folds)} differ from {runs[0]}'s {sorted(first)}; "
                "select compares runs on the same folds (finish them with medseg cv)"
            )
        for f in first:
            if folds[f] != first[f]:
                raise MedsegError(
                    f"{run}: fold {f} validates on other cases than {runs[0]}'s fold {f}; runs must be split "
                    "alike (same cases, data.num_folds and data.split_seed)"
                )
    assert first is not None
    return first


def _stats(values: Sequence[float]) -> dict[str, float]:
    arr = np.asarray(values, dtype=np.float64)
    return {"mean": float(arr.mean()), "std": float(arr.std())}


def select_runs(runs: Sequence[str | os.PathLike], output: str | os.PathLike) -> dict[str, Any]:
    """Score every run and two-run ensemble on OOF Dice, print the table, write the recommendation.

    Raises:
        MedsegError: fewer than one run, runs with different folds, classes or label values.
    """
    paths = [Path(r) for r in runs]
    if len(set(map(str, paths))) != len(paths):
        raise MedsegError("select: a run is named twice")
    folds = check_same_folds(paths)
    fold_of = {case: f for f, cases in folds.items() for case in cases}
    indexes = [oof_index(p) for p in paths]
    configs = [next(iter(ix.values()))[0] for ix in indexes]
    for path, config in zip(paths[1:], configs[1:], strict=True):
        if (config.num_classes, config.label_values) != (configs[0].num_classes, configs[0].label_values):
            raise MedsegError(
                f"{path}: {config.num_classes} classes with label values {config.label_values}; {paths[0]} has "
                f"{configs[0].num_classes} with {configs[0].label_values}: runs must predict the same classes"
            )
    classes = list(range(1, configs[0].num_classes))
    names = [p.name or str(p) for p in paths]
    candidates: list[tuple[int, ...]] = [(i,) for i in range(len(paths))]
    candidates += list(itertools.combinations(range(len(paths)), 2))
    scores: dict[tuple[int, ...], dict[str, float]] = {c: {} for c in candidates}
    missing_probs: set[int] = set()
    cases = sorted(fold_of)
    references: dict[str, tuple[np.ndarray, Any]] = {}
    print(f"select: scoring {len(candidates)} candidates on {len(cases)} out-of-fold cases of {len(folds)} folds")
    for case in cases:
        config, item, _ = indexes[0][case]
        label, spacing, _ = _load_reference(config, item)
        references[case] = (label, spacing)
        labels = [read_oof_labels(ix[case][0], ix[case][2]) for ix in indexes]
        for i, pred in enumerate(labels):
            scores[(i,)][case] = case_dice(pred, label, classes)
        pairs = [c for c in candidates if len(c) == 2 and not (set(c) & missing_probs)]
        if not pairs:
            continue
        probs: dict[int, Any] = {}
        for i in sorted({i for c in pairs for i in c}):
            probs[i] = read_oof_probabilities(indexes[i][case][0], indexes[i][case][2])
            if probs[i] is None:
                missing_probs.add(i)
        for pair in pairs:
            if set(pair) & missing_probs:
                continue
            mean = (probs[pair[0]] + probs[pair[1]]) / 2
            scores[pair][case] = case_dice(to_labels(mean, dim=0).numpy(), label, classes)
    rows = []
    for cand in candidates:
        name = " + ".join(names[i] for i in cand)
        if len(scores[cand]) != len(cases):
            rows.append({"candidate": name, "members": [str(paths[i]) for i in cand], "available": False})
            continue
        values = [scores[cand][c] for c in cases]
        fold_means = [float(np.mean([scores[cand][c] for c in folds[f]])) for f in sorted(folds)]
        rows.append(
            {
                "candidate": name,
                "members": [str(paths[i]) for i in cand],
                "available": True,
                "dice_cases": _stats(values),
                "dice_folds": _stats(fold_means),
            }
        )
    ranked = [(r, c) for r, c in zip(rows, candidates, strict=True) if r["available"]]
    best_row, best = max(ranked, key=lambda rc: (rc[0]["dice_cases"]["mean"], -len(rc[1]), -candidates.index(rc[1])))
    print(_table(rows, best_row))
    if missing_probs:
        print(
            f"select: no out-of-fold probabilities in {', '.join(str(paths[i]) for i in sorted(missing_probs))}; "
            "their ensembles need medseg cv --probabilities"
        )
    spec, after = _postprocessing_for(best, indexes, references, cases, classes)
    members = [str(m.resolve()) for i in best for m in checkpoint_paths(paths[i])]
    plan = {
        "members": members,
        "runs": [str(paths[i].resolve()) for i in best],
        "postprocessing": spec,
        "expected": {
            "metric": "dice",
            "mean": after["mean"],
            "std": after["std"],
            "n_cases": len(cases),
            "over": "out-of-fold cases, mean over foreground classes",
            "without_postprocessing": best_row["dice_cases"],
        },
        "folds": {str(f): c for f, c in folds.items()},
        "table": rows,
    }
    atomic_write_text(Path(output), json.dumps(plan, indent=2) + "\n")
    kept = ", ".join(f"{s['op']} (class {s['class']})" for s in spec["steps"]) or "none"
    print(
        f"select: recommended {best_row['candidate']} ({len(members)} checkpoints), post-processing: {kept}; "
        f"expected Dice {after['mean']:.4f} ± {after['std']:.4f} over {len(cases)} OOF cases; "
        f"wrote {output} (medseg infer --plan {output})"
    )
    return plan


def _postprocessing_for(
    best: tuple[int, ...],
    indexes: Sequence[Mapping[str, Any]],
    references: Mapping[str, tuple[np.ndarray, Any]],
    cases: Sequence[str],
    classes: Sequence[int],
) -> tuple[dict[str, Any], dict[str, float]]:
    """Post-processing chosen on the best candidate's OOF labels, and its Dice after it."""
    preds = []
    for case in cases:
        if len(best) == 1:
            config, _, path = indexes[best[0]][case]
            preds.append(read_oof_labels(config, path))
        else:
            probs = [read_oof_probabilities(indexes[i][case][0], indexes[i][case][2]) for i in best]
            preds.append(to_labels(sum(probs) / len(probs), dim=0).numpy())
    triples = [(p, references[c][0], references[c][1]) for p, c in zip(preds, cases, strict=True)]
    spec = choose_postprocessing(triples, classes)
    after = [case_dice(apply_postprocessing(p, spec, s), r, classes) for p, r, s in triples]
    return spec, _stats(after)


def _table(rows: Sequence[Mapping[str, Any]], best: Mapping[str, Any]) -> str:
    header = ["candidate", "OOF Dice (cases)", "OOF Dice (folds)", ""]
    lines = []
    for r in rows:
        if not r["available"]:
            lines.append([r["candidate"], "n/a (no OOF probabilities)", "", ""])
            continue
        c, f = r["dice_cases"], r["dice_folds"]
        mark = "<- best" if r is best else ""
        lines.append([r["candidate"], f"{c['mean']:.4f} ± {c['std']:.4f}", f"{f['mean']:.4f} ± {f['std']:.4f}", mark])
    widths = [max(len(row[i]) for row in [header, *lines]) for i in range(len(header))]
    form = "  ".join(f"{{:<{w}}}" for w in widths)
    return "\n".join(form.format(*row).rstrip() for row in [header, *lines])
