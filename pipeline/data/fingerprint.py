"""Dataset fingerprints: what the planner needs to know about a dataset, measured once and cached.

Per case: shape and spacing (3D: in RAS axis order, the order the transform chain reorients to;
2D: ``W H``, the loader's order), orientation codes, channels, intensity statistics inside the
foreground (0.5 / 99.5 percentiles, mean, std; nnU-Net's ``fingerprint_extractor.py`` does the
same on a sample of foreground voxels), voxel counts per label value, connected components per
class, a thin-structure indicator (skeleton length / foreground volume on a label downsampled to
at most :data:`SKELETON_SIZE` per axis: about ``1 / thickness``, ~0.3 for vessels, < 0.1 for
blobs), and, for instance layouts (DSB2018), the fraction of object boundary that touches another
object. Aggregated: medians, pooled foreground intensity samples per channel, and a modality per
channel from the layout (``dataset.json``) or guessed (HU range for CT).

Computed in parallel over cases with a process pool and a progress line on stderr, and cached as
``fingerprint.json`` keyed by the list of files with their sizes and modification times.

Example:
    >>> import tempfile
    >>> from pipeline.data.synth import make_dataset
    >>> root = make_dataset("cell", tempfile.mkdtemp(), n=2, seed=0)
    >>> fp = compute_fingerprint(root, workers=0, progress=False)
    >>> fp["format"], fp["spatial_dims"], fp["num_cases"]
    ('dsb2018', 2, 2)
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.errors import DataError
from pipeline.io import read_image, read_label

__all__ = [
    "FINGERPRINT_FILE",
    "SKELETON_SIZE",
    "compute_fingerprint",
    "detect_format",
    "fingerprint_summary",
    "read_items",
]

FINGERPRINT_FILE = "fingerprint.json"
#: Labels are subsampled to at most this many voxels per axis before skeletonising.
SKELETON_SIZE = (512, 512, 128)
#: Foreground voxels sampled per case and channel for the pooled intensity statistics.
SAMPLES_PER_CASE = 20_000
_VERSION = 1


def detect_format(root: str | Path) -> str:
    """The layout of the dataset under ``root``.

    ``dataset.json`` + ``imagesTr``: ``nnunet`` when image files end in ``_0000`` (one file per
    channel), else ``msd``; ``training/images`` + ``training/1st_manual``: ``drive``;
    ``stage1_train/*/images`` (or ``*/images`` + ``*/masks`` under root): ``dsb2018``;
    ``images/`` + ``labels/``: ``folders``.

    Raises:
        DataError: no known layout, naming what was looked for.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: folder not found")
    if (root / "dataset.json").is_file() and (root / "imagesTr").is_dir():
        stems = [p.name for p in (root / "imagesTr").iterdir() if not p.name.startswith(".")]
        return "nnunet" if stems and all(re.search(r"_\d{4}$", _stem(s)) for s in stems) else "msd"
    if (root / "training" / "images").is_dir() and (root / "training" / "1st_manual").is_dir():
        return "drive"
    base = root / "stage1_train" if (root / "stage1_train").is_dir() else root
    if any((d / "images").is_dir() and (d / "masks").is_dir() for d in base.iterdir() if d.is_dir()):
        return "dsb2018"
    if (root / "images").is_dir() and (root / "labels").is_dir():
        return "folders"
    raise DataError(
        f"{root}: no known dataset layout (looked for dataset.json + imagesTr (msd/nnunet), training/images + "
        f"training/1st_manual (drive), stage1_train/*/images (dsb2018), images/ + labels/ (folders)); pass --format"
    )


def _stem(name: str) -> str:
    for suffix in (".nii.gz", ".nii", ".mha", ".nrrd", ".png", ".tif", ".tiff"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def read_items(root: str | Path, fmt: str | None = None) -> tuple[str, Any]:
    """Detect (or take) the layout and read the dataset with the layout's reader.

    Returns:
        ``(format, dataset)``: :class:`pipeline.data.layouts.Dataset`.
    """
    from pipeline.data.datalist import read_dataset
    from pipeline.data.schema import data_schema

    fmt = fmt or detect_format(root)
    data = data_schema().validate({"format": fmt, "root": str(root)}, "data")
    return fmt, read_dataset(data)


# --- reading (kept in one function so the I/O layer can replace it) ---------------------------


def _read_case(item: Mapping[str, Any]) -> dict[str, Any]:
    """Read one case through :mod:`pipeline.io` (the one reader): ``image`` ``C × spatial``
    float32, ``label`` (spatial ints, 0 background), ``instance`` (spatial ids or None),
    ``spacing`` and ``axcodes``, 3D in RAS axis order (what training reorients to)."""
    import nibabel as nib

    images = item["image"] if isinstance(item["image"], list) else [item["image"]]
    loaded = [read_image(p) for p in images]
    image = np.concatenate([np.asarray(x) for x in loaded])
    labels = item["label"] if isinstance(item["label"], list) else None
    if labels is not None:  # one binary mask per object (DSB2018)
        instance = np.zeros(image.shape[1:], np.int32)
        for k, path in enumerate(labels, 1):
            instance[read_label(path).array > 0] = k
        label = (instance > 0).astype(np.int32)
    else:
        read = read_label(item["label"])
        label, instance = read.array, None
    if image.ndim == 3:
        return {"image": image, "label": label, "instance": instance, "spacing": (1.0, 1.0), "axcodes": None}
    affine = np.asarray(loaded[0].affine, dtype=np.float64)
    # voxel axis v goes to world axis ornt[v, 0]: report everything in RAS axis order
    order = np.argsort(nib.io_orientation(affine)[:, 0].astype(int))
    zooms = np.sqrt((affine[:3, :3] ** 2).sum(0))
    return {
        "image": image.transpose(0, *(order + 1)),
        "label": label.transpose(order),
        "instance": instance.transpose(order) if instance is not None else None,
        "spacing": tuple(float(zooms[v]) for v in order),
        "axcodes": "".join(nib.aff2axcodes(affine)),
    }


# --- per case ------------------------------------------------------------------------------------


def _skeleton_ratio(mask: np.ndarray) -> float:
    """Skeleton voxels / foreground voxels on ``mask`` subsampled to :data:`SKELETON_SIZE`."""
    from skimage.morphology import skeletonize

    limit = SKELETON_SIZE[: mask.ndim] if mask.ndim == 3 else SKELETON_SIZE[:2]
    step = tuple(max(1, -(-s // m)) for s, m in zip(mask.shape, limit, strict=True))
    small = mask[tuple(slice(None, None, k) for k in step)]
    volume = int(small.sum())
    if volume == 0:
        return 0.0
    return float(skeletonize(small).sum() / volume)


def _touching_fraction(instance: np.ndarray) -> float:
    """Fraction of object boundary pixels whose 4/6-neighbour belongs to another object."""
    boundary = touching = 0
    for axis in range(instance.ndim):
        a = np.moveaxis(instance, axis, 0)
        lo, hi = a[:-1], a[1:]
        edge = lo != hi
        boundary += int((edge & ((lo > 0) | (hi > 0))).sum())
        touching += int((edge & (lo > 0) & (hi > 0)).sum())
    return touching / boundary if boundary else 0.0


def _case_fingerprint(args: tuple[Mapping[str, Any], int]) -> dict[str, Any]:
    from scipy import ndimage

    item, seed = args
    start = time.perf_counter()
    case = _read_case(item)
    image, label = case["image"], np.asarray(case["label"])
    if label.shape != image.shape[1:]:
        raise DataError(f"{item['label']}: label shape {label.shape} differs from image shape {image.shape[1:]}")
    values, counts = np.unique(label, return_counts=True)
    background = values.min()
    fg = label != background
    if not fg.any():
        fg = np.ones_like(fg)
    rng = np.random.default_rng([seed, int(hashlib.sha1(str(item["case"]).encode()).hexdigest()[:8], 16)])
    channels = []
    for c in range(image.shape[0]):
        voxels = image[c][fg]
        sample = voxels if voxels.size <= SAMPLES_PER_CASE else rng.choice(voxels, SAMPLES_PER_CASE, replace=False)
        p_lo, p_hi = np.percentile(voxels, [0.5, 99.5])
        channels.append(
            {
                "mean": float(voxels.mean()),
                "std": float(voxels.std()),
                "p00_5": float(p_lo),
                "p99_5": float(p_hi),
                "image_min": float(image[c].min()),
                "image_max": float(image[c].max()),
                "sample": sample.astype(np.float32),
            }
        )
    components = {}
    for v in values:
        if v == background:
            continue
        _, n = ndimage.label(label == v)
        components[str(v.item())] = int(n)
    coords = np.argwhere(fg)
    bbox = (coords.max(0) - coords.min(0) + 1) if coords.size else np.array(label.shape)
    out = {
        "case": str(item["case"]),
        "shape": [int(s) for s in label.shape],
        "spacing": [float(s) for s in case["spacing"]],
        "axcodes": case["axcodes"],
        "channels": int(image.shape[0]),
        "label_counts": {str(v.item()): int(n) for v, n in zip(values, counts, strict=True)},
        "components": components,
        "foreground_fraction": float(fg.mean()),
        "foreground_bbox": [int(b) for b in bbox],
        "skeleton_ratio": _skeleton_ratio(fg),
        "intensity": channels,
    }
    out["seconds"] = time.perf_counter() - start
    if case["instance"] is not None:
        out["instances"] = int(case["instance"].max())
        out["touching_fraction"] = _touching_fraction(case["instance"])
    return out


# --- dataset -------------------------------------------------------------------------------------


def _files(item: Mapping[str, Any]) -> list[str]:
    out = []
    for key in ("image", "label"):
        value = item.get(key)
        out += [str(v) for v in value] if isinstance(value, list) else [str(value)]
    return out


def _cache_key(fmt: str, items: Sequence[Mapping[str, Any]]) -> str:
    h = hashlib.sha256(f"v{_VERSION} {fmt} {SAMPLES_PER_CASE}".encode())
    for item in items:
        for path in _files(item):
            st = os.stat(path)
            h.update(f"{path}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def _guess_modality(names: Sequence[str] | None, channel: int, stats: Mapping[str, float], dims: int) -> str:
    if names and channel < len(names):
        name = names[channel].strip()
        if name.upper() in ("CT", "CTA", "CBCT"):
            return "CT"
        if name:
            return name
    # CT in Hounsfield units: air at about -1000, bone above +300
    if dims == 3 and stats["image_min"] <= -500 and stats["image_max"] >= 200:
        return "CT"
    return "unknown"


def _aggregate(fmt: str, dataset: Any, cases: list[dict[str, Any]]) -> dict[str, Any]:
    dims = len(cases[0]["shape"])
    shapes = np.array([c["shape"] for c in cases], float)
    spacings = np.array([c["spacing"] for c in cases], float)
    n_channels = cases[0]["channels"]
    if any(c["channels"] != n_channels for c in cases):
        bad = [c["case"] for c in cases if c["channels"] != n_channels][:3]
        raise DataError(f"cases differ in channel count ({n_channels} in {cases[0]['case']}, other in {bad})")
    intensity = []
    for ch in range(n_channels):
        pooled = np.concatenate([c["intensity"][ch]["sample"] for c in cases])
        lo, hi = np.percentile(pooled, [0.5, 99.5])
        stats = {
            "mean": float(pooled.mean()),
            "std": float(pooled.std()),
            "median": float(np.median(pooled)),
            "p00_5": float(lo),
            "p99_5": float(hi),
            "image_min": float(min(c["intensity"][ch]["image_min"] for c in cases)),
            "image_max": float(max(c["intensity"][ch]["image_max"] for c in cases)),
        }
        stats["modality"] = _guess_modality(dataset.channels, ch, stats, dims)
        intensity.append(stats)
    values = sorted({int(v) for c in cases for v in c["label_counts"]})
    total = sum(sum(c["label_counts"].values()) for c in cases)
    frequency = {str(v): sum(c["label_counts"].get(str(v), 0) for c in cases) / total for v in values}
    components = {
        str(v): float(np.median([c["components"].get(str(v), 0) for c in cases])) for v in values if v != values[0]
    }
    out = {
        "version": _VERSION,
        "format": fmt,
        "num_cases": len(cases),
        "spatial_dims": dims,
        "channels": n_channels,
        "channel_names": list(dataset.channels) if dataset.channels else None,
        "labels": {str(k): v for k, v in dataset.labels.items()} if dataset.labels else None,
        "label_values": values,
        "class_frequency": frequency,
        "components_median": components,
        "median_shape": [float(s) for s in np.median(shapes, 0)],
        "min_shape": [int(s) for s in shapes.min(0)],
        "median_spacing": [float(s) for s in np.median(spacings, 0)],
        "spacing_p10": [float(s) for s in np.percentile(spacings, 10, 0)],
        "spacings": spacings.tolist(),
        "shapes": shapes.astype(int).tolist(),
        "axcodes": sorted({c["axcodes"] for c in cases if c["axcodes"]}),
        "foreground_fraction_median": float(np.median([c["foreground_fraction"] for c in cases])),
        "skeleton_ratio_median": float(np.median([c["skeleton_ratio"] for c in cases])),
        "seconds_per_case": float(np.median([c["seconds"] for c in cases])),
        "intensity": intensity,
        "cases": [{k: v for k, v in c.items() if k not in ("intensity", "seconds")} for c in cases],
    }
    if "instances" in cases[0]:
        out["instances_median"] = float(np.median([c["instances"] for c in cases]))
        out["touching_fraction_median"] = float(np.median([c["touching_fraction"] for c in cases]))
    return out


def compute_fingerprint(
    root: str | Path,
    fmt: str | None = None,
    *,
    output_dir: str | Path | None = None,
    workers: int | None = None,
    progress: bool = True,
    seed: int = 0,
) -> dict[str, Any]:
    """Fingerprint the labelled cases of the dataset under ``root`` (cached).

    Args:
        root: dataset folder.
        fmt: layout (``data.format``); ``None`` detects it (:func:`detect_format`).
        output_dir: where ``fingerprint.json`` is read from and written to; ``None``: not cached.
        workers: processes; ``None``: one per CPU core up to the number of cases; 0: in this process.
        progress: print ``fingerprint: k/n cases`` on stderr.
        seed: seed of the foreground voxel samples.

    Returns:
        The fingerprint (JSON-compatible dict; see the module docstring).

    Raises:
        DataError: unknown layout, unreadable file, or inconsistent cases.
    """
    fmt, dataset = read_items(root, fmt)
    items = list(dataset.items)
    key = _cache_key(fmt, items)
    cache = Path(output_dir) / FINGERPRINT_FILE if output_dir is not None else None
    if cache is not None and cache.is_file():
        try:
            cached = json.loads(cache.read_text())
        except (OSError, ValueError):
            cached = {}
        if cached.get("key") == key:
            return cached
    n = len(items)
    if workers is None:
        workers = min(os.cpu_count() or 1, n)
    tasks = [(item, seed) for item in items]
    cases: list[dict[str, Any]] = []

    def tick() -> None:
        if progress:
            end = "\n" if len(cases) == n else ""
            print(f"\rfingerprint: {len(cases)}/{n} cases", end=end, file=sys.stderr, flush=True)

    if workers <= 1:
        for task in tasks:
            cases.append(_case_fingerprint(task))
            tick()
    else:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            for result in pool.map(_case_fingerprint, tasks):
                cases.append(result)
                tick()
    fp = _aggregate(fmt, dataset, cases)
    fp["root"] = str(Path(root).resolve())
    fp["key"] = key
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(fp, indent=1))
        os.replace(tmp, cache)
    return fp


def fingerprint_summary(fp: Mapping[str, Any]) -> str:
    """A few lines describing the fingerprint for the terminal."""
    x = " × ".join
    lines = [
        f"dataset: {fp['num_cases']} cases, {fp['format']} layout, {fp['spatial_dims']}D, {fp['channels']} channel(s)",
        f"  median shape {x(f'{s:g}' for s in fp['median_shape'])} voxels, "
        f"median spacing {x(f'{s:.3g}' for s in fp['median_spacing'])}"
        + (f", orientation {', '.join(fp['axcodes'])}" if fp["axcodes"] else ""),
    ]
    for c, st in enumerate(fp["intensity"]):
        lines.append(
            f"  channel {c} ({st['modality']}): foreground mean {st['mean']:.4g} std {st['std']:.4g}, "
            f"0.5-99.5% [{st['p00_5']:.4g}, {st['p99_5']:.4g}]"
        )
    freq = ", ".join(f"{v}: {f:.2%}" for v, f in fp["class_frequency"].items())
    comps = ", ".join(f"{v}: {n:g}" for v, n in fp["components_median"].items())
    lines.append(f"  label values {fp['label_values']} (voxel share {freq}); components per case {comps}")
    extra = f"  skeleton/volume {fp['skeleton_ratio_median']:.3f}"
    if "touching_fraction_median" in fp:
        extra += (
            f", {fp['instances_median']:g} objects per case, {fp['touching_fraction_median']:.1%} boundary touching"
        )
    lines.append(extra)
    return "\n".join(lines)
