"""Write a DICOM series from a volume and a RAS affine with pydicom (for the tests only).

One CT slice per file: ``ImagePositionPatient`` / ``ImageOrientationPatient`` / ``PixelSpacing``
from the affine (RAS -> LPS), stored values ``(HU - intercept) / slope``, files named in a
shuffled order so nothing can rely on the names.
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np


def write_series(
    folder: str | Path,
    volume: np.ndarray,
    affine: np.ndarray,
    *,
    slope: float = 1.0,
    intercept: float = -1024.0,
    series_uid: str | None = None,
    shuffle_seed: int | None = 0,
    skip: tuple[int, ...] = (),
) -> list[Path]:
    """Write ``volume`` (``X Y Z`` values, e.g. HU) as one series; returns the files written."""
    import pydicom
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ np.asarray(affine, dtype=np.float64)
    dx, dy = np.linalg.norm(lps[:3, 0]), np.linalg.norm(lps[:3, 1])
    row_cos, col_cos = lps[:3, 0] / dx, lps[:3, 1] / dy
    series_uid = series_uid or generate_uid()
    study_uid = generate_uid()
    frame_uid = generate_uid()
    stored = np.round((np.asarray(volume, np.float64) - intercept) / slope).astype(np.int16)
    names = [f"IM{i:04d}.dcm" for i in range(volume.shape[2])]
    if shuffle_seed is not None:
        random.Random(shuffle_seed).shuffle(names)
    written = []
    for k in range(volume.shape[2]):
        if k in skip:
            continue
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        path = folder / names[k]
        ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
        ds.Modality = "CT"
        ds.PatientName = "Test^Series"
        ds.PatientID = "0"
        ds.PatientBirthDate = ds.PatientSex = ds.ReferringPhysicianName = ds.AccessionNumber = ""
        ds.StudyDate, ds.StudyTime, ds.StudyID = "20260101", "120000", "1"
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = series_uid
        ds.FrameOfReferenceUID = frame_uid
        ds.SeriesNumber = 1
        ds.InstanceNumber = volume.shape[2] - k  # reversed on purpose: sorting must use positions
        ds.ImagePositionPatient = [f"{v:.6f}" for v in (lps[:3, 3] + k * lps[:3, 2])]
        ds.ImageOrientationPatient = [f"{v:.8f}" for v in (*row_cos, *col_cos)]
        ds.PixelSpacing = [f"{dy:.6f}", f"{dx:.6f}"]  # row spacing (between rows), column spacing
        ds.SliceThickness = f"{np.linalg.norm(lps[:3, 2]):.6f}"
        ds.Rows, ds.Columns = volume.shape[1], volume.shape[0]
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated = ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelRepresentation = 1
        ds.RescaleSlope = f"{slope:g}"
        ds.RescaleIntercept = f"{intercept:g}"
        ds.PixelData = np.ascontiguousarray(stored[:, :, k].T).tobytes()
        pydicom.dcmwrite(path, ds, enforce_file_format=True)
        written.append(path)
    return written
