"""DICOM series: one folder of one series' slices (or one ``.dcm`` file) read as one volume.

Used by :mod:`pipeline.io` only (read it through :func:`pipeline.io.read_image`). Our own
reader, not MONAI's ``PydicomReader``: that one sorts slices by ``InstanceNumber`` and measures
the slice step along the world ``z`` axis only, which is wrong for sagittal, coronal and oblique
series, and it stacks a series with a missing or duplicated slice without a word. Here:

- every file's header is read (pixels not decoded) with pydicom; files pydicom cannot parse as
  DICOM (a ``DICOMDIR``, a text file) are refused, naming them;
- the folder must hold ONE series (``SeriesInstanceUID``), single-frame images of one size, one
  ``ImageOrientationPatient`` and one ``PixelSpacing``;
- slices are sorted by ``ImagePositionPatient`` projected on the slice normal (the cross product
  of the row and column direction cosines), never by file name or ``InstanceNumber``;
- two slices at one position (a duplicated slice), a step that is a multiple of the others (a
  missing slice) or steps that differ by more than 1 % (non-uniform spacing, e.g. a series of
  two stacks) are refused with one line naming the series, the files and the positions. Nothing
  is resampled: a volume on a non-uniform grid has no affine;
- values are ``pixel_array * RescaleSlope + RescaleIntercept`` (Hounsfield units for CT), per
  slice, as float32 when a slope or intercept is not integral, else the smallest signed int that
  holds them.

Geometry (the project's convention, as NIfTI through nibabel): the array is ``X Y Z`` with ``X``
the column index (along the row direction cosine), ``Y`` the row index and ``Z`` the slice index
in sorted order, i.e. ``pixel_array`` transposed, like ITK reads DICOM. The affine maps
``(x, y, z, 1)`` to RAS millimetres: the DICOM (LPS) matrix
``[row_cos * PixelSpacing[1], col_cos * PixelSpacing[0], step, IPP_first]`` with its first two
rows negated. A single slice's third column is the normal times ``SpacingBetweenSlices`` (or
``SliceThickness``, or 1 mm).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.errors import DataError, list_some

__all__ = ["Series", "is_series_folder", "scan_series", "read_series", "PREAMBLE"]

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
PREAMBLE = 128  # a DICOM file's 128-byte preamble is followed by b"DICM"
_TOLERANCE = 0.01  # slice steps may differ by 1 % (rounding of positions in the headers)


def _is_dicom_file(path: Path) -> bool:
    if path.name.lower().endswith(".dcm"):
        return True
    try:
        with open(path, "rb") as fh:
            fh.seek(PREAMBLE)
            return fh.read(4) == b"DICM"
    except OSError:
        return False


def is_series_folder(path: str | os.PathLike) -> bool:
    """A folder whose first (sorted, non-hidden) file is a DICOM file (``.dcm`` or ``DICM`` magic)."""
    path = Path(path)
    if not path.is_dir():
        return False
    try:
        files = sorted(p for p in path.iterdir() if not p.name.startswith(".") and p.is_file())
    except OSError:
        return False
    return bool(files) and _is_dicom_file(files[0])


def _pydicom():
    try:
        import pydicom
    except ImportError:
        raise DataError("reading DICOM needs pydicom: pip install 'medseg[dicom]'") from None
    return pydicom


@dataclass(frozen=True)
class Series:
    """The checked header of one series: slice files in order and the volume's geometry."""

    files: tuple[Path, ...]
    shape: tuple[int, int, int]  # X Y Z (columns, rows, slices)
    affine: np.ndarray  # 4x4, voxel -> RAS mm
    uid: str


def _floats(ds: Any, tag: str, n: int, source: Path) -> np.ndarray | None:
    value = ds.get(tag)
    if value is None:
        return None
    try:
        out = np.asarray([float(v) for v in value], dtype=np.float64)
    except (TypeError, ValueError):
        raise DataError(f"{source}: {tag} {value!r} is not {n} numbers") from None
    if out.shape != (n,) or not np.all(np.isfinite(out)):
        raise DataError(f"{source}: {tag} {list(value)!r} is not {n} finite numbers")
    return out


def _headers(path: Path) -> list[tuple[Path, Any]]:
    pydicom = _pydicom()
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if not p.name.startswith(".") and p.is_file())
    else:
        files = [path]
    if not files:
        raise DataError(f"{path}: empty folder (expected the .dcm slices of one DICOM series)")
    out, bad, no_image = [], [], []
    for f in files:
        try:
            ds = pydicom.dcmread(f, stop_before_pixels=True)
        except Exception:  # pydicom raises InvalidDicomError, OSError, struct errors...
            bad.append(f.name)
            continue
        if "Rows" not in ds or "Columns" not in ds:  # a DICOMDIR, a report, a plan: no image
            no_image.append(f.name)
            continue
        out.append((f, ds))
    if bad:
        raise DataError(f"{path}: {len(bad)} file(s) pydicom cannot read as DICOM: {list_some(bad)}")
    if no_image:
        raise DataError(f"{path}: {len(no_image)} DICOM file(s) hold no image (no Rows/Columns): {list_some(no_image)}")
    return out


def scan_series(path: str | os.PathLike) -> Series:
    """Read and check every header of a series folder (or one ``.dcm`` file); no pixels decoded.

    Raises:
        DataError: no DICOM images, several series, multi-frame images, slices of different
            size, orientation or pixel spacing, a duplicated slice, a missing slice, non-uniform
            slice spacing — one line naming the series and what is wrong.
    """
    path = Path(path)
    headers = _headers(path)
    series: dict[str, list[tuple[Path, Any]]] = {}
    for f, ds in headers:
        series.setdefault(str(ds.get("SeriesInstanceUID", "")), []).append((f, ds))
    if len(series) > 1:
        parts = []
        for uid, members in series.items():
            ds = members[0][1]
            what = " ".join(str(ds.get(t, "")) for t in ("SeriesNumber", "SeriesDescription")).strip()
            parts.append(f"{uid or '(no SeriesInstanceUID)'}{f' ({what})' if what else ''}: {len(members)} file(s)")
        raise DataError(
            f"{path}: {len(series)} DICOM series in one folder ({'; '.join(parts)}); put each series in its own folder"
        )
    uid = next(iter(series))
    name = f"{path} (series {uid})" if uid else str(path)
    multi = [f.name for f, ds in headers if int(ds.get("NumberOfFrames", 1) or 1) > 1]
    if multi:
        raise DataError(f"{name}: multi-frame DICOM images are not supported: {list_some(multi)}")
    sizes = {(int(ds.Rows), int(ds.Columns)) for _, ds in headers}
    if len(sizes) > 1:
        raise DataError(f"{name}: slices of different sizes (rows x columns {sorted(sizes)})")
    rows, cols = sizes.pop()
    first_file, first = headers[0]
    orient = _floats(first, "ImageOrientationPatient", 6, first_file)
    spacing = _floats(first, "PixelSpacing", 2, first_file)
    spacing = np.ones(2) if spacing is None else spacing
    if orient is None:
        if len(headers) > 1:
            raise DataError(f"{name}: no ImageOrientationPatient; the slices cannot be ordered")
        orient = np.array([1.0, 0, 0, 0, 1, 0])
    row_cos, col_cos = orient[:3], orient[3:]
    normal = np.cross(row_cos, col_cos)
    positions = []
    for f, ds in headers:
        o = _floats(ds, "ImageOrientationPatient", 6, f)
        if o is not None and not np.allclose(o, orient, atol=1e-4):
            raise DataError(
                f"{name}: {f.name} has ImageOrientationPatient {o.tolist()}, {first_file.name} {orient.tolist()}"
            )
        s = _floats(ds, "PixelSpacing", 2, f)
        if s is not None and not np.allclose(s, spacing, rtol=1e-4):
            raise DataError(f"{name}: {f.name} has PixelSpacing {s.tolist()}, {first_file.name} {spacing.tolist()}")
        ipp = _floats(ds, "ImagePositionPatient", 3, f)
        if ipp is None:
            if len(headers) > 1:
                raise DataError(f"{name}: {f.name} has no ImagePositionPatient; the slices cannot be ordered")
            ipp = np.zeros(3)
        positions.append(ipp)
    order = np.argsort([float(p @ normal) for p in positions], kind="stable")
    files = [headers[i][0] for i in order]
    pos = np.asarray([positions[i] for i in order])
    along = pos @ normal
    if len(files) > 1:
        _check_steps(name, files, along)
        step = (pos[-1] - pos[0]) / (len(files) - 1)
    else:
        thick = first.get("SpacingBetweenSlices") or first.get("SliceThickness") or 1.0
        step = normal * float(thick)
    lps = np.eye(4)
    lps[:3, 0] = row_cos * spacing[1]  # x: along a row, i.e. the column index
    lps[:3, 1] = col_cos * spacing[0]  # y: down a column, the row index
    lps[:3, 2] = step
    lps[:3, 3] = pos[0]
    return Series(tuple(files), (cols, rows, len(files)), LPS_TO_RAS @ lps, uid)


def _check_steps(name: str, files: list[Path], along: np.ndarray) -> None:
    steps = np.diff(along)
    dup = np.flatnonzero(np.abs(steps) < 1e-3)
    if dup.size:
        i = int(dup[0])
        raise DataError(
            f"{name}: duplicated slice: {files[i].name} and {files[i + 1].name} are both at {along[i]:.3f} mm "
            f"along the slice normal ({dup.size} such pair(s)); remove the copies"
        )
    typical = float(np.median(steps))
    off = np.flatnonzero(np.abs(steps - typical) > _TOLERANCE * typical)
    if not off.size:
        return
    i = int(off[0])
    ratio = steps[i] / typical
    where = f"between {files[i].name} ({along[i]:.3f} mm) and {files[i + 1].name} ({along[i + 1]:.3f} mm)"
    if ratio > 1.5 and abs(ratio - round(ratio)) < _TOLERANCE * round(ratio):
        missing = int(round(ratio)) - 1
        raise DataError(
            f"{name}: {missing} missing slice(s) {where}: a gap of {steps[i]:.3f} mm where slices are "
            f"{typical:.3f} mm apart ({len(files)} slices present)"
        )
    raise DataError(
        f"{name}: non-uniform slice spacing: steps of {steps.min():.3f} to {steps.max():.3f} mm, "
        f"{typical:.3f} mm typical, first odd step {where}; medseg does not resample a series "
        "(resample it to a uniform grid, e.g. to NIfTI, first)"
    )


def _values(ds: Any) -> np.ndarray:
    data = ds.pixel_array
    slope = float(ds.get("RescaleSlope", 1) or 1)
    intercept = float(ds.get("RescaleIntercept", 0) or 0)
    if slope == 1 and intercept == 0:
        return data
    return data.astype(np.float64) * slope + intercept


def read_series(path: str | os.PathLike) -> tuple[np.ndarray, Series]:
    """The volume ``X Y Z`` of rescaled values (HU for CT) and its checked :class:`Series`.

    Raises:
        DataError: everything :func:`scan_series` refuses; pixel data pydicom cannot decode
            (a compressed transfer syntax without its codec installed), naming the file.
    """
    series = scan_series(path)
    pydicom = _pydicom()
    slices = []
    for f in series.files:
        try:
            ds = pydicom.dcmread(f)
            values = _values(ds)
        except DataError:
            raise
        except Exception as err:
            text = str(err).strip().splitlines()
            why = text[0][:200] if text else type(err).__name__
            raise DataError(f"{f}: cannot decode the pixel data ({why})") from err
        if values.ndim != 2:
            raise DataError(f"{f}: pixel data of shape {values.shape} (colour DICOM is not supported)")
        slices.append(values.T)  # rows x columns -> X Y
    volume = np.stack(slices, axis=-1)
    if np.issubdtype(volume.dtype, np.floating):
        if np.array_equal(volume, np.round(volume)) and np.abs(volume).max(initial=0) < 2**31:
            low, high = volume.min(initial=0), volume.max(initial=0)
            volume = volume.astype(np.int16 if -(2**15) <= low and high < 2**15 else np.int32)
        else:
            volume = volume.astype(np.float32)
    return volume, series


def write_seg(fh: Any, labels: np.ndarray, source: str | os.PathLike, label_values: list[int]) -> None:
    """Write ``labels`` (``X Y Z`` raw label values on the grid of the series ``source``) to the
    open binary file ``fh`` as a DICOM Segmentation (binary, one segment per foreground class)
    with highdicom, referencing every source slice. Segment ``i`` is the class of raw value
    ``label_values[i]``, labelled ``label <value>``, so segment numbers are the same in every case
    of a dataset. Missing Type 2 attributes of the source (``PatientBirthDate``...) are given
    empty, as the standard allows; the sources on disk are not changed.

    Raises:
        DataError: everything :func:`scan_series` refuses, or labels off the series' grid.
        MedsegError: highdicom is not installed.
    """
    from pipeline.errors import MedsegError

    try:
        import highdicom as hd
        from pydicom.sr.codedict import codes
    except ImportError:
        raise MedsegError("writing DICOM-SEG needs highdicom: pip install 'medseg[dicom]'") from None
    pydicom = _pydicom()
    series = scan_series(source)
    if tuple(labels.shape) != series.shape:
        raise DataError(f"{source}: labels of shape {tuple(labels.shape)} are not on the series' grid {series.shape}")
    images = [pydicom.dcmread(f, stop_before_pixels=True) for f in series.files]
    for ds in images:
        for keyword in (
            "PatientName",
            "PatientID",
            "PatientBirthDate",
            "PatientSex",
            "StudyDate",
            "StudyTime",
            "ReferringPhysicianName",
            "StudyID",
            "AccessionNumber",
        ):
            if keyword not in ds:
                setattr(ds, keyword, "")
    algorithm = hd.AlgorithmIdentificationSequence(
        name="medseg", version="0.1.0", family=codes.DCM.ArtificialIntelligence
    )
    foreground = list(label_values[1:])
    segments = [
        hd.seg.SegmentDescription(
            segment_number=i,
            segment_label=f"label {value}",
            segmented_property_category=codes.SCT.Tissue,
            segmented_property_type=codes.SCT.Tissue,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm,
        )
        for i, value in enumerate(foreground, start=1)
    ]
    masks = np.stack([np.asarray(labels) == v for v in foreground], axis=-1)  # X Y Z S
    frames = np.ascontiguousarray(np.transpose(masks, (2, 1, 0, 3)))  # slices, rows, columns, segments
    seg = hd.seg.Segmentation(
        source_images=images,
        pixel_array=frames.astype(np.uint8),
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=segments,
        series_instance_uid=hd.UID(),
        series_number=int(images[0].get("SeriesNumber", 0) or 0) + 1000,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="medseg",
        manufacturer_model_name="medseg",
        software_versions="0.1.0",
        device_serial_number="0",
        series_description="medseg segmentation",
        omit_empty_frames=False,
    )
    seg.save_as(fh, enforce_file_format=True)
