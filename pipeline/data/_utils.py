"""Small helpers shared by the data modules."""

from __future__ import annotations

from pathlib import Path

from pipeline.errors import DataError, list_some

__all__ = ["is_hidden", "data_files", "list_some"]


def is_hidden(path: Path) -> bool:
    """macOS resource forks (``._x.nii.gz``) and dot files are never data."""
    return path.name.startswith(".")


def data_files(folder: Path) -> list[Path]:
    """The sorted data files directly inside ``folder`` (hidden files skipped).

    Raises:
        DataError: the folder holds dangling symbolic links (named), which would otherwise drop
            cases without a word.
    """
    entries = sorted(p for p in folder.iterdir() if not is_hidden(p))
    dangling = [p.name for p in entries if p.is_symlink() and not p.exists()]
    if dangling:
        raise DataError(f"{folder}: {len(dangling)} dangling symbolic link(s): {list_some(dangling)}")
    return [p for p in entries if p.is_file()]
