"""Synthetic look-alikes of the datasets medseg targets, written in each dataset's own layout.

None of the real datasets can be downloaded on our machines; these stand in for them in tests
and the demo. Each kind is seeded and deterministic (case ``i`` of seed ``s`` is the same
whatever ``n``), and is read back by the layout's own reader:

========== ====================================== =============================== ==============
kind       looks like                             layout (reader)                 default size
========== ====================================== =============================== ==============
vessel2d   DRIVE colour fundus + vessels + FOV    DRIVE ``training/``, ``test/``  192 x 192
vessel3d   MSD Task08 hepatic vessels in CT       MSD ``dataset.json``            96 x 96 x 48
lung       MSD Task06 chest CT, lungs + nodules   MSD ``dataset.json``            96 x 96 x 48
cell       DSB2018 fluorescence nuclei            DSB ``stage1_train/<id>/``      128 x 128
========== ====================================== =============================== ==============

Example:
    >>> import tempfile
    >>> from pipeline.data.layouts.drive import read_drive
    >>> root = make_dataset("vessel2d", tempfile.mkdtemp(), n=4, seed=0, size=32)
    >>> len(read_drive(root).items), len(read_drive(root).test)
    (4, 1)
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from pipeline.data.synth._ct import write_msd
from pipeline.data.synth.cell import nuclei
from pipeline.data.synth.lung import chest_ct
from pipeline.data.synth.vessel2d import fundus
from pipeline.data.synth.vessel3d import hepatic_ct
from pipeline.errors import DataError
from pipeline.io import write_image

__all__ = ["make_dataset", "KINDS", "FORMAT_OF", "case_rng"]

KINDS = ("vessel2d", "vessel3d", "lung", "cell")
FORMAT_OF = {"vessel2d": "drive", "vessel3d": "msd", "lung": "msd", "cell": "dsb2018"}
"""The ``data.format`` that reads each kind."""
_OWNED = {
    "vessel2d": ("training", "test"),
    "vessel3d": ("dataset.json", "imagesTr", "labelsTr", "imagesTs"),
    "lung": ("dataset.json", "imagesTr", "labelsTr", "imagesTs"),
    "cell": ("stage1_train",),
}


def case_rng(kind: str, seed: int, index: int) -> np.random.Generator:
    """The generator of one case: independent of ``n`` and of the other cases."""
    return np.random.default_rng([int(seed), KINDS.index(kind), int(index)])


def _write_picture(path: Path, picture: np.ndarray) -> None:
    """Write a generator's ``H W [C]`` picture (rows first, as drawn) in :mod:`pipeline.io`'s ``W H`` order."""
    write_image(path, np.swapaxes(picture, 0, 1))


def _prepare(out: Path, kind: str, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise DataError(f"{out}: exists and is not a folder")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise DataError(f"{out}: folder is not empty; choose another or pass --overwrite")
        for name in _OWNED[kind]:  # only what this generator writes: other files stay
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
    n_test: int | None = None,
    nodules: bool = True,
    overwrite: bool = False,
) -> Path:
    """Write ``n`` synthetic cases of ``kind`` under ``out`` in the real dataset's layout.

    Args:
        kind: one of :data:`KINDS`.
        out: dataset folder; must be empty or absent unless ``overwrite``.
        n: number of labelled (training) cases.
        seed: dataset seed.
        size: image size: one int (2D, 3D cube) or three ints (3D ``X Y Z``); default per kind.
        n_test: ``vessel2d`` only: cases in DRIVE's ``test/`` (default ``max(1, n // 4)``).
        nodules: ``lung`` only: add nodules as class 2.
        overwrite: write into a non-empty folder, first removing only the files and folders
            this kind writes (e.g. ``training/`` and ``test/``).

    Returns:
        ``out`` as a ``Path``; read it with ``data.format`` = :data:`FORMAT_OF` ``[kind]``.

    Raises:
        ValueError: for an unknown kind, ``n < 1`` or a bad size.
        DataError: if ``out`` is not empty and ``overwrite`` is false.
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {list(KINDS)}, got {kind!r}")
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive int, got {n!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    out = Path(out)
    _prepare(out, kind, overwrite)
    if kind == "vessel2d":
        side = _size(size, 2, 192)
        n_test = max(1, n // 4) if n_test is None else n_test
        if isinstance(n_test, bool) or not isinstance(n_test, int) or n_test < 0:
            raise ValueError(f"n_test must be a non-negative int, got {n_test!r}")
        first = max(21, n_test + 1)  # DRIVE numbers its test images 01-20 and training 21-40
        jobs = [("training", first + i, i) for i in range(n)] + [("test", i + 1, n + i) for i in range(n_test)]
        for part, num, index in jobs:
            rgb, vessels, fov = fundus(case_rng(kind, seed, index), side)
            _write_picture(out / part / "images" / f"{num:02d}_{part}.tif", rgb)
            _write_picture(out / part / "1st_manual" / f"{num:02d}_manual1.gif", vessels)
            _write_picture(out / part / "mask" / f"{num:02d}_{part}_mask.gif", fov)
    elif kind == "cell":
        side = _size(size, 2, 128)
        for i in range(n):
            rng = case_rng(kind, seed, i)
            image, instances = nuclei(rng, side)
            case = rng.bytes(32).hex()
            rgba = np.dstack([image, image, image, np.full_like(image, 255)])
            _write_picture(out / "stage1_train" / case / "images" / f"{case}.png", rgba)
            for k in range(1, int(instances.max()) + 1):
                mask = (instances == k).astype(np.uint8) * 255
                _write_picture(out / "stage1_train" / case / "masks" / f"{rng.bytes(32).hex()}.png", mask)
    else:
        shape = _size(size, 3, (96, 96, 48))
        cases = []
        for i in range(n):
            rng = case_rng(kind, seed, i)
            cases.append(hepatic_ct(rng, shape) if kind == "vessel3d" else chest_ct(rng, shape, nodules=nodules))
        if kind == "vessel3d":
            write_msd(out, "HepaticVessel", "hepaticvessel", {"0": "background", "1": "vessel"}, cases)
        else:
            write_msd(out, "Lung", "lung", {"0": "background", "1": "lung", "2": "nodule"}, cases)
    return out
