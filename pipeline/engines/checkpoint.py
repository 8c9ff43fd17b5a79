"""Checkpoints that are written atomically and read without running code.

A checkpoint is a plain mapping of tensors, numbers, strings, lists and dicts, saved with
``torch.save`` and loaded with ``torch.load(weights_only=True)``, so a checkpoint from a stranger
cannot execute code. Writes go to a temporary file in the same folder, are flushed to disk, and
then renamed over the target; the previous file is kept as ``<name>.prev.pt`` so a checkpoint
damaged later (a full disk during a copy, a truncated download) still leaves one to resume from.
"""

from __future__ import annotations

import io
import os
import random
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipeline.config import plain
from pipeline.errors import MedsegError
from pipeline.io import atomic_write

__all__ = ["save_checkpoint", "load_checkpoint", "rng_state", "set_rng_state", "FORMAT"]

FORMAT = "medseg-checkpoint-v1"


def save_checkpoint(state: dict[str, Any], path: str | os.PathLike, keep_previous: bool = True) -> Path:
    """Write ``state`` to ``path`` atomically (temporary file, fsync, rename).

    Args:
        state: the checkpoint mapping (``format`` is added).
        path: target file.
        keep_previous: move an existing ``path`` to ``<stem>.prev.pt`` first.

    Returns:
        The path written.
    """
    path = Path(path)
    if "config" in state:  # a resolved (read-only) config is stored as plain dicts and lists
        state = {**state, "config": plain(state["config"])}
    # serialised in memory first: torch's zip writer reports a short write (a full disk, a file-size
    # limit) as an opaque RuntimeError, a plain write as the OSError that names the problem
    buffer = io.BytesIO()
    torch.save({"format": FORMAT, **state}, buffer)
    with atomic_write(path) as fh:
        fh.write(buffer.getbuffer())
        if keep_previous and path.exists():
            os.replace(path, previous_path(path))
    return path


def previous_path(path: str | os.PathLike) -> Path:
    path = Path(path)
    return path.with_name(path.stem + ".prev" + path.suffix)


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint with ``weights_only=True``.

    Raises:
        MedsegError: the file is missing, truncated/corrupt, holds objects that are not plain data
            (a pickle that would import or call something), or is not a medseg checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise MedsegError(f"{path}: checkpoint not found")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # torch raises RuntimeError/UnpicklingError/EOFError/... for damaged files
        if "Weights only load failed" in str(err):
            found = re.search(r"GLOBAL ([\w.]+)", str(err))
            what = f" ({found.group(1)})" if found else ""
            raise MedsegError(
                f"{path}: refused: it holds Python objects{what} that could run code when loaded; "
                "a medseg checkpoint holds only tensors and plain values"
            ) from None
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        prev = previous_path(path)
        hint = f"; the previous checkpoint is {prev}" if prev.is_file() and prev != path else ""
        raise MedsegError(f"{path}: checkpoint is truncated or corrupt ({reason[:160]}){hint}") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise MedsegError(f"{path}: not a medseg checkpoint (expected format {FORMAT!r})")
    return state


def rng_state() -> dict[str, Any]:
    """The state of Python's, NumPy's and torch's global generators, in a weights-only-safe form."""
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": {
            "keys": torch.from_numpy(np_state[1].astype(np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore generators saved by :func:`rng_state`."""
    random.setstate(_tuplify(state["python"]))
    n = state["numpy"]
    np.random.set_state(
        ("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"])
    )
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _tuplify(value: Any) -> Any:
    # torch's weights-only unpickler may give lists back where tuples went in
    if isinstance(value, (list, tuple)):
        return tuple(_tuplify(v) for v in value)
    return value
