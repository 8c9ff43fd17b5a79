"""Reading and writing label images, pairing label folders by case, atomic text output.

Formats: NIfTI (``.nii.gz``, ``.nii``) through nibabel, 2D images (``.png``, ``.gif``, ``.tif``,
``.tiff``) through Pillow. Arrays keep the file's axis order: NIfTI ``X Y [Z]`` as nibabel gives it
(spacing from the header zooms, in mm), images ``H W`` (spacing 1 per pixel), multi-page TIFF
``N H W``.

Label conventions, applied by :func:`read_label`:

- A 2D image file (PNG/GIF/TIFF) whose values are exactly {0, 255} is a binary mask saved for
  viewing (DRIVE's manual annotations and FOV masks are such GIFs) and is mapped to {0, 1}. Any
  other value set is kept as class indices, so a 0/1/2 PNG is read as three classes.
- A palette image whose used palette entries are grey is read as those grey levels (a GIF stores
  even a grey mask as a palette); a colour palette (VOC style) is read as the palette indices.
- NIfTI data stored as floats must hold whole numbers; negative labels are rejected.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.errors import ConfigError, DataError

NIFTI_SUFFIXES = (".nii.gz", ".nii")
IMAGE_SUFFIXES = (".png", ".gif", ".tif", ".tiff")
LABEL_SUFFIXES = NIFTI_SUFFIXES + IMAGE_SUFFIXES
"""File endings recognised as label images (case-insensitive); ``.nii.gz`` is one suffix."""

_SHOW = 5  # how many file names an error lists before "... and N more"


@dataclass(frozen=True)
class LabelImage:
    """A label image as read from disk.

    Attributes:
        array: integer class indices, ``H W`` or ``X Y Z`` (see the module docstring).
        spacing: size of one pixel/voxel along each axis of ``array``, in mm (1.0 for 2D images).
        affine: the NIfTI voxel-to-world affine (4x4), or None for 2D image formats.
        path: the file it was read from.
    """

    array: np.ndarray
    spacing: tuple[float, ...]
    affine: np.ndarray | None
    path: Path


@dataclass(frozen=True)
class CaseFiles:
    """The files of one case: prediction, reference label and optional field-of-view mask."""

    case: str
    pred: Path
    label: Path
    fov: Path | None = None


def split_suffix(name: str) -> tuple[str, str] | None:
    """Split a file name into (stem, suffix) for a recognised label suffix, else None.

    Example:
        >>> split_suffix("liver_003.nii.gz")
        ('liver_003', '.nii.gz')
    """
    lower = name.lower()
    for suffix in LABEL_SUFFIXES:
        if lower.endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)], name[-len(suffix) :]
    return None


def _listing(names: Sequence[str]) -> str:
    names = sorted(names)
    shown = ", ".join(names[:_SHOW])
    return shown if len(names) <= _SHOW else f"{shown} ... and {len(names) - _SHOW} more"


def _compile(case_regex: str | None) -> re.Pattern[str] | None:
    if case_regex is None:
        return None
    try:
        return re.compile(case_regex)
    except re.error as err:
        raise ConfigError(f"case_regex {case_regex!r} is not a valid regular expression: {err}") from None


def list_label_files(folder: str | os.PathLike, case_regex: str | None = None) -> dict[str, Path]:
    """Map case id -> file for every label image in ``folder`` (not recursive, hidden files skipped).

    Args:
        folder: the directory to list.
        case_regex: how to get the case id from a file's stem (its name without the suffix). None:
            the whole stem. Otherwise the first match of this regex in the stem, its group 1 if it
            has groups: ``r"^(\\d+)_"`` gives ``01`` for ``01_manual1.gif`` and ``01_test_mask.gif``.

    Returns:
        Case id -> path, sorted by case id.

    Raises:
        DataError: the folder is missing or holds no label images, a stem does not match
            ``case_regex``, or two files give the same case id.
        ConfigError: ``case_regex`` does not compile.
    """
    folder = Path(folder)
    pattern = _compile(case_regex)
    if not folder.is_dir():
        raise DataError(f"{folder}: not a directory")
    found: dict[str, Path] = {}
    unmatched: list[str] = []
    for path in folder.iterdir():
        split = split_suffix(path.name)
        if path.name.startswith(".") or split is None or not path.is_file():
            continue
        case = split[0]
        if pattern is not None:
            match = pattern.search(case)
            if match is None:
                unmatched.append(path.name)
                continue
            case = match.group(1) if pattern.groups else match.group(0)
        if case in found:
            raise DataError(f"{folder}: {found[case].name} and {path.name} are both case {case!r}")
        found[case] = path
    if unmatched:
        raise DataError(
            f"{folder}: {len(unmatched)} file(s) do not match case_regex {case_regex!r}: {_listing(unmatched)}"
        )
    if not found:
        raise DataError(f"{folder}: no label images ({', '.join(LABEL_SUFFIXES)})")
    return dict(sorted(found.items()))


def pair_folders(
    pred_dir: str | os.PathLike,
    label_dir: str | os.PathLike,
    fov_dir: str | os.PathLike | None = None,
    case_regex: str | None = None,
) -> list[CaseFiles]:
    """Pair predictions with labels (and FOV masks) by case id, like nnU-Net's ``evaluate_folder``.

    The suffixes may differ (``01.png`` pairs with ``01.gif``). Every prediction needs a label and
    every label a prediction (and a FOV mask when ``fov_dir`` is given); extra FOV masks are ignored.

    Raises:
        DataError: one message listing every unpaired file (first few and a count).
    """
    preds = list_label_files(pred_dir, case_regex)
    labels = list_label_files(label_dir, case_regex)
    fovs = list_label_files(fov_dir, case_regex) if fov_dir is not None else None
    problems = []
    if no_pred := [labels[c].name for c in labels if c not in preds]:
        problems.append(
            f"{len(no_pred)} label(s) in {label_dir} without a prediction in {pred_dir}: {_listing(no_pred)}"
        )
    if no_label := [preds[c].name for c in preds if c not in labels]:
        problems.append(
            f"{len(no_label)} prediction(s) in {pred_dir} without a label in {label_dir}: {_listing(no_label)}"
        )
    if fovs is not None and (no_fov := [labels[c].name for c in labels if c not in fovs]):
        problems.append(f"{len(no_fov)} label(s) without a FOV mask in {fov_dir}: {_listing(no_fov)}")
    if problems:
        hint = "" if case_regex else " (files named differently pair by a case id: case_regex, e.g. '^(\\d+)_')"
        raise DataError("; ".join(problems) + hint)
    return [CaseFiles(c, preds[c], labels[c], fovs[c] if fovs is not None else None) for c in labels]


def _as_labels(array: np.ndarray, path: Path) -> np.ndarray:
    if array.dtype == bool:
        return array.astype(np.uint8)
    if np.issubdtype(array.dtype, np.floating):
        if not np.all(np.isfinite(array)) or not np.array_equal(array, np.round(array)):
            raise DataError(f"{path}: label image holds non-integer values (a probability map? save class indices)")
        array = array.astype(np.int64)
    elif not np.issubdtype(array.dtype, np.integer):
        raise DataError(f"{path}: unsupported label data type {array.dtype}")
    if array.size and np.issubdtype(array.dtype, np.signedinteger) and array.min() < 0:
        raise DataError(f"{path}: label image holds negative values (min {array.min()})")
    return array


def _pil_frame(img, path: Path) -> np.ndarray:
    mode = img.mode
    if mode in ("P", "PA"):
        idx = np.asarray(img.convert("P") if mode == "PA" else img)
        palette = np.asarray(img.getpalette() or [], dtype=np.int64).reshape(-1, 3)
        used = np.unique(idx)
        if (
            used.max() < len(palette)
            and np.all(palette[used, 0] == palette[used, 1])
            and np.all(palette[used, 1] == palette[used, 2])
        ):
            return palette[:, 0].astype(np.uint8)[idx]
        return idx
    if mode in ("RGB", "RGBA", "LA"):
        arr = np.asarray(img)
        colour = arr[..., :3] if mode != "LA" else arr[..., :1]
        if np.any(colour != colour[..., :1]):
            raise DataError(f"{path}: colour label image (mode {mode}); save one class index per pixel")
        return colour[..., 0]
    return np.asarray(img)


def _read_image(path: Path) -> LabelImage:
    from PIL import Image

    with Image.open(path) as img:
        frames = []
        for i in range(getattr(img, "n_frames", 1)):
            img.seek(i)
            frames.append(_pil_frame(img, path))
    array = frames[0] if len(frames) == 1 else np.stack(frames)
    array = _as_labels(array, path)
    values = np.unique(array)
    if len(values) == 2 and values[0] == 0 and values[1] == 255:
        array = (array == 255).astype(np.uint8)
    return LabelImage(array, (1.0,) * array.ndim, None, path)


def _read_nifti(path: Path) -> LabelImage:
    import nibabel as nib

    img = nib.load(str(path))
    array = np.asanyarray(img.dataobj)
    zooms = tuple(float(z) for z in img.header.get_zooms()[: array.ndim])
    # a 2D label saved as X Y 1 (or a 4D file with one volume) is evaluated as 2D/3D
    while array.ndim > 2 and array.shape[-1] == 1:
        array, zooms = array[..., 0], zooms[:-1]
    if array.ndim not in (2, 3):
        raise DataError(f"{path}: label image must be 2D or 3D, got shape {img.shape}")
    return LabelImage(_as_labels(np.asarray(array), path), zooms, np.asarray(img.affine, dtype=np.float64), path)


def read_label(path: str | os.PathLike) -> LabelImage:
    """Read a label image (class indices) with its spacing; see the module docstring for conventions.

    Raises:
        DataError: unknown suffix, unreadable file, colour or non-integer or negative labels.
    """
    path = Path(path)
    split = split_suffix(path.name)
    if split is None:
        raise DataError(f"{path}: unknown label file type (expected one of {', '.join(LABEL_SUFFIXES)})")
    try:
        return _read_nifti(path) if split[1].lower() in NIFTI_SUFFIXES else _read_image(path)
    except DataError:
        raise
    except Exception as err:  # nibabel / Pillow raise many types for a corrupt or missing file
        raise DataError(f"{path}: cannot read label image: {err}") from err


def read_mask(path: str | os.PathLike) -> np.ndarray:
    """Read a binary mask (e.g. a DRIVE field of view): True where the file is non-zero."""
    return read_label(path).array != 0


def _atomic_target(path: Path, suffix: str):
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".tmp{suffix}", dir=path.parent)
    os.close(fd)
    return Path(tmp)


def _replace(tmp: Path, path: Path) -> None:
    try:
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to a temporary file next to ``path`` and rename it over ``path``."""
    path = Path(path)
    tmp = _atomic_target(path, "")
    try:
        tmp.write_text(text, encoding="utf-8")
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _replace(tmp, path)
    return path


def write_label(
    path: str | os.PathLike,
    array: np.ndarray,
    *,
    spacing: Sequence[float] | None = None,
    affine: np.ndarray | None = None,
) -> Path:
    """Write class indices atomically (temp file + rename) as NIfTI, PNG, GIF or TIFF.

    Args:
        path: output file; its suffix picks the format.
        array: integer class indices, ``X Y [Z]`` for NIfTI, ``H W`` for images.
        spacing: NIfTI only, used for a diagonal affine when ``affine`` is None.
        affine: NIfTI only, 4x4 voxel-to-world matrix (e.g. the input image's, so the
            prediction overlays it).

    Raises:
        ValueError: unknown suffix, values that do not fit the format (GIF: 0..255, PNG: 0..65535),
            or a 3D array for an image format.
    """
    path = Path(path)
    split = split_suffix(path.name)
    if split is None:
        raise ValueError(f"unknown label file type {path.name!r}, expected one of {LABEL_SUFFIXES}")
    suffix = split[1].lower()
    array = np.asarray(array)
    if array.size and array.min() < 0:
        raise ValueError(f"label values must be >= 0, got min {array.min()}")
    high = int(array.max()) if array.size else 0
    tmp = _atomic_target(path, suffix)
    try:
        if suffix in NIFTI_SUFFIXES:
            import nibabel as nib

            if affine is None:
                affine = np.diag([*(spacing or (1.0,) * array.ndim), *(1.0,) * (4 - array.ndim)])
            data = array.astype(np.uint8 if high < 256 else np.int16 if high < 32768 else np.int32)
            img = nib.Nifti1Image(data, np.asarray(affine, dtype=np.float64))
            img.set_qform(img.affine, code=1)
            img.set_sform(img.affine, code=1)
            nib.save(img, str(tmp))
        else:
            from PIL import Image

            if array.ndim != 2:
                raise ValueError(f"{suffix} labels must be 2D (H W), got shape {array.shape}")
            limit = 255 if suffix == ".gif" else 65535
            if high > limit:
                raise ValueError(f"{suffix} holds labels up to {limit}, got {high}")
            data = array.astype(np.uint8 if high < 256 else np.uint16)
            fmt = {".png": "PNG", ".gif": "GIF", ".tif": "TIFF", ".tiff": "TIFF"}[suffix]
            Image.fromarray(data).save(tmp, format=fmt)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _replace(tmp, path)
    return path
