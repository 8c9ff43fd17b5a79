"""Export a checkpoint as ONNX, TorchScript or a MONAI bundle, each with a processing spec.

``medseg export CHECKPOINT --format onnx|torchscript|bundle --output DIR`` writes, atomically
(a temporary folder renamed into place, so a failure leaves nothing half-written):

- ``onnx``: ``model.onnx`` (opset :data:`ONNX_OPSET`, TorchScript-based exporter) with input
  ``image`` ``BCHW[D]`` float32 and output ``logits`` ``BKHW[D]``; batch and every spatial axis
  are dynamic;
- ``torchscript``: ``model.ts`` (``torch.jit.trace``), same input and output, same dynamic axes;
- ``bundle``: a MONAI bundle (``configs/metadata.json``, ``configs/inference.json``,
  ``models/model.ts``, ``models/model.pt``, ``docs/README.md``) that runs with MONAI alone
  (see :mod:`pipeline._bundle`);

and beside each a ``preprocessing.json`` (:func:`processing_spec`): everything needed to get
the labels of ``medseg infer`` from the model file without medseg.

Any input size works in the exported graphs: our networks pad their input at the end of each
axis up to a multiple of ``size_divisor`` and crop the logits back. The eager ``forward`` skips
the pad when none is needed (a Python branch a tracer would freeze at the example's size), so
the export traces :class:`ExportModule`, which always pads by ``(-size) mod divisor`` (zero when
aligned) with the amounts computed from the traced input shape. Every export is checked before it
is kept: the exported model is run on a second input of another batch size and odd spatial size
and must equal the PyTorch network within :data:`TOLERANCE`.

TorchScript rather than ``torch.export``: MONAI bundles, Triton and libtorch (C++) load
TorchScript, and tracing keeps every axis dynamic; ``torch.jit`` prints a deprecation warning
in torch 2.13, which the export silences.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import tempfile
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from pipeline._bundle import write_bundle
from pipeline.config import Config, plain, resolve
from pipeline.engines import factory
from pipeline.engines.checkpoint import load_checkpoint
from pipeline.engines.inferer import flip_sets
from pipeline.errors import MedsegError
from pipeline.instances.output import instance_spec
from pipeline.instances.schema import is_instance
from transforms.chains import ct_normalisation

__all__ = [
    "FORMATS",
    "ONNX_OPSET",
    "TOLERANCE",
    "SPEC_FORMAT",
    "ExportModule",
    "export_checkpoint",
    "export_network",
    "processing_spec",
    "load_network",
    "require_onnx",
]

FORMATS = ("onnx", "torchscript", "bundle")
ONNX_OPSET = 17
"""Opset of the ONNX file: torch 2.13's TorchScript-based exporter (``dynamo=False``) writes it for
every layer of the registered networks, and onnxruntime supports it from 1.12 on."""
TOLERANCE = 1e-4
"""Largest absolute difference of logits allowed between an export and PyTorch."""
SPEC_FORMAT = "medseg-export-spec-v1"
MODEL_FILES = {"onnx": "model.onnx", "torchscript": "model.ts"}
INSTALL_HINT = "pip install medseg[export]"


class ExportModule(torch.nn.Module):
    """An eval-mode network as a traceable ``image -> logits`` graph, with optional flip TTA.

    Pads ``x`` at the end of each spatial axis by ``(-size) mod size_divisor`` (replicate or
    zeros, as the network does), runs the network's ``forward_padded`` and crops the full-resolution
    logits back to the input size. Unlike the network's own ``forward`` it has no branch on the
    input size, so a trace of it is valid for every size.

    Args:
        network: a :class:`pipeline.networks.SegmentationNetwork` (any registered network).
        tta: average the logits over mirrored copies along every subset of spatial axes (what
            ``infer.tta`` does per sliding window, so a sliding window over this module equals
            medseg's TTA inference).
        tta_axes: the spatial axes mirrored (default all; ``medseg infer`` mirrors those that
            ``transforms.augment.flip.axes`` flips in training).

    Raises:
        TypeError: ``network`` is not a ``SegmentationNetwork``.

    Example:
        >>> from pipeline.networks import UNet
        >>> module = ExportModule(UNet(2, 1, 2, channels=(4, 8)).eval())
        >>> module(torch.zeros(1, 1, 37, 45)).shape
        torch.Size([1, 2, 37, 45])
    """

    def __init__(self, network: torch.nn.Module, tta: bool = False, tta_axes: Sequence[int] | None = None) -> None:
        super().__init__()
        from pipeline.networks import SegmentationNetwork

        if not isinstance(network, SegmentationNetwork):
            raise TypeError(f"expected a SegmentationNetwork, got {type(network).__name__}")
        self.network = network
        self.divisor = int(network.size_divisor)
        self.replicate = network.pad_mode == "replicate"
        self.spatial_dims = int(network.spatial_dims)
        self.flips = flip_sets(self.spatial_dims, tta_axes) if tta else [()]

    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        spatial = x.shape[2:]
        pad: list[Any] = []
        for size in reversed(spatial):  # F.pad lists the last axis first
            pad += [0, (self.divisor - size % self.divisor) % self.divisor]
        padded = F.pad(x, pad, mode="replicate") if self.replicate else F.pad(x, pad)
        out = self.network.forward_padded(padded)[0]
        if self.spatial_dims == 2:
            return out[:, :, : spatial[0], : spatial[1]]
        return out[:, :, : spatial[0], : spatial[1], : spatial[2]]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``BKHW[D]`` of the input's size for an image batch ``BCHW[D]``."""
        total = self._logits(x)
        for axes in self.flips[1:]:
            total = total + torch.flip(self._logits(torch.flip(x, axes)), axes)
        return total / len(self.flips) if len(self.flips) > 1 else total


def require_onnx() -> None:
    """Raise a one-line :class:`MedsegError` naming the extra when onnx or onnxruntime is missing."""
    missing = [name for name in ("onnx", "onnxruntime") if importlib.util.find_spec(name) is None]
    if missing:
        raise MedsegError(f"ONNX export needs {' and '.join(missing)}: {INSTALL_HINT}")


def load_network(checkpoint: str | os.PathLike) -> tuple[torch.nn.Module, Config, dict[str, Any]]:
    """The checkpoint's network (CPU, eval mode), its resolved config and the checkpoint itself.

    Built as :class:`pipeline.engines.predictor.Predictor` builds it: ``build_network`` on
    ``ckpt["config"]``, then the ``network`` weights.

    Raises:
        MedsegError: a missing or damaged checkpoint, or weights that do not fit the network.
    """
    ckpt = load_checkpoint(checkpoint)
    config = resolve(ckpt["config"], source=str(checkpoint))
    network = factory.build_network(config)
    try:
        network.load_state_dict(ckpt["network"])
    except RuntimeError as err:
        first = str(err).strip().splitlines()[0]
        raise MedsegError(f"{checkpoint}: weights do not fit the configured network ({first})") from None
    return network.eval(), config, ckpt


def example_shape(network: torch.nn.Module, batch: int = 1, offset: int = 1) -> tuple[int, ...]:
    """An input shape whose spatial sizes are odd, so never multiples of the size divisor, and
    different per axis: ``2·divisor + offset + 2·axis``, plus one where that is even."""
    div = int(network.size_divisor)
    sizes = [2 * div + offset + 2 * axis for axis in range(network.spatial_dims)]
    sizes = [s if s % 2 else s + 1 for s in sizes]
    return (batch, network.in_channels, *sizes)


def _traced(module: torch.nn.Module, example: torch.Tensor) -> torch.jit.ScriptModule:
    with warnings.catch_warnings():
        # torch 2.13 marks torch.jit deprecated; the size checks inside norm layers become constants
        warnings.simplefilter("ignore")
        with torch.no_grad():
            return torch.jit.trace(module, example, check_trace=False)


def _export_onnx(module: torch.nn.Module, example: torch.Tensor, path: Path) -> None:
    dims = example.ndim - 2
    axes = {0: "batch", **{2 + i: f"spatial{i}" for i in range(dims)}}
    kwargs = {"input_names": ["image"], "output_names": ["logits"], "opset_version": ONNX_OPSET}
    errors = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the legacy exporter's deprecation notice
        try:
            with torch.no_grad():
                torch.onnx.export(
                    module, (example,), str(path), dynamo=False, dynamic_axes={"image": axes, "logits": axes}, **kwargs
                )
            return
        except Exception as err:  # fall back to the torch.export-based exporter
            errors.append(f"legacy exporter: {str(err).strip().splitlines()[0][:160]}")
        try:
            shapes = {"x": {k: torch.export.Dim.AUTO for k in axes}}
            program = torch.onnx.export(module, (example,), dynamo=True, dynamic_shapes=shapes, **kwargs)
            program.save(str(path))
            return
        except Exception as err:
            errors.append(f"dynamo exporter: {str(err).strip().splitlines()[0][:160]}")
    raise MedsegError(f"ONNX export failed ({'; '.join(errors)})")


def onnx_runner(path: str | os.PathLike, threads: int = 1) -> Callable[[torch.Tensor], torch.Tensor]:
    """A function running ``path`` with onnxruntime on the CPU: ``image`` tensor -> ``logits`` tensor."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def run(x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(session.run(["logits"], {"image": x.detach().cpu().numpy()})[0])

    return run


def verify(
    reference: torch.nn.Module, run: Callable[[torch.Tensor], torch.Tensor], shape: Sequence[int], what: str
) -> float:
    """Max abs difference of ``run`` and ``reference`` on a seeded random input of ``shape``.

    Raises:
        MedsegError: ``run`` fails, the shapes differ or the difference is above :data:`TOLERANCE`.
    """
    x = torch.randn(tuple(shape), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = reference(x)
        try:
            got = run(x)
        except Exception as err:  # a graph frozen at the example's shape fails on another one
            first = str(err).strip().splitlines()[0][:160] if str(err).strip() else type(err).__name__
            raise MedsegError(f"{what}: fails on input {tuple(shape)} ({first})") from None
    if tuple(got.shape) != tuple(want.shape):
        raise MedsegError(
            f"{what}: output shape {tuple(got.shape)} for input {tuple(shape)}, expected {tuple(want.shape)}"
        )
    diff = float((got.float() - want.float()).abs().max())
    if not diff <= TOLERANCE:
        raise MedsegError(f"{what}: differs from PyTorch by {diff:.3g} on input {tuple(shape)} (tolerance {TOLERANCE})")
    return diff


def export_network(
    network: torch.nn.Module,
    fmt: str,
    path: str | os.PathLike,
    *,
    tta: bool = False,
    check: bool = True,
    tta_axes: Sequence[int] | None = None,
) -> float | None:
    """Write ``network`` as ONNX (``fmt="onnx"``) or TorchScript (``"torchscript"``) to ``path``.

    Args:
        network: a registered network in eval mode (CPU).
        fmt: ``"onnx"`` or ``"torchscript"``.
        path: the file to write.
        tta: bake flip TTA into the graph (see :class:`ExportModule`).
        tta_axes: the spatial axes TTA mirrors (default all; ``medseg infer`` uses the axes training flips).
        check: run the written model on an input of another batch and odd size and compare it with
            PyTorch (:func:`verify`).

    Returns:
        The max abs difference of the check, or ``None`` without it.

    Raises:
        MedsegError: the export failed or the check found a difference above :data:`TOLERANCE`.
    """
    if fmt not in MODEL_FILES:
        raise ValueError(f"fmt must be one of {tuple(MODEL_FILES)}, got {fmt!r}")
    module = ExportModule(network.cpu().eval(), tta=tta, tta_axes=tta_axes).eval()
    example = torch.randn(example_shape(network), generator=torch.Generator().manual_seed(1))
    path = Path(path)
    if fmt == "onnx":
        require_onnx()
        _export_onnx(module, example, path)
        runner = onnx_runner(path)
    else:
        traced = _traced(module, example)
        traced.save(str(path))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch.jit.load's deprecation notice
            runner = torch.jit.load(str(path), map_location="cpu")
    if not check:
        return None
    # without TTA the reference is the network's own forward, independent of ExportModule
    reference = module if tta else network
    return verify(reference, runner, example_shape(network, batch=2, offset=4), f"{fmt} export")


def _sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def processing_spec(config: Config, model_file: str, *, tta_in_model: bool = False) -> dict[str, Any]:
    """What ``medseg infer`` does around the network, as plain JSON-ready data.

    Args:
        config: the checkpoint's resolved config.
        model_file: the model's file name, recorded in the spec.
        tta_in_model: the model already averages over flips (the bundle's model does).

    Returns:
        The spec: model input/output, reading, spatial and intensity preprocessing, sliding window,
        TTA, post-processing, classes and label values, and output writing; each step names the
        MONAI transform that reproduces it.
    """
    s = {**plain(config["transforms"]), "spatial_dims": config.spatial_dims, "in_channels": config.in_channels}
    dims, infer = config.spatial_dims, plain(config["infer"])
    network = factory.build_network(config)
    classes = config.num_classes
    out_channels = int(config["network"]["out_channels"])
    mode = s["intensity"]["mode"]
    relevant = {"zscore": ("nonzero",), "window": ("window", "clip"), "ct": ("window", "mean", "std")}.get(mode, ())
    intensity: dict[str, Any] = {"mode": mode, **{k: s["intensity"][k] for k in relevant}}
    if mode == "zscore":
        intensity.update(
            statistics="per image and channel: mean and std over the image (nonzero voxels only if nonzero)",
            monai={"_target_": "NormalizeIntensityd", "nonzero": intensity["nonzero"], "channel_wise": True},
        )
    elif mode == "window":
        low, high = intensity["window"]
        intensity.update(
            statistics=f"fixed: [{low}, {high}] -> [0, 1]",
            monai={"_target_": "ScaleIntensityRanged", "a_min": low, "a_max": high, "b_min": 0.0, "b_max": 1.0,
                   "clip": intensity["clip"]},
        )  # fmt: skip
    elif mode == "ct":
        intensity.update(
            statistics=f"fixed (dataset foreground): clip to {intensity['window']}, then (x - {intensity['mean']:g}) "
            f"/ {intensity['std']:g}",
            monai={"_target_": "ScaleIntensityRanged", **ct_normalisation(intensity["window"], intensity["mean"],
                                                                          intensity["std"])},
        )  # fmt: skip
    elif mode == "minmax":
        intensity.update(
            statistics="per image and channel: min and max -> [0, 1]",
            monai={"_target_": "ScaleIntensityd", "minv": 0.0, "maxv": 1.0, "channel_wise": True},
        )
    layout = "BCHW" if dims == 2 else "BCHWD"
    tta = bool(infer.get("tta", False))
    return {
        "format": SPEC_FORMAT,
        "model": {
            "file": model_file,
            "input": {"name": "image", "layout": layout, "dtype": "float32", "channels": s["in_channels"]},
            "output": {"name": "logits", "layout": layout.replace("C", "K"), "channels": out_channels},
            "dynamic_axes": "batch and every spatial axis",
            "size_divisor": int(network.size_divisor),
            "min_size": int(network.min_size),
            "padding": f"inside the graph: {network.pad_mode} at the end of each axis to a multiple of "
            f"{network.size_divisor}, logits cropped back",
            "tta_in_model": tta_in_model,
        },
        "network": plain(config["network"]),
        "spatial_dims": dims,
        "reading": {
            "2d": "PNG/TIFF/GIF/JPEG/BMP via PIL (palette and alpha dropped: grey or RGB values); spatial axes "
            "(W, H), the transpose of numpy.asarray(image), as MONAI PILReader(reverse_indexing=True); channel first",
            "3d": "NIfTI via nibabel (MONAI NibabelReader), channel first",
            "dtype": "float32",
        },
        "preprocessing": [
            *(
                [{"step": "orientation", "axcodes": s["orientation"], "monai": "Orientationd (labels RAS)"}]
                if dims == 3 and s["orientation"]
                else []
            ),
            *(
                [{"step": "spacing", "pixdim": s["spacing"], "mode": "bilinear", "monai": "Spacingd"}]
                if dims == 3 and s["spacing"] is not None
                else []
            ),
            *([{"step": "select_channels", "channels": s["channels"]}] if s["channels"] is not None else []),
            *([{"step": "intensity", **intensity}] if mode != "none" else []),
        ],
        "orientation": s["orientation"] if dims == 3 else None,
        "spacing": s["spacing"] if dims == 3 else None,
        "channels": s["channels"],
        "intensity": intensity,
        "sliding_window": {
            "roi_size": list(config.roi_size),
            "overlap": float(infer.get("overlap", 0.5)),
            "mode": infer.get("mode", "gaussian"),
            "sigma_scale": 0.125,
            "padding_mode": "constant",
            "cval": 0.0,
            "sw_batch_size": int(infer.get("sw_batch_size") or 4),
            "precision": f"float32 (medseg infer: infer.amp={infer.get('amp', 'auto')}; auto: fp16 on CUDA, else fp32)",
            "train_patch_size": s["patch_size"],
            "monai": "monai.inferers.sliding_window_inference (same windows, weights and result)",
        },
        "tta": {
            "enabled": tta,
            "flips": [list(f) for f in flip_sets(dims, s["augment"]["flip"]["axes"])] if tta else [[]],
            "how": "per window: mirror along each axis set (dims of BCHW[D]), run, mirror back, average logits",
            "in_model": tta_in_model,
        },
        "postprocessing": {
            "activation": "softmax over K" if out_channels > 1 else "sigmoid",
            "invert": "undo spacing and orientation on the probabilities (bilinear; MONAI Invertd)"
            if dims == 3
            else None,
            "labels": "argmax over K (class indices 0..K-1), then class index -> label value",
        },
        "classes": {"num_classes": classes, "label_values": s["label_values"] or list(range(classes))},
        "output": {
            "2d": "PNG uint8 of the input's size, transposed back to (H, W)",
            "3d": "NIfTI with the input's affine and header, uint8 (int16 past 255 classes)",
        },
    }


def _write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")


def _check_output(output: Path, overwrite: bool) -> None:
    if output.exists() and not output.is_dir():
        raise MedsegError(f"{output}: exists and is not a folder")
    if output.is_dir() and any(output.iterdir()) and not overwrite:
        raise MedsegError(f"{output}: folder exists and is not empty; pass --overwrite to replace it")


def _publish(tmp: Path, output: Path) -> None:
    """Move the finished ``tmp`` folder to ``output``, replacing what was there."""
    old = None
    if output.exists():
        old = output.with_name(f".{output.name}.old-{os.getpid()}")
        os.replace(output, old)
    try:
        os.replace(tmp, output)
    except OSError:
        if old is not None:
            os.replace(old, output)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def export_checkpoint(
    checkpoint: str | os.PathLike,
    fmt: str,
    output_dir: str | os.PathLike,
    *,
    overwrite: bool = False,
    check: bool = True,
) -> Path:
    """Export a medseg checkpoint as ``onnx``, ``torchscript`` or a MONAI ``bundle`` folder.

    The folder is built in a temporary sibling and renamed into place at the end, so a failure
    leaves ``output_dir`` as it was.

    Args:
        checkpoint: a medseg checkpoint (``runs/<name>/checkpoints/best.pt``).
        fmt: one of :data:`FORMATS`.
        output_dir: the folder to write (created; must be empty or absent unless ``overwrite``).
        overwrite: replace an existing non-empty ``output_dir``.
        check: compare the exported model with PyTorch on an odd-sized input (see :func:`verify`).

    Returns:
        ``output_dir``.

    Raises:
        MedsegError: an unknown format, an existing output, a bad checkpoint, a missing optional
            package (``pip install medseg[export]``) or a failed export or check.

    Example:
        >>> export_checkpoint("runs/demo/checkpoints/best.pt", "onnx", "exported/")  # doctest: +SKIP
        PosixPath('exported')
    """
    if fmt not in FORMATS:
        raise MedsegError(f"export format {fmt!r} is not one of {', '.join(FORMATS)}")
    output = Path(output_dir)
    _check_output(output, overwrite)
    if fmt == "onnx":
        require_onnx()
    network, config, ckpt = load_network(checkpoint)
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{output.name}.tmp-", dir=output.parent))
    except OSError as err:
        raise MedsegError(f"{output}: cannot create the output folder ({err.strerror})") from None
    umask = os.umask(0)
    os.umask(umask)
    tmp.chmod(0o777 & ~umask)  # mkdtemp makes it private; the export is an ordinary folder
    try:
        source = {
            "checkpoint": str(Path(checkpoint).resolve()),
            "sha256": _sha256(checkpoint),
            "epoch": (ckpt.get("train_state") or {}).get("epoch"),
            "torch": torch.__version__,
        }
        instances = instance_spec(config["task"], ckpt.get("postprocess")) if is_instance(config) else None
        if fmt == "bundle":
            tta = bool(config["infer"]["tta"])
            (tmp / "models").mkdir()
            axes = config["transforms"]["augment"]["flip"]["axes"]
            diff = export_network(
                network, "torchscript", tmp / "models" / "model.ts", tta=tta, check=check, tta_axes=axes
            )
            spec = processing_spec(config, "models/model.ts", tta_in_model=tta)
            spec["source"] = {**source, "check_max_abs_diff": diff}
            if instances:
                spec["postprocessing"]["instances"] = instances
            write_bundle(network, config, spec, tmp)
        else:
            diff = export_network(network, fmt, tmp / MODEL_FILES[fmt], check=check)
            spec = processing_spec(config, MODEL_FILES[fmt])
            spec["source"] = {**source, "check_max_abs_diff": diff}
            if instances:
                spec["postprocessing"]["instances"] = instances
            _write_json(tmp / "preprocessing.json", spec)
        _publish(tmp, output)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return output
