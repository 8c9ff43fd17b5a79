"""Post-processing chosen on cross-validation (nnU-Net's rule), and applied by ``infer`` / ``evaluate``.

Two candidates per foreground class, tried in this order on the out-of-fold (OOF) predictions of a
cross-validated run (:func:`choose_postprocessing`):

1. ``keep_largest``: keep only the largest connected component of the class;
2. ``remove_small``: remove components smaller than the smallest component of that class found in
   any reference label (the training labels: every OOF case is a training case of the other folds),
   measured in mm³ (mm² in 2D) so that cases of different spacing share one threshold. Tried only
   when ``keep_largest`` was rejected (after keeping the largest there is nothing small left).

A step is kept only if it raises the class's mean OOF Dice over all cases (strictly, as nnU-Net's
``determine_postprocessing`` does); the voxels it removes become background. The result is
``RUN/postprocessing.json``::

    {"version": 1, "steps": [{"class": 1, "op": "keep_largest"}], "metric": "dice",
     "evaluation": {"1": {"baseline": 0.81, "keep_largest": 0.84, "kept": "keep_largest"}}}

Components are labelled with ``scipy.ndimage.label`` at full connectivity (8 in 2D, 26 in 3D, as
MONAI's ``KeepLargestConnectedComponent`` defaults to). Our own rather than MONAI's
``KeepLargestConnectedComponent`` / ``RemoveSmallObjects``: those need scikit-image (not a
dependency), label the mask once per transform, and ``RemoveSmallObjects`` measures in voxels
unless given the spacing per call; here one labelling serves both steps and sizes are physical.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from pipeline.errors import MedsegError
from pipeline.io import atomic_write_text
from pipeline.metrics import overlap_metrics

__all__ = [
    "POSTPROCESSING_JSON",
    "apply_postprocessing",
    "choose_postprocessing",
    "component_sizes",
    "load_postprocessing",
    "smallest_components",
    "write_postprocessing",
]

POSTPROCESSING_JSON = "postprocessing.json"
VERSION = 1
OPS = ("keep_largest", "remove_small")


def _components(mask: np.ndarray) -> tuple[np.ndarray, int]:
    structure = ndimage.generate_binary_structure(mask.ndim, mask.ndim)
    return ndimage.label(mask, structure=structure)


def component_sizes(mask: np.ndarray, spacing: Sequence[float] | None = None) -> np.ndarray:
    """Sizes (mm³ / mm², from ``spacing``; voxels when None) of the connected components of a mask.

    Example:
        >>> m = np.zeros((6, 6), bool); m[0, 0] = True; m[3:5, 3:5] = True
        >>> component_sizes(m, (0.5, 0.5)).tolist()
        [0.25, 1.0]
    """
    labelled, n = _components(mask)
    if n == 0:
        return np.zeros(0)
    voxel = float(np.prod(spacing)) if spacing is not None else 1.0
    return np.bincount(labelled.ravel(), minlength=n + 1)[1:] * voxel


def _apply_step(labels: np.ndarray, step: Mapping[str, Any], spacing: Sequence[float] | None) -> np.ndarray:
    mask = labels == step["class"]
    labelled, n = _components(mask)
    if n <= 1 and step["op"] == "keep_largest":
        return labels
    if n == 0:
        return labels
    counts = np.bincount(labelled.ravel(), minlength=n + 1)
    counts[0] = 0
    if step["op"] == "keep_largest":
        drop = np.ones(n + 1, bool)
        drop[int(np.argmax(counts))] = False
    else:
        voxel = float(np.prod(spacing)) if spacing is not None else 1.0
        drop = counts * voxel < float(step["min_size"])
    drop[0] = False
    if not drop.any():
        return labels
    out = labels.copy()
    out[drop[labelled]] = 0
    return out


def apply_postprocessing(
    labels: np.ndarray, spec: Mapping[str, Any] | None, spacing: Sequence[float] | None = None
) -> np.ndarray:
    """Apply the steps of a post-processing ``spec`` to a class-index map (a new array when changed).

    Example:
        >>> lab = np.zeros((5, 5), np.uint8); lab[0, 0] = 1; lab[2:5, 2:5] = 1
        >>> apply_postprocessing(lab, {"steps": [{"class": 1, "op": "keep_largest"}]})[0, 0]
        np.uint8(0)
    """
    if not spec:
        return labels
    for step in spec.get("steps", ()):
        labels = _apply_step(labels, step, spacing)
    return labels


def smallest_components(
    references: Sequence[tuple[np.ndarray, Sequence[float] | None]], classes: Sequence[int]
) -> dict[int, float]:
    """Per class, the size (mm³) of the smallest connected component in any reference label; classes
    never present are left out."""
    out: dict[int, float] = {}
    for label, spacing in references:
        for c in classes:
            sizes = component_sizes(label == c, spacing)
            if sizes.size:
                out[c] = min(out.get(c, np.inf), float(sizes.min()))
    return out


def _mean_dice(preds: Sequence[np.ndarray], refs: Sequence[np.ndarray], c: int) -> float:
    return float(np.mean([overlap_metrics(p == c, r == c)["dice"] for p, r in zip(preds, refs, strict=True)]))


def choose_postprocessing(
    cases: Sequence[tuple[np.ndarray, np.ndarray, Sequence[float] | None]],
    classes: Sequence[int],
    min_sizes: Mapping[int, float] | None = None,
) -> dict[str, Any]:
    """Pick the post-processing steps that raise each class's mean OOF Dice (see the module docstring).

    Args:
        cases: ``(prediction, reference, spacing)`` class-index maps of every OOF case.
        classes: foreground classes to consider.
        min_sizes: the ``remove_small`` threshold per class (default: :func:`smallest_components`
            of the references).

    Returns:
        The spec (``steps``) with the evaluation that decided it (per class: the baseline Dice, the
        Dice with each candidate tried, and which step was kept, or None).

    Raises:
        MedsegError: no cases.
    """
    if not cases:
        raise MedsegError("post-processing: no out-of-fold predictions to choose it on")
    preds = [np.asarray(p) for p, _, _ in cases]
    refs = [np.asarray(r) for _, r, _ in cases]
    spacings = [s for _, _, s in cases]
    if min_sizes is None:
        min_sizes = smallest_components(list(zip(refs, spacings, strict=True)), classes)
    steps: list[dict[str, Any]] = []
    evaluation: dict[str, dict[str, Any]] = {}
    for c in classes:
        base = _mean_dice(preds, refs, c)
        record: dict[str, Any] = {"baseline": base, "kept": None}
        candidates: list[dict[str, Any]] = [{"class": int(c), "op": "keep_largest"}]
        if c in min_sizes:
            candidates.append({"class": int(c), "op": "remove_small", "min_size": float(min_sizes[c])})
        for step in candidates:
            tried = [_apply_step(p, step, s) for p, s in zip(preds, spacings, strict=True)]
            score = _mean_dice(tried, refs, c)
            record[step["op"]] = score
            if score > base:
                steps.append(step)
                record["kept"] = step["op"]
                preds = tried
                break
        evaluation[str(c)] = record
    return {"version": VERSION, "metric": "dice", "steps": steps, "evaluation": evaluation}


def write_postprocessing(spec: Mapping[str, Any], path: str | os.PathLike) -> Path:
    """Write a spec as JSON, atomically."""
    return atomic_write_text(Path(path), json.dumps(spec, indent=2) + "\n")


def load_postprocessing(path: str | os.PathLike) -> dict[str, Any]:
    """Read and check a ``postprocessing.json`` (or the ``postprocessing`` of a plan).

    Raises:
        MedsegError: unreadable, not JSON, or steps this version does not know.
    """
    path = Path(path)
    try:
        spec = json.loads(path.read_text(encoding="utf-8"))
    except OSError as err:
        raise MedsegError(f"{path}: cannot read the post-processing file ({err.strerror})") from None
    except ValueError as err:
        raise MedsegError(f"{path}: not a post-processing JSON file ({err})") from None
    return check_postprocessing(spec, str(path))


def check_postprocessing(spec: Any, source: str) -> dict[str, Any]:
    """``spec`` if it is a post-processing spec of this version, else one line naming ``source``."""
    if not isinstance(spec, Mapping) or not isinstance(spec.get("steps"), list):
        raise MedsegError(f"{source}: a post-processing spec needs a list of 'steps'")
    if spec.get("version", VERSION) != VERSION:
        raise MedsegError(f"{source}: post-processing version {spec.get('version')!r}; this medseg reads {VERSION}")
    for i, step in enumerate(spec["steps"]):
        ok = isinstance(step, Mapping) and step.get("op") in OPS and isinstance(step.get("class"), int)
        if ok and step["op"] == "remove_small":
            ok = isinstance(step.get("min_size"), (int, float)) and step["min_size"] >= 0
        if not ok:
            raise MedsegError(
                f"{source}: step {i} {step!r} is not one of {{'class': C, 'op': 'keep_largest'}} or "
                "{'class': C, 'op': 'remove_small', 'min_size': MM3}"
            )
    return dict(spec)
