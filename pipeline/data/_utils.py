"""Small helpers shared by the data modules."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

NIFTI_SUFFIXES = (".nii.gz", ".nii")
IMAGE_2D_SUFFIXES = (".png", ".tif", ".tiff", ".gif", ".jpg", ".jpeg", ".bmp")
SUFFIXES = NIFTI_SUFFIXES + IMAGE_2D_SUFFIXES


def list_some(names: Iterable[object], first: int = 5) -> str:
    """``"a, b, c (+12 more)"``: the first few names and how many were left out."""
    names = [str(n) for n in names]
    head = ", ".join(names[:first])
    return head + (f" (+{len(names) - first} more)" if len(names) > first else "")


def split_suffix(name: str) -> tuple[str, str]:
    """Split a file name into stem and suffix, keeping compound suffixes (``x.nii.gz`` → ``x``, ``.nii.gz``)."""
    lower = name.lower()
    for suffix in SUFFIXES:
        if lower.endswith(suffix):
            return name[: -len(suffix)], name[-len(suffix) :]
    path = Path(name)
    return path.stem, path.suffix


def is_hidden(path: Path) -> bool:
    """macOS resource forks (``._x.nii.gz``) and dot files are never data."""
    return path.name.startswith(".")


def data_files(folder: Path) -> list[Path]:
    """The sorted data files directly inside ``folder`` (hidden files skipped)."""
    return sorted(p for p in folder.iterdir() if p.is_file() and not is_hidden(p))
