"""What every synthetic kind declares, and the helpers their writers share.

A kind is one module that registers a :class:`SynthKind` in
:data:`pipeline.registry.SYNTH_KINDS`; :func:`pipeline.data.synth.make_dataset` does the rest
(argument checks, the output folder, sizes).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.io import write_image

__all__ = ["SynthKind", "case_rng", "write_picture"]


@dataclass(frozen=True)
class SynthKind:
    """One synthetic look-alike.

    Attributes:
        format: the ``data.format`` that reads what it writes.
        dims: 2 or 3.
        default_size: one int (2D) or three ints (3D, ``X Y Z``).
        owned: the files and folders it writes under the dataset root (``--overwrite`` removes
            only these).
        stream: its random stream: case ``i`` of seed ``s`` is drawn from
            ``(s, stream, i)``, so a kind's data never changes when another kind is added.
        write: ``write(out, n, rng, size, **options)``; ``rng(i)`` gives case ``i``'s generator.
    """

    format: str
    dims: int
    default_size: int | tuple[int, ...]
    owned: tuple[str, ...]
    stream: int
    write: Callable[..., Any]


def case_rng(stream: int, seed: int, index: int) -> np.random.Generator:
    """The generator of one case: independent of ``n`` and of the other cases."""
    return np.random.default_rng([int(seed), int(stream), int(index)])


def write_picture(path: Path, picture: np.ndarray) -> None:
    """Write a generator's ``H W [C]`` picture (rows first, as drawn) in :mod:`pipeline.io`'s ``W H`` order."""
    write_image(path, np.swapaxes(picture, 0, 1))
