"""The one reader and writer of images and labels: formats, axis order, label values, geometry.

Every command reads files through this module (``train`` and ``check-data`` through the
transform chain's loader, which is given :func:`read_image`; ``evaluate`` and ``infer`` directly),
so a file means the same everywhere.

Formats (:data:`SUFFIXES`, case-insensitive; ``.nii.gz`` is one suffix), all by way of MONAI's
loader, so a loaded image is a ``MetaTensor`` with MONAI's metadata (``affine``,
``spatial_shape``, ``filename_or_obj``) that MONAI's ``Invertd`` and writers understand:

- NIfTI (``.nii``, ``.nii.gz``) through nibabel (MONAI's ``NibabelReader``);
- NRRD (``.nrrd``, ``.nhdr``) and MetaImage (``.mha``, ``.mhd``) through ITK (MONAI's
  ``ITKReader`` / ``ITKWriter``; ``pip install 'medseg[formats]'``);
- DICOM: a folder holding one series' slices, or one ``.dcm`` file, read by
  :mod:`pipeline._dicom` with pydicom (``pip install 'medseg[dicom]'``; sorted along the slice
  normal, rescaled to HU, a series with a missing or duplicated slice refused). Read only:
  predictions of a series are written as NIfTI;
- 2D images (PNG, TIFF, GIF, JPEG, BMP) through Pillow (MONAI's ``PILReader``).

Axis order (one convention for training, inference and evaluation):

- NIfTI: the file's voxel axes ``X Y [Z]`` as nibabel gives them; geometry is the header's affine
  (spacing = the lengths of its columns, in mm), voxel to RAS world millimetres.
- NRRD / MetaImage / DICOM: the same ``X Y [Z]`` (ITK's index order, ``x`` fastest in the file)
  and a voxel-to-RAS affine: the files store LPS directions and origin, MONAI's ``ITKReader``
  (``affine_lps_to_ras``) and :mod:`pipeline._dicom` negate the first two world rows, and
  :func:`write_image` negates them back, so a volume converted between NIfTI, NRRD and MHA keeps
  one affine (within 1e-5 mm).
- 2D images: MONAI's ``PILReader`` convention (``reverse_indexing=True``): a picture ``W`` pixels
  wide and ``H`` high is the array ``W H``, i.e. ``x`` first like NIfTI, the *transpose* of
  ``numpy.asarray(PIL.Image.open(path))``. Spacing is 1 per pixel, the affine the identity.
  :func:`write_image` and :func:`write_label` take arrays in the same order and transpose back, so
  a file read and written again is unchanged, and a prediction lies over its input.

Values: the readers return the file's raw values, never remapped per file. Turning raw label
values into class indices happens once per dataset, from ``transforms.label_values`` or from
the values of all label files together (:mod:`pipeline.data.labels`).

- A palette image (GIF, palette PNG) whose used palette entries are all grey is read as those
  grey levels (a GIF stores even a grey mask as a palette, DRIVE's masks are such GIFs); a colour
  palette (Pascal VOC style label PNGs) is read as its palette *indices*, one value per colour.
- Bilevel (mode ``1``) images read as 0/255, grey+alpha as grey, RGBA and other colour modes as
  RGB (three channels); 16-bit and float images keep their values.
- A multi-page TIFF (or animated GIF) is refused with a :class:`DataError` naming the file and
  its page count: it is neither one 2D image nor a volume with a known geometry; save 3D data
  as NIfTI.

Writes are atomic (:func:`atomic_write`): a temporary file ``.<name>.tmp`` in the target's
folder, flushed and fsynced, then renamed over the target; the folder is fsynced after the
rename. The file is created with mode ``0o666`` minus the umask (what ``open`` would give, not
``mkstemp``'s ``0o600``), and it is removed on any failure.
"""

from __future__ import annotations

import contextlib
import errno
import gzip
import importlib.util
import logging
import os
import re
import shutil
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import IO, Any

import numpy as np
from monai.data import ImageReader, ITKReader, MetaTensor, NibabelReader, PILReader
from monai.transforms import LoadImage
from monai.utils import MetaKeys, SpaceKeys
from PIL import Image

from pipeline._dicom import is_series_folder, read_series, scan_series, write_seg
from pipeline.errors import ConfigError, DataError, DiskFullError, list_some

__all__ = [
    "NIFTI_SUFFIXES",
    "ITK_SUFFIXES",
    "DICOM_SUFFIXES",
    "IMAGE_2D_SUFFIXES",
    "SUFFIXES",
    "VOLUME_KINDS",
    "image_geometry",
    "LabelImage",
    "CaseFiles",
    "split_suffix",
    "file_kind",
    "check_file",
    "list_folder",
    "normalise_mode",
    "read_image",
    "read_label",
    "read_mask",
    "label_values_of",
    "list_label_files",
    "pair_folders",
    "atomic_write",
    "atomic_write_text",
    "atomic_write_bytes",
    "write_image",
    "write_label",
    "write_dicom_seg",
    "write_instance_map",
]

NIFTI_SUFFIXES = (".nii.gz", ".nii")
ITK_SUFFIXES = (".nrrd", ".nhdr", ".mha", ".mhd")
DICOM_SUFFIXES = (".dcm",)
IMAGE_2D_SUFFIXES = (".png", ".tif", ".tiff", ".gif", ".jpg", ".jpeg", ".bmp")
SUFFIXES = NIFTI_SUFFIXES + ITK_SUFFIXES + DICOM_SUFFIXES + IMAGE_2D_SUFFIXES
"""Every file ending this module reads (case-insensitive); ``.nii.gz`` is one suffix. A folder
holding one DICOM series is read too (:func:`file_kind` ``"dicom"``)."""
VOLUME_KINDS = ("nifti", "itk", "dicom")
"""Kinds whose files carry a world geometry (an affine in mm), unlike 2D pictures."""

_PIL_FORMATS = {
    ".png": "PNG",
    ".tif": "TIFF",
    ".tiff": "TIFF",
    ".gif": "GIF",
    ".jpg": "JPEG",
    ".jpeg": "JPEG",
    ".bmp": "BMP",
}
_LOSSY = (".jpg", ".jpeg")
_EXPECTED = (
    "NIfTI .nii/.nii.gz, NRRD .nrrd/.nhdr, MetaImage .mha/.mhd, DICOM .dcm or a DICOM series folder, "
    "PNG/TIFF/GIF/JPEG/BMP"
)


# ------------------------------------------------------------------------------------- names


def split_suffix(name: str) -> tuple[str, str]:
    """Split a file name into stem and suffix, keeping ``.nii.gz`` whole.

    A name without a recognised suffix splits like :class:`pathlib.Path` (``stem``, ``suffix``),
    so ``suffix`` is ``".mha"`` for ``x.mha`` and ``""`` for ``README``; test it with
    :func:`file_kind`.

    Example:
        >>> split_suffix("liver_003.nii.gz")
        ('liver_003', '.nii.gz')
        >>> split_suffix("01_manual1.GIF")
        ('01_manual1', '.GIF')
        >>> split_suffix("scan.mha")
        ('scan', '.mha')
    """
    lower = name.lower()
    for suffix in SUFFIXES:
        if lower.endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)], name[-len(suffix) :]
    path = Path(name)
    return path.stem, path.suffix


def file_kind(path: str | os.PathLike) -> str | None:
    """``"nifti"``, ``"itk"`` (NRRD, MetaImage), ``"dicom"``, ``"2d"``, or ``None`` for a file
    this module does not read: by suffix, and for an existing folder by whether it holds DICOM
    files (a series folder, :func:`pipeline._dicom.is_series_folder`).

    Example:
        >>> file_kind("a.nii.gz"), file_kind("b.tif"), file_kind("c.mha"), file_kind("d.dcm"), file_kind("e.txt")
        ('nifti', '2d', 'itk', 'dicom', None)
    """
    if is_series_folder(path):
        return "dicom"
    name = Path(path).name
    suffix = split_suffix(name)[1].lower()
    if len(name) <= len(suffix):
        return None
    if suffix in NIFTI_SUFFIXES:
        return "nifti"
    if suffix in ITK_SUFFIXES:
        return "itk"
    if suffix in DICOM_SUFFIXES:
        return "dicom"
    if suffix in IMAGE_2D_SUFFIXES:
        return "2d"
    return None


def check_file(path: str | os.PathLike) -> Path:
    """``path`` as a :class:`Path` if it is a readable kind of file that exists.

    Raises:
        DataError: a dangling symbolic link, a missing file, a folder, or an unsupported suffix.
    """
    path = Path(path)
    if path.is_symlink() and not path.exists():
        raise DataError(f"{path}: dangling symbolic link (its target {os.readlink(path)} does not exist)")
    if not path.exists():
        raise DataError(f"{path}: file not found")
    if path.is_dir() and is_series_folder(path):
        return path
    if not path.is_file():
        raise DataError(f"{path}: not a file (nor a folder of DICOM slices)")
    if file_kind(path) is None:
        raise DataError(f"{path}: unsupported file type (expected {_EXPECTED})")
    return path


def check_readable(path: str | os.PathLike) -> Path:
    """:func:`check_file`, and the file's header read and checked without decoding its data: a
    NIfTI header that parses and describes no more data than the file holds; a 2D image that
    Pillow opens and verifies (PNG checksums, truncation).

    Raises:
        DataError: naming the file and what is wrong.
    """
    path = check_file(path)
    kind = file_kind(path)
    if kind == "nifti":
        _check_nifti_size(path)
        return path
    if kind in ("itk", "dicom"):
        image_geometry(path)
        return path
    try:
        with Image.open(path) as img:
            img.verify()
    except Exception as err:  # Pillow raises many types for a damaged file
        raise DataError(f"{path}: cannot read ({_first_line(err)})") from err
    return path


def list_folder(folder: str | os.PathLike) -> list[Path]:
    """The entries directly inside ``folder``, sorted, hidden ones (``.x``, macOS ``._x``) left out.

    Raises:
        DataError: the folder holds dangling symbolic links (all named), which a listing of files
            would otherwise drop without a word.
    """
    folder = Path(folder)
    entries = sorted(p for p in folder.iterdir() if not p.name.startswith("."))
    dangling = [p.name for p in entries if p.is_symlink() and not p.exists()]
    if dangling:
        raise DataError(f"{folder}: {len(dangling)} dangling symbolic link(s): {list_some(dangling)}")
    return entries


# ----------------------------------------------------------------------------------- reading


def normalise_mode(img: Image.Image) -> Image.Image:
    """Return ``img`` as plain grey (``L``/``I``/``F``) or ``RGB`` values (see the module docstring).

    Raises:
        DataError: a multi-page TIFF or animated GIF (naming the file and its page count).

    Example:
        >>> grey = Image.fromarray(np.array([[0, 255]], np.uint8)).convert("P")
        >>> normalise_mode(grey).mode, np.asarray(normalise_mode(grey)).tolist()
        ('L', [[0, 255]])
        >>> voc = Image.fromarray(np.array([[0, 1]], np.uint8), "P")
        >>> voc.putpalette([0, 0, 0, 128, 0, 0])
        >>> np.asarray(normalise_mode(voc)).tolist()  # colour palette: the indices
        [[0, 1]]
    """
    pages = getattr(img, "n_frames", 1)
    if pages > 1:
        name = getattr(img, "filename", "") or "image"
        raise DataError(
            f"{name}: {pages} pages (a multi-page {img.format or 'image'}); expected one 2D image "
            "(save a 3D volume as NIfTI)"
        )
    mode = img.mode
    if mode in ("L", "I", "I;16", "I;16B", "I;16L", "F", "RGB"):
        return img
    if mode in ("1", "LA", "La"):
        return img.convert("L")
    if mode in ("P", "PA"):
        idx = np.asarray(img.convert("P") if mode == "PA" else img)
        palette = np.asarray(img.getpalette() or [], dtype=np.int64)
        palette = palette[: len(palette) // 3 * 3].reshape(-1, 3)
        used = np.unique(idx)
        if used.size and used.max() < len(palette) and np.all(palette[used] == palette[used, :1]):
            return Image.fromarray(palette[:, 0].astype(np.uint8)[idx])
        return Image.fromarray(np.ascontiguousarray(idx.astype(np.uint8)))
    return img.convert("RGB")


class _Image2DReader(PILReader):
    """MONAI's ``PILReader`` for every 2D suffix of :data:`IMAGE_2D_SUFFIXES`, modes normalised."""

    def __init__(self) -> None:
        super().__init__(converter=normalise_mode, reverse_indexing=True)

    def verify_suffix(self, filename: Sequence[str | os.PathLike] | str | os.PathLike) -> bool:
        names = [filename] if isinstance(filename, (str, os.PathLike)) else list(filename)
        return all(file_kind(n) == "2d" for n in names)

    def get_data(self, img: Any) -> tuple[np.ndarray, dict]:
        data, meta = super().get_data(img)
        return np.require(data, requirements="W"), meta  # Pillow's buffers are read-only; torch warns on them


class _DicomReader(ImageReader):
    """A DICOM series (a folder) or one ``.dcm`` file as an ``X Y Z`` volume, for MONAI's loader,
    by :func:`pipeline._dicom.read_series` (why not MONAI's ``PydicomReader``: see there)."""

    def verify_suffix(self, filename: Sequence[str | os.PathLike] | str | os.PathLike) -> bool:
        names = [filename] if isinstance(filename, (str, os.PathLike)) else list(filename)
        return all(file_kind(n) == "dicom" for n in names)

    def read(self, data: Any, **kwargs: Any) -> Any:
        return read_series(data[0] if isinstance(data, (list, tuple)) else data)

    def get_data(self, img: Any) -> tuple[np.ndarray, dict]:
        volume, series = img
        meta = {
            MetaKeys.AFFINE: series.affine.copy(),
            MetaKeys.ORIGINAL_AFFINE: series.affine.copy(),
            MetaKeys.SPATIAL_SHAPE: np.asarray(volume.shape),
            MetaKeys.ORIGINAL_CHANNEL_DIM: float("nan"),
            MetaKeys.SPACE: SpaceKeys.RAS,
            "series_uid": series.uid,
        }
        return volume, meta


def _require_itk(path: Path) -> None:
    if importlib.util.find_spec("itk") is None:
        raise DataError(f"{path}: reading and writing NRRD / MetaImage needs ITK: pip install 'medseg[formats]'")


@cache
def _reader(kind: str) -> Any:
    if kind == "nifti":
        return NibabelReader()
    if kind == "itk":
        return ITKReader()  # affine_lps_to_ras=True: RAS like NIfTI; X Y Z index order
    if kind == "dicom":
        return _DicomReader()
    return _Image2DReader()


@cache
def _loader(dtype: Any) -> LoadImage:
    # LoadImage makes one of every MONAI reader; with pydicom installed, the nvImageCodec DICOM
    # reader logs and warns on a machine without it, once per loader: not our users' concern
    plugin_log = logging.getLogger("monai.data.nvimgcodec_pydicom_plugin")
    level = plugin_log.level
    plugin_log.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*nvImageCodec")
            return LoadImage(image_only=True, ensure_channel_first=True, dtype=dtype)
    finally:
        plugin_log.setLevel(level)


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0][:200]}" if text else type(err).__name__


def read_image(path: str | os.PathLike, dtype: Any = np.float32) -> MetaTensor:
    """Read one image or label file as a channel-first ``MetaTensor`` of raw values.

    Layout ``C W H`` for 2D files, ``C X Y Z`` for NIfTI (see the module docstring); a grey or
    palette image has one channel, an RGB(A) image three.

    Args:
        path: the file.
        dtype: the array's data type (float32, what the transform chain works in); None keeps
            the file's own (labels, see :func:`read_label`).

    Returns:
        The array with MONAI's metadata (``affine``, ``spatial_shape``, ``filename_or_obj``).

    Raises:
        DataError: a missing file or dangling link, an unsupported suffix, a file that cannot be
            read (naming it and why), a multi-page TIFF.

    Example:
        >>> import tempfile
        >>> folder = tempfile.mkdtemp()
        >>> picture = np.zeros((2, 3), np.uint8); picture[0, 2] = 7  # H=2 rows, W=3 columns
        >>> Image.fromarray(picture).save(f"{folder}/x.png")
        >>> x = read_image(f"{folder}/x.png")
        >>> tuple(x.shape), float(x[0, 2, 0])  # C W H: column 2, row 0
        ((1, 3, 2), 7.0)
    """
    path = check_file(path)
    kind = file_kind(path)
    if kind == "nifti":
        _check_nifti_size(path)
    elif kind == "itk":
        _require_itk(path)
    try:
        return _loader(dtype)(str(path), reader=_reader(kind))
    except DataError:
        raise
    except Exception as err:  # nibabel / Pillow raise many types for a corrupt or truncated file
        raise DataError(f"{path}: cannot read ({_first_line(err)})") from err


def image_geometry(path: str | os.PathLike) -> tuple[tuple[int, ...], np.ndarray | None]:
    """The spatial shape (this module's axis order) and voxel-to-RAS affine of an image, from its
    header only (no voxel data decoded); the affine is None for 2D pictures.

    Raises:
        DataError: as :func:`check_file`, or a header that cannot be read.

    Example:
        >>> import tempfile
        >>> folder = tempfile.mkdtemp()
        >>> _ = write_image(f"{folder}/v.nii.gz", np.zeros((4, 5, 6), np.uint8), spacing=(2.0, 1.0, 3.0))
        >>> shape, affine = image_geometry(f"{folder}/v.nii.gz")
        >>> shape, np.diag(affine).tolist()
        ((4, 5, 6), [2.0, 1.0, 3.0, 1.0])
    """
    path = check_file(path)
    kind = file_kind(path)
    if kind == "dicom":
        series = scan_series(path)
        return series.shape, series.affine
    try:
        if kind == "nifti":
            import nibabel as nib

            _check_nifti_size(path)
            img = nib.load(str(path))
            return tuple(int(n) for n in img.shape[:3]), np.asarray(img.affine, dtype=np.float64)
        if kind == "itk":
            _require_itk(path)
            import itk

            reader = itk.ImageFileReader.New(FileName=str(path))
            reader.UpdateOutputInformation()
            header = reader.GetImageIO()
            dims = header.GetNumberOfDimensions()
            shape = tuple(int(header.GetDimensions(i)) for i in range(dims))
            lps = np.eye(4)
            direction = np.array([[header.GetDirection(j)[i] for j in range(dims)] for i in range(dims)])
            spacing = np.array([header.GetSpacing(i) for i in range(dims)])
            lps[:dims, :dims] = direction * spacing
            lps[:dims, 3] = [header.GetOrigin(i) for i in range(dims)]
            ras = np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps
            if dims == 2:  # MONAI's ITKReader gives 2D files a 3x3 affine
                ras = ras[np.ix_([0, 1, 3], [0, 1, 3])]
            return shape, ras
        with Image.open(path) as img:
            return tuple(img.size), None
    except DataError:
        raise
    except Exception as err:
        raise DataError(f"{path}: cannot read ({_first_line(err)})") from err


def _check_nifti_size(path: Path) -> None:
    """Refuse a NIfTI whose data is shorter than its header says, before anything is allocated:
    a 4 KB file whose header claims 2000 x 2000 x 1000 float32 would otherwise ask for 16 GB (and
    meet the out-of-memory killer) before the read fails. For ``.nii.gz`` the gzip trailer's
    length stands in for the file size (below 4 GiB of data: gzip stores it modulo 2^32)."""
    import nibabel as nib

    try:
        header = nib.load(str(path)).header
        need = int(header.get_data_offset()) + int(np.prod(header.get_data_shape(), dtype=np.int64)) * int(
            header.get_data_dtype().itemsize
        )
    except Exception as err:  # a header nibabel cannot parse: read_image names it
        raise DataError(f"{path}: cannot read ({_first_line(err)})") from err
    if path.name.lower().endswith(".gz"):
        if need >= 2**32:  # the trailer holds the length modulo 2^32: no lower bound to check
            return
        with open(path, "rb") as fh:
            fh.seek(-4, os.SEEK_END)
            have = int.from_bytes(fh.read(4), "little")
    else:
        have = path.stat().st_size
    if have < need:
        raise DataError(
            f"{path}: truncated: its header describes {header.get_data_shape()} {header.get_data_dtype()} "
            f"({need / 2**20:.1f} MiB of data) but the file holds {have / 2**20:.1f} MiB"
        )


@dataclass(frozen=True)
class LabelImage:
    """A label image as read from disk: raw integer values, no per-file remapping.

    Attributes:
        array: integer values, ``W H`` or ``X Y Z`` (see the module docstring).
        spacing: size of one pixel/voxel along each axis of ``array``, in mm (1.0 for 2D images).
        affine: the voxel-to-RAS affine (4x4) of a volume (NIfTI, NRRD, MetaImage, DICOM), or None
            for 2D image formats.
        path: the file it was read from.
    """

    array: np.ndarray
    spacing: tuple[float, ...]
    affine: np.ndarray | None
    path: Path


def _as_labels(array: np.ndarray, path: Path) -> np.ndarray:
    if array.dtype == bool:
        array = array.astype(np.uint8)
    elif np.issubdtype(array.dtype, np.floating):
        if not np.all(np.isfinite(array)) or not np.array_equal(array, np.round(array)):
            raise DataError(f"{path}: label image holds non-integer values (a probability map? save class indices)")
    elif not np.issubdtype(array.dtype, np.integer):
        raise DataError(f"{path}: unsupported label data type {array.dtype}")
    if array.size and array.min() < 0:
        raise DataError(f"{path}: label image holds negative values (min {array.min():g})")
    high = array.max() if array.size else 0
    return array.astype(np.uint8 if high < 256 else np.int32 if high < 2**31 else np.int64)


def read_label(path: str | os.PathLike) -> LabelImage:
    """Read a label image (one map of integer values) with its geometry, by :func:`read_image`.

    Channels that are all equal (a grey RGB PNG) are one map; a NIfTI ``X Y 1`` (a 2D label saved
    as a volume) or with a trailing single volume is squeezed to 2D/3D.

    Raises:
        DataError: anything :func:`read_image` raises; a colour image; non-integer, negative or
            4D labels.

    Example:
        >>> import tempfile
        >>> folder = tempfile.mkdtemp()
        >>> Image.fromarray(np.array([[0, 128, 255]], np.uint8)).save(f"{folder}/l.png")
        >>> label = read_label(f"{folder}/l.png")
        >>> label.array.tolist(), label.spacing  # raw values, W H
        ([[0], [128], [255]], (1.0, 1.0))
    """
    x = read_image(path, dtype=None)  # the file's own integers: exact, and a quarter of float32's memory
    path = Path(path)
    data = x.numpy()
    if data.shape[0] > 1 and file_kind(path) in VOLUME_KINDS:
        raise DataError(f"{path}: label image must be 2D or 3D, got {data.shape[0]} volumes of {data.shape[1:]}")
    if data.shape[0] > 1:
        if np.any(data != data[:1]):
            mode = x.meta.get("mode", f"{data.shape[0]} channels")
            raise DataError(f"{path}: colour label image (mode {mode}); save one class value per pixel")
    array = data[0]
    nifti = file_kind(path) in VOLUME_KINDS  # a world geometry (NIfTI, NRRD, MetaImage, DICOM)
    ndim = array.ndim
    while array.ndim > 2 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim not in (2, 3):
        raise DataError(f"{path}: label image must be 2D or 3D, got shape {tuple(data.shape[1:])}")
    affine = np.asarray(x.affine, dtype=np.float64)
    world = affine.shape[0] - 1  # rows of world coordinates: the voxel size is the length of each column
    spacing = tuple(float(v) for v in np.linalg.norm(affine[:world, :ndim], axis=0)[: array.ndim])
    return LabelImage(
        _as_labels(array, path), spacing if nifti else (1.0,) * array.ndim, affine if nifti else None, path
    )


def read_mask(path: str | os.PathLike) -> np.ndarray:
    """Read a binary mask (e.g. a DRIVE field of view): True where the file is non-zero."""
    return read_label(path).array != 0


def label_values_of(path: str | os.PathLike) -> set[int]:
    """The distinct raw values of one label file (see :func:`read_label`).

    Example:
        >>> import tempfile
        >>> folder = tempfile.mkdtemp()
        >>> Image.fromarray(np.array([[0, 128, 255, 0]], np.uint8)).save(f"{folder}/l.png")
        >>> sorted(label_values_of(f"{folder}/l.png"))
        [0, 128, 255]
    """
    return {int(v) for v in np.unique(read_label(path).array)}


# ------------------------------------------------------------------------------ label folders


@dataclass(frozen=True)
class CaseFiles:
    """The files of one case: prediction, reference label and optional field-of-view mask."""

    case: str
    pred: Path
    label: Path
    fov: Path | None = None


def _compile(case_regex: str | None) -> re.Pattern[str] | None:
    if case_regex is None:
        return None
    try:
        return re.compile(case_regex)
    except re.error as err:
        raise ConfigError(f"case_regex {case_regex!r} is not a valid regular expression: {err}") from None


def list_label_files(folder: str | os.PathLike, case_regex: str | None = None) -> dict[str, Path]:
    """Map case id -> file for every label image in ``folder`` (not recursive, hidden files skipped;
    a DICOM series folder is one label image, its case id its whole name).

    Args:
        folder: the directory to list.
        case_regex: how to get the case id from a file's stem (its name without the suffix). None:
            the whole stem. Otherwise the first match of this regex in the stem, its group 1 if it
            has groups: ``r"^(\\d+)_"`` gives ``01`` for ``01_manual1.gif`` and ``01_test_mask.gif``.

    Returns:
        Case id -> path, sorted by case id.

    Raises:
        DataError: the folder is missing or holds no label images, a dangling symbolic link, a
            stem does not match ``case_regex``, or two files give the same case id.
        ConfigError: ``case_regex`` does not compile.
    """
    folder = Path(folder)
    pattern = _compile(case_regex)
    if not folder.is_dir():
        raise DataError(f"{folder}: not a directory")
    found: dict[str, Path] = {}
    unmatched: list[str] = []
    for path in list_folder(folder):
        kind = file_kind(path)
        if kind is None or not (path.is_file() or kind == "dicom"):
            continue
        case = path.name if path.is_dir() else split_suffix(path.name)[0]  # a series folder: its whole name
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
            f"{folder}: {len(unmatched)} file(s) do not match case_regex {case_regex!r}: {list_some(unmatched)}"
        )
    if not found:
        raise DataError(f"{folder}: no label images ({', '.join(SUFFIXES)})")
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
            f"{len(no_pred)} label(s) in {label_dir} without a prediction in {pred_dir}: {list_some(no_pred)}"
        )
    if no_label := [preds[c].name for c in preds if c not in labels]:
        problems.append(
            f"{len(no_label)} prediction(s) in {pred_dir} without a label in {label_dir}: {list_some(no_label)}"
        )
    if fovs is not None and (no_fov := [labels[c].name for c in labels if c not in fovs]):
        problems.append(f"{len(no_fov)} label(s) without a FOV mask in {fov_dir}: {list_some(no_fov)}")
    if problems:
        hint = "" if case_regex else " (files named differently pair by a case id: case_regex, e.g. '^(\\d+)_')"
        raise DataError("; ".join(problems) + hint)
    return [CaseFiles(c, preds[c], labels[c], fovs[c] if fovs is not None else None) for c in labels]


# ----------------------------------------------------------------------------------- writing


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # not every platform opens folders (Windows)
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb", *, encoding: str | None = None) -> Iterator[IO[Any]]:
    """Open a temporary file next to ``path``; on success fsync it and rename it over ``path``.

    The temporary file is ``.<name>.tmp`` in the same folder (created, with its parents, if
    missing), made with the umask's permissions, and removed if the block raises; ``path`` is
    then untouched. Code in the block may still rename other files (the checkpoint keeps the
    previous one that way) before the final rename.

    Args:
        path: the target file.
        mode: ``"wb"`` (bytes) or ``"w"`` (text).
        encoding: text mode only; default UTF-8.

    Yields:
        The open temporary file (its ``name`` is the temporary path).

    Example:
        >>> import tempfile
        >>> target = Path(tempfile.mkdtemp()) / "out.txt"
        >>> with atomic_write(target, "w") as fh:
        ...     _ = fh.write("done")
        >>> target.read_text(), sorted(p.name for p in target.parent.iterdir())
        ('done', ['out.txt'])
    """
    if mode not in ("wb", "w"):
        raise ValueError(f"mode must be 'wb' or 'w', got {mode!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.unlink(missing_ok=True)  # a leftover of a killed write: its permissions must not carry over
    # "x": created here (O_EXCL) with mode 0o666 minus the umask, as open() does, unlike mkstemp's 0o600
    fh = open(tmp, mode.replace("w", "x"), encoding=encoding or ("utf-8" if mode == "w" else None))
    try:
        with fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        tmp.unlink(missing_ok=True)
        if isinstance(err, OSError) and err.errno in _NO_SPACE:
            raise DiskFullError(path, err, _free_mib(path.parent)) from err
        raise
    _fsync_dir(path.parent)


_NO_SPACE = (errno.ENOSPC, errno.EFBIG, errno.EDQUOT)


def _free_mib(folder: Path) -> float | None:
    try:
        stat = os.statvfs(folder)
    except OSError:
        return None
    return stat.f_bavail * stat.f_frsize / 2**20


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically (see :func:`atomic_write`)."""
    with atomic_write(path, "w") as fh:
        fh.write(text)
    return Path(path)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_write`)."""
    with atomic_write(path) as fh:
        fh.write(data)
    return Path(path)


def _nifti(array: np.ndarray, affine: np.ndarray | None, spacing: Sequence[float] | None, like: Any):
    import nibabel as nib

    if like is not None:
        ref = nib.load(str(like))
        header = ref.header.copy()
        header.set_data_dtype(array.dtype)
        header.set_slope_inter(1, 0)
        if array.size == int(np.prod(ref.shape)):
            array = array.reshape(ref.shape)  # a 2D prediction of an X Y 1 file gets its third axis back
        return nib.Nifti1Image(array, ref.affine if affine is None else affine, header)
    if affine is None:
        affine = np.diag([*(spacing or (1.0,) * array.ndim), *(1.0,) * (4 - array.ndim)])
    img = nib.Nifti1Image(array, np.asarray(affine, dtype=np.float64))
    img.set_qform(img.affine, code=1)
    img.set_sform(img.affine, code=1)
    img.header.set_xyzt_units("mm", "sec")
    return img


def _write_itk(path: Path, array: np.ndarray, affine: np.ndarray) -> None:
    """Write NRRD / MetaImage by MONAI's ``ITKWriter`` (RAS affine in, LPS in the file), atomically.

    ITK picks the format by the name, and ``.mhd`` / ``.nhdr`` put the voxels in a second file
    beside the header, so the files are written into a hidden temporary folder next to ``path``
    under their final names, then renamed into place, the header last: a header that exists
    points at complete data.
    """
    from monai.data import ITKWriter

    _require_itk(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.tmp.d"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        writer = ITKWriter(output_dtype=array.dtype, affine_lps_to_ras=True)
        writer.set_data_array(array, channel_dim=None, squeeze_end_dims=False, spatial_ndim=array.ndim)
        writer.affine = affine  # as set_metadata(resample=False) would, without its resampler's round trip
        writer.write(str(tmp / path.name), compression=True)
        written = sorted(tmp.iterdir(), key=lambda p: p.name == path.name)  # the header last
        for part in written:
            with open(part, "rb") as fh:
                os.fsync(fh.fileno())
            os.replace(part, path.parent / part.name)
    except BaseException as err:
        if isinstance(err, OSError) and err.errno in _NO_SPACE:
            raise DiskFullError(path, err, _free_mib(path.parent)) from err
        raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    _fsync_dir(path.parent)


def _affine_for(array: np.ndarray, affine: Any, spacing: Sequence[float] | None, like: Any) -> np.ndarray:
    """The RAS affine to write: ``affine``, else the geometry of ``like``, else ``diag(spacing)``."""
    if affine is None and like is not None:
        affine = image_geometry(like)[1]
    if affine is None:
        affine = np.diag([*(spacing or (1.0,) * array.ndim), *(1.0,) * (4 - array.ndim)])
    affine = np.asarray(affine, dtype=np.float64)
    if array.ndim == 2 and affine.shape == (4, 4):  # a 2D image's 3x3, as MONAI's ITKReader gives it
        affine = affine[np.ix_([0, 1, 3], [0, 1, 3])]
    return affine


def write_image(
    path: str | os.PathLike,
    array: np.ndarray,
    *,
    affine: np.ndarray | None = None,
    spacing: Sequence[float] | None = None,
    like: str | os.PathLike | None = None,
) -> Path:
    """Write an array atomically in the format its suffix names, in this module's axis order.

    Args:
        path: output file (:data:`SUFFIXES` but DICOM, which is read only).
        array: NIfTI, NRRD, MetaImage: ``X Y [Z]`` of any dtype the format stores; 2D formats:
            ``W H`` grey or ``W H C`` with ``C`` 3 (RGB) or 4 (RGBA), uint8 (uint16 grey for
            PNG/TIFF).
        affine: volumes only, the 4x4 voxel-to-RAS matrix.
        spacing: volumes only, for a diagonal affine when neither ``affine`` nor ``like`` is given.
        like: volumes only, an image whose geometry the output takes (a prediction of that file
            overlays it); for NIfTI output from a NIfTI file, its whole header.

    Raises:
        ValueError: an unknown suffix, DICOM, or an array a 2D format cannot hold.

    Example:
        >>> import tempfile
        >>> folder = tempfile.mkdtemp()
        >>> wh = np.arange(6, dtype=np.uint8).reshape(3, 2)  # W=3, H=2
        >>> _ = write_image(f"{folder}/a.png", wh)
        >>> Image.open(f"{folder}/a.png").size, bool((read_image(f"{folder}/a.png")[0].numpy() == wh).all())
        ((3, 2), True)
    """
    path = Path(path)
    kind = file_kind(path)
    if kind is None:
        raise ValueError(f"{path.name}: unknown image file type, expected one of {', '.join(SUFFIXES)}")
    array = np.asarray(array)
    suffix = split_suffix(path.name)[1].lower()
    if kind == "dicom":
        raise ValueError(f"{path.name}: DICOM is read only; write NIfTI (.nii.gz), NRRD or MetaImage (.mha)")
    if kind == "itk":
        _write_itk(path, array, _affine_for(array, affine, spacing, like))
        return path
    if kind == "nifti":
        if like is not None and file_kind(like) != "nifti":
            affine, like = _affine_for(array, affine, spacing, like), None
        img = _nifti(array, affine, spacing, like)
        with atomic_write(path) as fh:
            if suffix == ".nii.gz":
                with gzip.GzipFile(fileobj=fh, mode="wb", compresslevel=1, mtime=0) as gz:
                    img.to_stream(gz)
            else:
                img.to_stream(fh)
        return path
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[-1] not in (3, 4)):
        raise ValueError(f"{suffix} images must be W H or W H C with C 3 or 4, got shape {array.shape}")
    if array.dtype not in (np.uint8, np.uint16) or (array.dtype == np.uint16 and (array.ndim == 3 or suffix == ".gif")):
        raise ValueError(f"{suffix} images hold uint8 (or uint16 grey PNG/TIFF), got {array.dtype} {array.shape}")
    picture = Image.fromarray(np.ascontiguousarray(np.swapaxes(array, 0, 1)))
    options = {"compression": "tiff_deflate"} if _PIL_FORMATS[suffix] == "TIFF" else {}
    with atomic_write(path) as fh:
        picture.save(fh, format=_PIL_FORMATS[suffix], **options)
    return path


def write_label(
    path: str | os.PathLike,
    array: np.ndarray,
    *,
    affine: np.ndarray | None = None,
    spacing: Sequence[float] | None = None,
    like: str | os.PathLike | None = None,
) -> Path:
    """Write label values atomically as NIfTI, NRRD, MetaImage, PNG, GIF, TIFF or BMP, in this
    module's axis order.

    The smallest dtype that holds the values is used (volumes uint8 / int16 / int32; images uint8,
    or uint16 for PNG/TIFF).

    Args:
        path: output file; its suffix picks the format (JPEG is refused: it is lossy; DICOM:
            read only).
        array: integer values, ``X Y [Z]`` for volumes, ``W H`` for 2D formats.
        affine, spacing, like: volume geometry, as :func:`write_image`.

    Raises:
        ValueError: unknown or lossy suffix, negative values, values that do not fit the format
            (GIF/BMP: 0..255, PNG/TIFF: 0..65535), or a 3D array for a 2D format.

    Example:
        >>> import tempfile
        >>> folder = tempfile.mkdtemp()
        >>> labels = np.array([[0, 255], [128, 0], [0, 0]])  # W=3, H=2
        >>> _ = write_label(f"{folder}/l.png", labels)
        >>> bool((read_label(f"{folder}/l.png").array == labels).all())
        True
    """
    path = Path(path)
    suffix = split_suffix(path.name)[1].lower()
    kind = file_kind(path)
    if kind in (None, "dicom") or suffix in _LOSSY:
        lossless = ", ".join(s for s in SUFFIXES if s not in _LOSSY and s not in DICOM_SUFFIXES)
        raise ValueError(f"unknown label file type {path.name!r}, expected one of {lossless}")
    array = np.asarray(array)
    if array.size and array.min() < 0:
        raise ValueError(f"label values must be >= 0, got min {array.min()}")
    high = int(array.max()) if array.size else 0
    if kind in ("nifti", "itk"):
        data = array.astype(np.uint8 if high < 256 else np.int16 if high < 32768 else np.int32)
        return write_image(path, data, affine=affine, spacing=spacing, like=like)
    if array.ndim != 2:
        raise ValueError(f"{suffix} labels must be 2D (W H), got shape {array.shape}")
    limit = 255 if suffix in (".gif", ".bmp") else 65535
    if high > limit:
        raise ValueError(f"{suffix} holds labels up to {limit}, got {high}")
    return write_image(path, array.astype(np.uint8 if high < 256 else np.uint16))


def write_dicom_seg(
    path: str | os.PathLike, labels: np.ndarray, source: str | os.PathLike, label_values: Sequence[int]
) -> Path:
    """Write ``labels`` (raw values, ``X Y Z`` on the grid of the DICOM series ``source``)
    atomically as a DICOM Segmentation that references the series (highdicom,
    :func:`pipeline._dicom.write_seg`; one segment per foreground value of ``label_values``).

    Raises:
        DataError: ``source`` is not a readable series, or the labels are not on its grid.
        MedsegError: highdicom is not installed.
    """
    path = Path(path)
    with atomic_write(path) as fh:
        write_seg(fh, np.asarray(labels), source, [int(v) for v in label_values])
    return path


def write_instance_map(path: str | os.PathLike, ids: np.ndarray, *, like: str | os.PathLike | None = None) -> Path:
    """Write an instance label map (0 = background, one id per object) atomically; returns the path written.

    The data type is uint16 while the largest id fits (65,535), uint32 beyond. NIfTI: uint16 /
    uint32 with ``like``'s header and affine. 2D: uint16 PNG / TIFF; past 65,535 objects a PNG
    cannot hold the ids, so the map is written as a uint32 TIFF next to it (``<stem>.tif``,
    through ``tifffile``, a dependency of scikit-image) and that path is returned.

    Args:
        path: output file (NIfTI, PNG or TIFF).
        ids: ``X Y [Z]`` (NIfTI) or ``W H`` (2D) non-negative integer ids, this module's axis order.
        like: NIfTI only, the file whose geometry the map copies.

    Raises:
        ValueError: an unsupported suffix, negative ids, ids beyond uint32, or a 3D array for 2D.

    Example:
        >>> import tempfile
        >>> ids = np.zeros((3, 2), np.int64); ids[0, 0] = 70_000
        >>> out = write_instance_map(f"{tempfile.mkdtemp()}/a.png", ids)
        >>> out.suffix, int(read_label(out).array.max())
        ('.tif', 70000)
    """
    path = Path(path)
    array = np.asarray(ids)
    suffix = split_suffix(path.name)[1].lower()
    if file_kind(path) is None or suffix not in (*NIFTI_SUFFIXES, ".png", ".tif", ".tiff"):
        raise ValueError(f"instance maps are written as NIfTI, PNG or TIFF, got {path.name!r}")
    if array.size and array.min() < 0:
        raise ValueError(f"instance ids must be >= 0, got min {array.min()}")
    high = int(array.max()) if array.size else 0
    if high > np.iinfo(np.uint32).max:
        raise ValueError(f"{high} objects do not fit a uint32 instance map")
    dtype = np.uint16 if high <= np.iinfo(np.uint16).max else np.uint32
    if file_kind(path) == "nifti":
        return write_image(path, array.astype(dtype), like=like)
    if array.ndim != 2:
        raise ValueError(f"{suffix} instance maps must be 2D (W H), got shape {array.shape}")
    if dtype == np.uint16:
        return write_image(path, array.astype(np.uint16))
    import tifffile

    path = path.with_name(split_suffix(path.name)[0] + ".tif") if suffix == ".png" else path
    with atomic_write(path) as fh:
        tifffile.imwrite(fh, np.ascontiguousarray(np.swapaxes(array, 0, 1).astype(np.uint32)), compression="zlib")
    return path
