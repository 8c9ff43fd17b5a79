"""Synthetic look-alikes of the datasets medseg targets, written in each dataset's own layout.

None of the real datasets can be downloaded on our machines; these stand in for them in tests
and the demo. Each kind is seeded and deterministic (case ``i`` of seed ``s`` is the same
whatever ``n``), and is read back by the layout's own reader:

Each kind is one module registering a :class:`SynthKind` in :data:`SYNTH_KINDS`:

========== ====================================== =============================== ==============
kind       looks like                             layout (reader)                 default size
========== ====================================== =============================== ==============
vessel2d   DRIVE colour fundus + vessels + FOV    DRIVE ``training/``, ``test/``  192 x 192
vessel3d   MSD Task08 hepatic vessels in CT       MSD ``dataset.json``            96 x 96 x 48
lung       MSD Task06 chest CT, lungs + nodules   MSD ``dataset.json``            96 x 96 x 48
cell       DSB2018 fluorescence nuclei            DSB ``stage1_train/<id>/``      128 x 128
cell3d     dense 3D nuclei, instance id maps      folders ``images/ labels/``     64 x 64 x 24
========== ====================================== =============================== ==============

Example:
    >>> import tempfile
    >>> from pipeline.data.layouts.drive import read_drive
    >>> root = make_dataset("vessel2d", tempfile.mkdtemp(), n=4, seed=0, size=32)
    >>> len(read_drive(root).items), len(read_drive(root).test)
    (4, 1)
"""

from __future__ import annotations

import inspect
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.data.synth import cell, lung, vessel2d, vessel3d  # noqa: F401  (each registers its kind)
from pipeline.data.synth._kinds import SynthKind
from pipeline.data.synth._kinds import case_rng as _stream_rng
from pipeline.errors import DataError
from pipeline.registry import SYNTH_KINDS

__all__ = ["make_dataset", "SYNTH_KINDS", "SynthKind", "case_rng"]


def case_rng(kind: str, seed: int, index: int) -> np.random.Generator:
    """The generator of case ``index`` of ``kind``: independent of ``n`` and of the other cases."""
    return _stream_rng(SYNTH_KINDS.get(kind).stream, seed, index)


def _prepare(out: Path, spec: SynthKind, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise DataError(f"{out}: exists and is not a folder")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise DataError(f"{out}: folder is not empty; choose another or pass --overwrite")
        for name in spec.owned:  # only what this generator writes: other files stay
            target = out / name
            if target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()
    out.mkdir(parents=True, exist_ok=True)


def _size(size: int | Sequence[int] | None, dims: int, default: int | tuple[int, ...]) -> int | tuple[int, ...]:
    if size is None:
        return default
    if dims == 2:
        value = size[0] if isinstance(size, (list, tuple)) and len(size) == 1 else size
        if isinstance(value, bool) or not isinstance(value, int) or value < 32:
            raise ValueError(f"size for a 2D kind must be one int >= 32, got {size!r}")
        return value
    sizes = (size,) * 3 if isinstance(size, int) else tuple(size)
    if len(sizes) != 3 or any(not isinstance(s, int) or s < 16 for s in sizes):
        raise ValueError(f"size for a 3D kind must be an int or three ints >= 16, got {size!r}")
    return sizes


def make_dataset(
    kind: str,
    out: str | Path,
    n: int,
    seed: int = 0,
    *,
    size: int | Sequence[int] | None = None,
    overwrite: bool = False,
    **options: Any,
) -> Path:
    """Write ``n`` synthetic cases of ``kind`` under ``out`` in the real dataset's layout.

    Args:
        kind: a name registered in :data:`SYNTH_KINDS` (``medseg synth --help`` lists them).
        out: dataset folder; must be empty or absent unless ``overwrite``.
        n: number of labelled (training) cases.
        seed: dataset seed.
        size: image size: one int (2D, 3D cube) or three ints (3D ``X Y Z``); default per kind.
        overwrite: write into a non-empty folder, first removing only the files and folders
            this kind writes (e.g. ``training/`` and ``test/``).
        options: the kind's own, e.g. ``n_test`` (``vessel2d``: cases in DRIVE's ``test/``,
            default ``max(1, n // 4)``) and ``nodules`` (``lung``: add nodules as class 2).

    Returns:
        ``out`` as a ``Path``; read it with ``data.format`` = ``SYNTH_KINDS.get(kind).format``.

    Raises:
        ValueError: for an unknown kind, ``n < 1`` or a bad size.
        DataError: if ``out`` is not empty and ``overwrite`` is false.
    """
    spec = SYNTH_KINDS.get(kind)
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive int, got {n!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    shape = _size(size, spec.dims, spec.default_size)
    try:
        inspect.signature(spec.write).bind(out, n, None, shape, **options)
    except TypeError:
        raise ValueError(f"kind {kind!r} takes no option(s) {', '.join(map(repr, options))}") from None
    out = Path(out)
    created = not out.exists()
    _prepare(out, spec, overwrite)
    try:
        spec.write(out, n, lambda i: _stream_rng(spec.stream, seed, i), shape, **options)
    except BaseException:
        if created:  # a failed (or interrupted) first write leaves no half-written dataset behind
            shutil.rmtree(out, ignore_errors=True)
        raise
    return out
