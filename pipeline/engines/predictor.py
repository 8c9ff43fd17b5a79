"""From a checkpoint to label maps on disk (``medseg infer``) or to metrics (``medseg evaluate -c``).

:class:`Predictor` loads a checkpoint (``weights_only=True``), builds the network and the
``infer`` transform chain of its config, runs :func:`pipeline.engines.inferer.predict` on each
case and undoes the chain's spatial steps (orientation, spacing) with MONAI's ``Invertd``, so
predictions come back in the geometry of the file they were made from:

- NIfTI in, NIfTI out, with the input's affine and header (data type uint8, or int16 past 255
  classes); NRRD / MetaImage in, the same format out with the input's geometry;
- a DICOM series (a folder) or ``.dcm`` in, NIfTI (``<folder>.nii.gz``) out with its affine;
- PNG / TIFF / GIF / JPEG in, PNG out at the input's size;
- or the format ``medseg infer --format`` names (:data:`OUTPUT_FORMATS`), with the same shape
  and geometry.

Class indices are written as the raw label values of the config (``transforms.label_values``,
e.g. 0/255 for DRIVE), so a prediction looks like the dataset's own labels.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import Invertd
from tqdm.auto import tqdm

from pipeline.config import Config, load_config, resolve
from pipeline.data.labels import fill_label_values
from pipeline.data.loaders import build_chain
from pipeline.engines import factory, html_report
from pipeline.engines.checkpoint import load_checkpoint
from pipeline.engines.inferer import WindowCache, autocast_dtype, predict, to_labels
from pipeline.engines.inputs import as_image, read_any
from pipeline.engines.members import checkpoint_paths, inference_shard, member_configs, resolve_postprocessing
from pipeline.engines.postprocessing import apply_postprocessing
from pipeline.errors import DataError, MedsegError, list_some
from pipeline.instances.output import settings_from, write_instances
from pipeline.instances.schema import is_instance
from pipeline.io import (
    SUFFIXES,
    VOLUME_KINDS,
    atomic_write,
    check_file,
    check_readable,
    file_kind,
    list_folder,
    read_image,
    split_suffix,
    write_dicom_seg,
    write_label,
)
from transforms import keys

__all__ = [
    "Predictor",
    "Prediction",
    "Segmenter",
    "run_inference",
    "evaluate_split",
    "output_name",
    "find_inputs",
    "OUTPUT_FORMATS",
]

OUTPUT_FORMATS = ("nii.gz", "nii", "nrrd", "mha", "mhd", "png", "tif", "dcmseg")
"""What ``medseg infer --format`` writes (default: the input's own format; NIfTI for DICOM).
``dcmseg``: a DICOM Segmentation ``<series>.seg.dcm`` referencing its DICOM input (highdicom)."""


def output_name(path: str | os.PathLike, fmt: str | None = None) -> str:
    """The prediction's file name: NIfTI, NRRD and MetaImage keep their name, a DICOM series
    (folder or ``.dcm``) becomes ``<name>.nii.gz``, 2D images ``<stem>.png``; ``fmt`` (one of
    :data:`OUTPUT_FORMATS`) replaces the suffix.

    Example:
        >>> output_name("case_01.nii.gz"), output_name("21_training.tif"), output_name("ct.mha", "nii.gz")
        ('case_01.nii.gz', '21_training.png', 'ct.nii.gz')
    """
    name = Path(path).name
    kind = file_kind(path)
    stem = name if kind == "dicom" and Path(path).is_dir() else split_suffix(name)[0]
    if fmt is not None:
        fmt = fmt.lower().lstrip(".")
        return f"{stem}.seg.dcm" if fmt == "dcmseg" else f"{stem}.{fmt}"
    if kind in ("nifti", "itk"):
        return name
    if kind == "dicom":
        return stem + ".nii.gz"
    return stem + ".png"


def find_inputs(source: str | os.PathLike) -> list[Path]:
    """Image files of a file or a folder (sorted; hidden and macOS ``._`` files skipped).

    Files of a folder that this tool does not read (``.mha``, ``.txt``) are skipped with a
    warning that names them; a dangling symbolic link is an error.

    Raises:
        DataError: nothing usable there, a dangling link, or two inputs with the same output name.
    """
    source = Path(source)
    if source.is_file() or source.is_symlink() or file_kind(source) == "dicom":
        return [check_file(source)]  # a file, or one DICOM series folder
    if not source.is_dir():
        raise DataError(f"{source}: no such file or folder")
    entries = list_folder(source)
    files = [p for p in entries if (p.is_file() or p.is_dir()) and file_kind(p) is not None]  # series folders too
    skipped = [p.name for p in entries if p.is_file() and file_kind(p) is None]
    if not files:
        found = f"; found only {list_some(skipped)}" if skipped else ""
        raise DataError(f"{source}: no images found ({', '.join(SUFFIXES)}){found}")
    if skipped:
        warnings.warn(
            f"{source}: skipping {len(skipped)} file(s) of a type this tool does not read "
            f"({', '.join(SUFFIXES)}): {list_some(skipped)}",
            stacklevel=2,
        )
    names = [output_name(p) for p in files]
    clash = sorted({n for n in names if names.count(n) > 1})
    if clash:
        raise DataError(f"{source}: several inputs would write the same output {clash[0]!r}; rename them")
    return files


@dataclass
class Prediction:
    """One case's result in the geometry of its input file (MONAI's loaded array order)."""

    probabilities: torch.Tensor  # K spatial, float32, CPU; one foreground channel for a sigmoid network
    labels: np.ndarray  # spatial, uint8/int16 class indices
    image: MetaTensor  # the transformed input (meta: filename, affine)


class Predictor:
    """A trained network, or an ensemble of them, ready to segment files.

    An ensemble (several checkpoints, or run folders: :func:`pipeline.engines.members.checkpoint_paths`)
    averages the members' class probabilities (softmax, or sigmoid for one channel) in the input
    file's geometry, each member with its own config, transform chain and TTA; the sum is kept in
    fp32 and members run one after another, so memory does not grow with their number. Members may
    be different networks or configs when their classes and label values agree.

    Args:
        checkpoint: path to a medseg checkpoint, a run folder, or a list of them (an ensemble).
        config: a resolved config to use instead of the checkpoint's own (its ``network`` must
            match the weights); ``None`` uses the checkpoint's. For an ensemble, a list with one
            entry (config or None) per member.
        device: ``auto``, ``cpu``, ``cuda``, ``cuda:N``; ``None`` takes ``infer.device``.
        tta / sw_batch_size / overlap: override the config's ``infer`` settings.
        progress: a progress bar over the sliding windows of each image.
        postprocessing: a spec of :mod:`pipeline.engines.postprocessing` applied to the labels.

    Raises:
        MedsegError: a damaged checkpoint, weights that do not fit the network, ensemble members
            that disagree on classes, and (when called) an image whose inference runs out of
            memory, with the setting that helps.
    """

    def __init__(
        self,
        checkpoint: str | os.PathLike,
        config: Config | None = None,
        *,
        device: str | None = None,
        tta: bool | None = None,
        sw_batch_size: int | None = None,
        overlap: float | None = None,
        progress: bool = False,
        postprocessing: Mapping[str, Any] | None = None,
    ) -> None:
        paths = checkpoint_paths(checkpoint)
        configs = list(config) if isinstance(config, (list, tuple)) else [config] + [None] * (len(paths) - 1)
        if len(configs) != len(paths):
            raise ValueError(f"{len(paths)} ensemble members but {len(configs)} configs")
        checkpoint, config = paths[0], configs[0]
        ckpt = load_checkpoint(checkpoint)
        self.config = config if config is not None else resolve(ckpt["config"], source=str(checkpoint))
        infer = dict(self.config["infer"])
        for key, value in (("tta", tta), ("sw_batch_size", sw_batch_size), ("overlap", overlap)):
            if value is not None:
                infer[key] = value
        self.infer = infer
        self.device = factory.select_device(device or infer["device"])
        self.network = factory.build_network(self.config)
        try:
            self.network.load_state_dict(ckpt["network"])
        except RuntimeError as err:
            first = str(err).strip().splitlines()[0]
            raise MedsegError(f"{checkpoint}: weights do not fit the configured network ({first})") from None
        self.network.to(self.device).eval()
        self.amp_dtype = autocast_dtype(infer["amp"], self.device, inference=True)
        self.chain = build_chain(self.config, "infer", reader=read_any)  # files and in-memory images
        self.label_values = self.config.label_values
        self.postprocess = ckpt.get("postprocess")  # an instance run's thresholds, chosen on validation
        self.progress = progress
        self.windows = WindowCache()  # window plans of the last image sizes, for this predictor only
        self.checkpoint = Path(checkpoint)
        self.postprocessing = postprocessing
        overrides = {"tta": tta, "sw_batch_size": sw_batch_size, "overlap": overlap}
        rest = zip(paths[1:], configs[1:], strict=True)
        self.members: list[Predictor] = [self] + [
            Predictor(p, c, device=device, progress=progress, **overrides) for p, c in rest
        ]
        for other in self.members[1:]:
            self._check_member(other)

    def _check_member(self, other: Predictor) -> None:
        """Members of one ensemble predict the same classes with the same label values."""
        mine = (self.config["network"]["out_channels"], self.config.num_classes, list(self.label_values or []))
        theirs = (other.config["network"]["out_channels"], other.config.num_classes, list(other.label_values or []))
        if mine != theirs or self.config.spatial_dims != other.config.spatial_dims:
            raise MedsegError(
                f"--checkpoint: ensemble members must agree on classes: {self.checkpoint} has {mine[0]} output "
                f"channel(s), {mine[1]} classes, label values {mine[2]}, {self.config.spatial_dims}D; "
                f"{other.checkpoint} has {theirs[0]}, {theirs[1]}, {theirs[2]}, {other.config.spatial_dims}D"
            )

    def __call__(self, item: Mapping[str, Any] | Any, spacing: Sequence[float] | None = None) -> Prediction:
        """Segment one datalist item, or one image: a path, an array, a tensor or a MetaTensor
        (:func:`pipeline.engines.inputs.as_image`, ``spacing`` for arrays); an ensemble averages
        its members."""
        probs, image = self._probabilities(item, spacing)
        for other in self.members[1:]:
            more, _ = other._probabilities(item, spacing)
            if more.shape != probs.shape:
                raise MedsegError(
                    f"{other.checkpoint}: its prediction has shape {tuple(more.shape)}, {self.checkpoint}'s "
                    f"{tuple(probs.shape)}; ensemble members must predict in the input's geometry"
                )
            probs += more  # fp32, in place: one extra probability map whatever the number of members
            del more
        if len(self.members) > 1:
            probs /= len(self.members)
        labels = to_labels(probs, dim=0).numpy().astype(np.uint8 if self.config.num_classes <= 256 else np.int16)
        if self.postprocessing:
            labels = apply_postprocessing(labels, self.postprocessing, _source_spacing(image, self.config.spatial_dims))
        return Prediction(probabilities=probs, labels=labels, image=image)

    def _probabilities(
        self, item: Mapping[str, Any] | Any, spacing: Sequence[float] | None
    ) -> tuple[torch.Tensor, Any]:
        """This member's probabilities in the input's geometry (fp32, CPU) and its transformed image."""
        if isinstance(item, Mapping):
            data = dict(item)
        else:
            default = self.config["transforms"].get("spacing") if self.config.spatial_dims == 3 else None
            data = {keys.IMAGE: as_image(item, spacing, self.config.spatial_dims, default)}
        data = {k: v for k, v in data.items() if k in (keys.IMAGE, keys.CASE)}
        data = self.chain(data)
        image = data[keys.IMAGE]
        try:
            probs = predict(
                self.network,
                image.as_tensor()[None] if isinstance(image, MetaTensor) else torch.as_tensor(image)[None],
                roi_size=self.infer["roi_size"],
                overlap=self.infer["overlap"],
                mode=self.infer["mode"],
                sw_batch_size=self.infer["sw_batch_size"] or "auto",
                tta=self.infer["tta"],
                tta_axes=self.config["transforms"]["augment"]["flip"]["axes"],  # the axes training flips
                compile=self.infer["compile"],
                amp_dtype=self.amp_dtype,
                device=self.device,
                progress=self.progress,
                cache=self.windows,
            )[0]
            probs = self._invert(probs.cpu(), data).float()
        except (MemoryError, RuntimeError) as err:
            if not _out_of_memory(err):
                raise
            source = data[keys.IMAGE].meta.get("filename_or_obj") if isinstance(image, MetaTensor) else None
            source = source or (item if isinstance(item, (str, os.PathLike, Mapping)) else "an array")
            raise MedsegError(self._memory_advice(source, tuple(image.shape))) from None
        return probs, image

    def _memory_advice(self, source: Any, shape: tuple[int, ...]) -> str:
        gib = self.config.num_classes * int(np.prod(shape[1:])) * 4 / 2**30
        where = f"out of memory segmenting {source} (shape {shape}, {gib:.1f} GiB of class probabilities)"
        if self.device.type == "cuda":
            # the output is already stitched on the CPU when it does not fit; what is left is the windows
            return f"{where} on {self.device}: try --set infer.sw_batch_size=1, --no-tta, or --device cpu"
        return f"{where}: free memory, run where more is available, or resample coarser with transforms.spacing"

    def _invert(self, probs: torch.Tensor, data: Mapping[str, Any]) -> torch.Tensor:
        image = data[keys.IMAGE]
        if not isinstance(image, MetaTensor) or not image.applied_operations:
            return probs
        pred = MetaTensor(probs, meta=dict(image.meta))
        out = Invertd(keys="pred", transform=self.chain, orig_keys=keys.IMAGE, nearest_interp=False)(
            {keys.IMAGE: image, "pred": pred}
        )["pred"]
        return torch.as_tensor(out).float()

    def raw_values(self, labels: np.ndarray) -> np.ndarray:
        """Class indices → the dataset's raw label values (``transforms.label_values``)."""
        if not self.label_values:
            return labels
        lut = np.asarray(self.label_values, dtype=np.float64)
        if lut.max() <= 255 and lut.min() >= 0:
            return lut.astype(np.uint8)[labels]
        return lut.astype(np.int16)[labels]


def _source_spacing(image: Any, spatial_dims: int) -> tuple[float, ...] | None:
    """Voxel size of the file an image was loaded from (its original affine), None when unknown."""
    meta = getattr(image, "meta", None) or {}
    affine = meta.get("original_affine")
    if affine is None:
        return None
    affine = np.asarray(affine, dtype=np.float64)
    return tuple(float(v) for v in np.linalg.norm(affine[:-1, :spatial_dims], axis=0))


class Segmenter:
    """A trained network that segments one image at a time.

    Args:
        predictor: the :class:`~pipeline.engines.predictor.Predictor` to use; usually made by
            :meth:`from_checkpoint`.
    """

    def __init__(self, predictor: Predictor) -> None:
        self.predictor = predictor

    @classmethod
    def from_checkpoint(
        cls,
        path: str | os.PathLike,
        device: str = "cpu",
        *,
        config: Config | None = None,
        tta: bool | None = None,
        sw_batch_size: int | None = None,
        overlap: float | None = None,
        progress: bool = False,
    ) -> Segmenter:
        """Load a medseg checkpoint (``weights_only``) for ``device`` (``cpu``, ``cuda``, ``auto``).

        The other options override the checkpoint's ``infer`` settings, as ``medseg infer`` does.

        Raises:
            MedsegError: a damaged checkpoint or weights that do not fit its network.
        """
        predictor = Predictor(
            path, config, device=device, tta=tta, sw_batch_size=sw_batch_size, overlap=overlap, progress=progress
        )
        return cls(predictor)

    @property
    def label_values(self) -> list[int] | None:
        """The raw label value of each class (``transforms.label_values``), what :meth:`predict` returns."""
        return self.predictor.label_values

    @property
    def spatial_dims(self) -> int:
        return self.predictor.config.spatial_dims

    def segment(self, image: Any, spacing: Sequence[float] | None = None) -> Prediction:
        """Probabilities, class indices and the transformed input (:class:`Prediction`) of one image."""
        return self.predictor(image, spacing=spacing)

    def predict(self, image: Any, spacing: Sequence[float] | None = None) -> np.ndarray:
        """The label map of ``image`` in its own shape and axis order, as raw label values (the
        dataset's, e.g. 0/255; what ``medseg infer`` writes).

        Raises:
            MedsegError: an input of the wrong shape or type (one line), out of memory.
            DataError: a path that cannot be read.
        """
        return self.predictor.raw_values(self.segment(image, spacing).labels)

    def predict_proba(self, image: Any, spacing: Sequence[float] | None = None) -> np.ndarray:
        """Class probabilities ``K`` x the input's spatial shape, float32 (one foreground
        channel for a sigmoid network)."""
        return self.segment(image, spacing).probabilities.numpy()

    __call__ = predict


def _out_of_memory(err: BaseException) -> bool:
    """CUDA's OutOfMemoryError, NumPy's MemoryError, or the CPU allocator's RuntimeError."""
    if isinstance(err, (MemoryError, torch.OutOfMemoryError)):
        return True
    return "can't allocate memory" in str(err) or "out of memory" in str(err).lower()


def write_prediction(
    labels: np.ndarray,
    source: str | os.PathLike,
    target: str | os.PathLike,
    probabilities: torch.Tensor | None = None,
    label_values: Sequence[int] | None = None,
) -> list[Path]:
    """Write ``labels`` (the loaded array order of ``source``, :mod:`pipeline.io`) atomically.

    The target's suffix picks the format. A volume target (NIfTI, NRRD, MetaImage) takes the
    source's geometry (a NIfTI from a NIfTI its whole header); a 2D target is a picture at the
    source's size. The optional ``<stem>_probabilities.npz`` holds ``K`` maps (float16) in the
    source's own order: ``K X Y Z`` for volumes, ``K H W`` (rows first, like a PNG's pixels) for
    2D pictures.

    A ``.dcm`` target is a DICOM Segmentation of the DICOM ``source`` (one segment per foreground
    value of ``label_values``, default ``0..max``).

    Raises:
        MedsegError: a 3D prediction asked for as a 2D picture.
    """
    target = Path(target)
    volume = file_kind(source) in VOLUME_KINDS
    if file_kind(target) == "dicom":
        values = list(label_values) if label_values else list(range(int(labels.max(initial=0)) + 1))
        return [write_dicom_seg(target, labels, source, values)]
    if file_kind(target) == "2d" and labels.ndim != 2:
        raise MedsegError(
            f"{target.name}: a {labels.ndim}D prediction of {Path(source).name} cannot be a 2D picture; "
            "choose --format nii.gz, nrrd or mha"
        )
    written = [write_label(target, labels, like=source if volume and file_kind(target) != "2d" else None)]
    if probabilities is not None:
        prob_path = target.with_name(split_suffix(target.name)[0] + "_probabilities.npz")
        arr = probabilities.numpy()
        if not volume:
            arr = np.swapaxes(arr, 1, 2)
        with atomic_write(prob_path) as fh:
            np.savez_compressed(fh, probabilities=arr.astype(np.float16))
        written.append(prob_path)
    return written


def _refuse_overlap(inputs: Path, output: Path) -> None:
    """Predictions never go where they could replace or mix with the inputs.

    Raises:
        MedsegError: ``output`` is the input folder, inside it, or contains it; for a single
            input file, ``output`` is the folder it is in (its label map would replace it).

    Example:
        >>> _refuse_overlap(Path("/data/images"), Path("/data/predictions"))
        >>> _refuse_overlap(Path("/data/images"), Path("/data/images/out"))  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        pipeline.errors.MedsegError: --output /data/images/out is inside the input folder /data/images; ...
    """
    out = output.resolve()
    if inputs.is_file():  # one file: only its own folder would put the label map over it
        folder = inputs.resolve().parent
        if out != folder:
            return
        where = "is the folder of the input"
    elif file_kind(inputs) == "dicom":  # one series folder: its parent may take <series>.nii.gz
        folder = inputs.resolve()
        if out != folder and folder not in out.parents:
            return
        where = "is the input series folder" if out == folder else "is inside the input series folder"
    else:
        folder = inputs.resolve()
        if out == folder:
            where = "is the input folder"
        elif folder in out.parents:
            where = "is inside the input folder"
        elif out in folder.parents:
            where = "contains the input folder"
        else:
            return
    raise MedsegError(f"--output {output} {where} {folder}; choose a folder apart from the inputs")


def run_inference(
    checkpoint: str | os.PathLike | Sequence[str | os.PathLike],
    inputs: str | os.PathLike,
    output: str | os.PathLike,
    *,
    config_path: str | os.PathLike | None = None,
    overrides: Sequence[str] = (),
    device: str | None = None,
    tta: bool | None = None,
    save_probabilities: bool | None = None,
    overwrite: bool = False,
    resume: bool = False,
    progress: bool = True,
    fmt: str | None = None,
    postprocessing: str | os.PathLike | Mapping[str, Any] | None = None,
    use_postprocessing: bool = True,
    part: int | None = None,
    parts: int | None = None,
) -> list[Path]:
    """Segment a file or every image of a folder into ``output``; returns the files written.

    ``fmt`` (``--format``, one of :data:`OUTPUT_FORMATS`) is the output format; default: each
    input's own (:func:`output_name`). ``checkpoint`` may name an ensemble (several checkpoints
    or run folders, see :class:`Predictor`); ``postprocessing`` (a spec or its JSON file;
    default: ``RUN/postprocessing.json`` of a cross-validation run) is applied unless
    ``use_postprocessing`` is off. ``part`` of ``parts`` (default under torchrun: ``RANK`` of
    ``WORLD_SIZE``) segments only the inputs ``i`` with ``i % parts == part`` of the sorted list,
    so every input is written by exactly one part, whatever is already done (``--continue``).

    Every input's header is checked before anything is written, so a damaged file stops the
    run with nothing half-done. ``resume`` (``--continue``, nnU-Net's ``--continue_prediction``)
    skips inputs whose label map already exists: outputs are written atomically, so one that
    exists is complete.

    Raises:
        MedsegError: existing outputs without ``overwrite`` or ``resume``, an unwritable folder,
            an output folder overlapping the inputs, bad inputs.
    """
    if fmt is not None and fmt.lower().lstrip(".") not in OUTPUT_FORMATS:
        raise MedsegError(f"--format {fmt}: expected one of {', '.join(OUTPUT_FORMATS)}")
    files = find_inputs(inputs)
    if fmt is not None and fmt.lower().lstrip(".") == "dcmseg":
        if not_dicom := [p.name for p in files if file_kind(p) != "dicom"]:
            raise MedsegError(
                f"--format dcmseg: a DICOM Segmentation references its source series; not DICOM: {list_some(not_dicom)}"
            )
    output = Path(output)
    _refuse_overlap(Path(inputs), output)
    part, parts = inference_shard(part, parts)
    files = files[part::parts]
    targets = [output / output_name(p, fmt) for p in files]
    existing = [t for t in targets if t.exists()]
    if existing and not (overwrite or resume):
        raise MedsegError(
            f"{existing[0]} exists ({len(existing)} of {len(targets)} outputs do); pass --overwrite to replace them, "
            "or --continue to segment only the others"
        )
    jobs = [(p, t) for p, t in zip(files, targets, strict=True) if not (resume and t.exists())]
    for path, _ in jobs:
        check_readable(path)
    members = checkpoint_paths(checkpoint)
    config = member_configs(members, config_path, overrides)
    spec = resolve_postprocessing(checkpoint, postprocessing, use_postprocessing)
    created = not output.exists()
    try:
        output.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise MedsegError(f"{output}: cannot create the output folder ({err.strerror})") from None
    written: list[Path] = []
    try:
        if not os.access(output, os.W_OK):
            raise MedsegError(f"{output}: the output folder is not writable")
        predictor = Predictor(members, config, device=device, tta=tta, progress=progress, postprocessing=spec)
        segmenter = Segmenter(predictor)  # the Python API's object: one code path for files and arrays
        keep_probs = predictor.infer["save_probabilities"] if save_probabilities is None else save_probabilities
        where = f" (part {part + 1} of {parts})" if parts > 1 else ""
        for path, target in tqdm(jobs, desc=f"cases{where}", disable=None if progress else True):
            result = segmenter.segment(path)
            if is_instance(predictor.config):  # one id per object and <stem>_objects.csv
                task = predictor.config["task"]
                if keep_probs:  # the probabilities file (its class map is replaced by the instance map below)
                    written += write_prediction(result.labels, path, target, result.probabilities)[1:]
                written += write_instances(
                    result.probabilities, path, target, settings_from(task, predictor.postprocess),
                    objects=task["outputs"]["objects_csv"], channels=predictor.config["transforms"]["channels"],
                )[1]  # fmt: skip
                continue
            written += write_prediction(
                predictor.raw_values(result.labels),
                path,
                target,
                result.probabilities if keep_probs else None,
                label_values=predictor.label_values or range(predictor.config.num_classes),
            )
    except BaseException:
        if created and parts == 1 and not any(output.iterdir()):
            output.rmdir()  # a failed first call leaves no empty folder behind
        raise
    return written


def _load_reference(config: Config, item: Mapping[str, Any]) -> tuple[np.ndarray, tuple, np.ndarray | None]:
    """Label (class indices), spacing and optional FOV of an item, in the file's loaded geometry."""
    from transforms.dictionary import LoadCased, MapLabelsd

    dims = config.spatial_dims
    wanted = {k: item[k] for k in (keys.LABEL, keys.FOV) if k in item}
    load = LoadCased(list(wanted), reader=read_image, spatial_dims=dims, required=[keys.LABEL], image_key=keys.LABEL)
    d = MapLabelsd(keys.LABEL, config.label_values, config.num_classes)(load(wanted))
    label = d[keys.LABEL]
    spacing = tuple(float(v) for v in label.pixdim[:dims]) if isinstance(label, MetaTensor) else None
    fov = np.asarray(d[keys.FOV])[0] != 0 if keys.FOV in d else None
    return np.asarray(label)[0].astype(np.int64), spacing, fov


def _all_labelled(config: Config) -> list[dict[str, Any]]:
    """Every case of the config's dataset root that has a label (its own test set included), unsplit."""
    from pipeline.data.datalist import read_dataset

    dataset = read_dataset(config["data"])
    return [item for item in [*dataset.items, *(dataset.test or [])] if item.get(keys.LABEL)]


def evaluate_split(
    checkpoint: str | os.PathLike | Sequence[str | os.PathLike],
    output: str | os.PathLike,
    *,
    split: str = "test",
    config_path: str | os.PathLike | None = None,
    overrides: Sequence[str] = (),
    device: str | None = None,
    tta: bool | None = None,
    save_predictions: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    metrics: Iterable[str] | None = None,
    nsd_tolerance: float = 1.0,
    classes: Iterable[int] | None = None,
    postprocessing: str | os.PathLike | Mapping[str, Any] | None = None,
    use_postprocessing: bool = True,
    save_probabilities: bool = False,
    data_root: str | os.PathLike | None = None,
):
    """Run inference on a split of the configured dataset and evaluate it against its labels.

    Args:
        checkpoint: a medseg checkpoint.
        output: folder for ``per_case.csv`` and ``summary.json`` (and ``predictions/``).
        split: ``train``, ``val`` or ``test`` of the config's data section.
        config_path / overrides: the config to use (default: the checkpoint's) and ``--set`` items.
        device / tta: override ``infer.device`` / ``infer.tta``.
        save_predictions: also write the label maps to ``output/predictions``.
        overwrite: replace existing outputs.
        progress: a progress bar over cases.
        metrics / nsd_tolerance: as :class:`pipeline.engines.evaluator.Evaluator`.
        classes: foreground classes to report (default: every class of the network).
        postprocessing / use_postprocessing: as :func:`run_inference`.
        save_probabilities: with ``save_predictions``, also ``<case>_probabilities.npz`` (float16).
        data_root: score every labelled case of this dataset root instead of a split (a held-out
            folder in the config's layout: ``data.root`` replaced, no split, ``split`` ignored).

    Returns:
        The filled :class:`pipeline.engines.evaluator.Evaluator` (already written to ``output``).

    Raises:
        MedsegError: an empty split, existing outputs, or ``classes`` the network does not predict.
    """
    from pipeline.data import load_datalist
    from pipeline.engines.evaluator import Evaluator, check_outputs

    members = checkpoint_paths(checkpoint)
    base = None if config_path is not None else load_checkpoint(members[0])["config"]
    if data_root is not None:
        if not Path(data_root).is_dir():
            raise MedsegError(f"--data {data_root}: not a folder")
        overrides = [*overrides, f"data.root={json.dumps(str(data_root))}"]  # a JSON string is a YAML string
    config = fill_label_values(load_config(config_path, overrides, base=base))
    if data_root is not None:
        items, split = _all_labelled(config), "every case"
        if not items:
            raise MedsegError(f"--data {data_root}: no labelled cases in the {config['data']['format']} layout")
    else:
        items = load_datalist(config["data"]).get(split) or []
    if not items:
        raise MedsegError(f"data: the {split!r} split is empty; check data.root and the split fractions")
    check_outputs(output, overwrite)
    known = tuple(range(1, config.num_classes))
    if classes is not None:
        classes = tuple(sorted({int(c) for c in classes}))
        if unknown := [c for c in classes if c not in known]:
            raise MedsegError(
                f"--classes {' '.join(map(str, unknown))}: the network predicts classes {', '.join(map(str, known))}"
            )
    configs = member_configs(members, config_path, overrides) or [None] * len(members)
    spec = resolve_postprocessing(checkpoint, postprocessing, use_postprocessing)
    predictor = Predictor(members, [config, *configs[1:]], device=device, tta=tta, postprocessing=spec)
    classes = classes or known
    evaluator = Evaluator(classes, nsd_tolerance=nsd_tolerance, metrics=metrics)
    pred_dir = Path(output) / "predictions"
    if save_predictions:
        pred_dir.mkdir(parents=True, exist_ok=True)
    pictured = []  # cases.json: the files of each case, for report.html
    for item in tqdm(items, desc=f"evaluating {split}", disable=None if progress else True):
        result = predictor(item)
        label, spacing, fov = _load_reference(config, item)
        if label.shape != result.labels.shape:
            raise DataError(
                f"{item[keys.LABEL]}: label shape {label.shape} differs from the prediction's {result.labels.shape}"
            )
        evaluator.add(str(item.get(keys.CASE)), result.labels, label, spacing=spacing, fov=fov)
        if save_predictions:
            source = item[keys.IMAGE][0] if isinstance(item[keys.IMAGE], (list, tuple)) else item[keys.IMAGE]
            probs = result.probabilities if save_probabilities else None
            write_prediction(predictor.raw_values(result.labels), source, pred_dir / output_name(source), probs)
            pictured.append({"case": item.get(keys.CASE), "image": source, "label": item[keys.LABEL],
                             "prediction": pred_dir / output_name(source), "fov": item.get(keys.FOV)})  # fmt: skip
    evaluator.write(output, overwrite=overwrite)
    if pictured:
        html_report.write_case_index(output, pictured, config["transforms"]["label_values"])
    else:  # an index left by an earlier --save-predictions run would show other predictions
        (Path(output) / html_report.CASES_JSON).unlink(missing_ok=True)
    html_report.build_report(output)
    return evaluator
