"""Small helpers shared by the data modules."""

from __future__ import annotations

from pathlib import Path

from pipeline.io import file_kind, list_folder

__all__ = ["is_hidden", "data_files"]


def is_hidden(path: Path) -> bool:
    """macOS resource forks (``._x.nii.gz``) and dot files are never data."""
    return path.name.startswith(".")


def data_files(folder: Path) -> list[Path]:
    """The sorted data files directly inside ``folder`` (hidden files skipped), DICOM series
    folders (one series' slices, :func:`pipeline.io.file_kind` ``"dicom"``) among them.

    Raises:
        DataError: the folder holds dangling symbolic links (named), which would otherwise drop
            cases without a word.
    """
    return [p for p in list_folder(folder) if p.is_file() or (p.is_dir() and file_kind(p) == "dicom")]
