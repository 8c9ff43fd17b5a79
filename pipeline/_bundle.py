"""The MONAI bundle that ``medseg export --format bundle`` writes: MONAI and torch only, no medseg.

Layout::

    configs/metadata.json     MONAI bundle metadata (versions, network inputs and outputs, classes)
    configs/inference.json    MONAI transforms + SlidingWindowInferer + the TorchScript model
    configs/logging.conf      MONAI's usual logging settings
    models/model.ts           TorchScript (flip TTA baked in when the run's infer.tta is on)
    models/model.pt           the network's state dict (rebuild with medseg: see docs/README.md)
    preprocessing.json        the processing spec (:func:`pipeline.export.processing_spec`)
    docs/README.md            how to run it

Run from the bundle folder::

    python -m monai.bundle run --config_file configs/inference.json --input_dir IN --output_dir OUT

Overrides: ``--input_dir`` (default ``input``), ``--output_dir`` (default ``output``),
``--input_suffixes`` (default: the suffixes ``medseg infer`` reads, :data:`SUFFIXES`; the
file names of a folder are matched case-insensitively, hidden files skipped), ``--bundle_root`` (default
``.``, the folder holding ``models/``), ``--device`` (default CUDA when present).

Why it gives the labels of ``medseg infer``: the transforms are the ones medseg's infer chain is
built from (``LoadImaged`` with the same readers, ``Orientationd``/``Spacingd`` in 3D, the same
intensity transform), MONAI's ``SlidingWindowInferer`` places and weights windows as medseg's
sliding window does, flip TTA is inside the model per window (the logits of each window averaged
over mirrored copies, as medseg batches them), and post-processing is softmax, ``Invertd`` on the
probabilities (bilinear, 3D), argmax and the label values. On CUDA, ``medseg infer`` runs fp16
by default (``infer.amp``) while the bundle runs fp32, so a few voxels may differ there.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = ["write_bundle", "inference_config", "metadata", "PIL_CONVERTER", "SUFFIXES"]

PIL_CONVERTER = (
    "$lambda im: im if im.mode in ('L', 'I', 'I;16', 'I;16B', 'I;16L', 'F', 'RGB') "
    "else im.convert('L') if im.mode in ('1', 'LA', 'La') "
    "else (lambda r, p: r.getchannel(0) if r.getchannel(0).tobytes() == r.getchannel(1).tobytes() "
    "== r.getchannel(2).tobytes() else (p.putpalette([v for v in range(256) for _ in range(3)]), p.convert('L'))[1])"
    "(im.convert('RGB'), im.convert('P').copy()) if im.mode in ('P', 'PA') "
    "else im.convert('RGB')"
)
"""medseg's ``normalise_mode`` as a bundle expression: grey or RGB values, no alpha; a grey palette
as its grey values, a colour palette as its indices (an identity palette converted to ``L``)."""

SUFFIXES = {2: (".png", ".tif", ".tiff", ".gif", ".jpg", ".jpeg", ".bmp"), 3: (".nii.gz", ".nii")}
"""Input files the bundle reads by default: those ``medseg infer`` reads (2D: written as PNG;
3D: written as ``.nii.gz``, where medseg keeps an uncompressed ``.nii`` name)."""

_RUN = "$[@postprocessing(dict(d, pred=@inferer(d['image'][None].to(@device), @network)[0].cpu())) for d in @dataset]"


def _reader(dims: int) -> dict[str, Any]:
    if dims == 3:
        return {"_target_": "NibabelReader"}
    return {"_target_": "PILReader", "reverse_indexing": True, "converter": PIL_CONVERTER}


def inference_config(spec: Mapping[str, Any], config: Mapping[str, Any]) -> dict[str, Any]:
    """The bundle's ``inference.json`` for a processing ``spec`` (see :mod:`pipeline._bundle`)."""
    dims = spec["spatial_dims"]
    infer = dict(config.get("infer") or {})
    pre: list[dict[str, Any]] = [
        {
            "_target_": "LoadImaged",
            "keys": "image",
            "reader": _reader(dims),
            "image_only": True,
            "ensure_channel_first": True,
        }
    ]
    for step in spec["preprocessing"]:
        if step["step"] == "orientation":
            pre.append(
                {
                    "_target_": "Orientationd",
                    "keys": "image",
                    "axcodes": step["axcodes"],
                    "labels": [["L", "R"], ["P", "A"], ["I", "S"]],
                }
            )
        elif step["step"] == "spacing":
            pre.append({"_target_": "Spacingd", "keys": "image", "pixdim": step["pixdim"], "mode": "bilinear"})
        elif step["step"] == "select_channels":
            pre.append({"_target_": "Lambdad", "keys": "image", "func": f"$lambda x: x[{list(step['channels'])}]"})
        elif step["step"] == "intensity":
            pre.append({**step["monai"], "keys": "image"})
    pre.append({"_target_": "EnsureTyped", "keys": "image", "dtype": "$torch.float32"})

    sw = spec["sliding_window"]
    out_channels = spec["model"]["output"]["channels"]
    post: list[dict[str, Any]] = [
        {"_target_": "Activationsd", "keys": "pred", **({"softmax": True} if out_channels > 1 else {"sigmoid": True})}
    ]
    if dims == 3 and any(s["step"] in ("orientation", "spacing") for s in spec["preprocessing"]):
        post.append(
            {
                "_target_": "Invertd",
                "keys": "pred",
                "transform": "@preprocessing",
                "orig_keys": "image",
                "nearest_interp": False,
                "to_tensor": True,
            }
        )
    post.append(
        {"_target_": "AsDiscreted", "keys": "pred", **({"argmax": True} if out_channels > 1 else {"threshold": 0.5})}
    )
    values = spec["classes"]["label_values"]
    classes = spec["classes"]["num_classes"]
    if [float(v) for v in values] != [float(i) for i in range(classes)]:
        post.append(
            {
                "_target_": "MapLabelValued",
                "keys": "pred",
                "orig_labels": list(range(classes)),
                "target_labels": [int(v) if float(v).is_integer() else v for v in values],
            }
        )
    big = max(values) > 255 or min(values) < 0
    post.append(
        {
            "_target_": "SaveImaged",
            "keys": "pred",
            "output_dir": "@output_dir",
            "output_postfix": "",
            "output_ext": ".nii.gz" if dims == 3 else ".png",
            "separate_folder": False,
            "resample": False,
            "output_dtype": "$numpy.int16" if big else "$numpy.uint8",
            "print_log": False,
        }
    )
    return {
        "imports": ["$import glob", "$import os", "$import numpy", "$import torch"],
        "bundle_root": ".",
        "input_dir": "input",
        "output_dir": "output",
        "input_suffixes": list(SUFFIXES[dims]),
        "device": "$torch.device('cuda' if torch.cuda.is_available() else 'cpu')",
        "network_def": "$torch.jit.load(os.path.join(@bundle_root, 'models', 'model.ts'), map_location=@device)",
        "network": "$@network_def.eval()",
        "datalist": "$[{'image': f} for f in sorted(glob.glob(os.path.join(@input_dir, '*'))) "
        "if f.lower().endswith(tuple(@input_suffixes)) and os.path.isfile(f)]",
        "preprocessing": {"_target_": "Compose", "transforms": pre},
        "dataset": {"_target_": "Dataset", "data": "@datalist", "transform": "@preprocessing"},
        "inferer": {
            "_target_": "SlidingWindowInferer",
            "roi_size": list(sw["roi_size"]),
            "sw_batch_size": int(infer.get("sw_batch_size") or 4),
            "overlap": sw["overlap"],
            "mode": sw["mode"],
            "sigma_scale": sw["sigma_scale"],
            "padding_mode": sw["padding_mode"],
            "cval": sw["cval"],
        },
        "postprocessing": {"_target_": "Compose", "transforms": post},
        "initialize": ["$torch.set_grad_enabled(False)", "$os.makedirs(@output_dir, exist_ok=True)"],
        "run": [_RUN],
    }


def metadata(spec: Mapping[str, Any], config: Mapping[str, Any], source: Mapping[str, Any]) -> dict[str, Any]:
    """The bundle's ``metadata.json`` (MONAI's metadata fields)."""
    import monai

    dims = spec["spatial_dims"]
    classes = spec["classes"]
    roi = list(spec["sliding_window"]["roi_size"])
    net = config["network"]
    return {
        "version": "0.1.0",
        "changelog": {"0.1.0": "exported by medseg export"},
        "monai_version": monai.__version__,
        "pytorch_version": torch.__version__.split("+")[0],
        "numpy_version": np.__version__,
        "required_packages_version": {"nibabel": _version("nibabel"), "pillow": _version("pillow")},
        "name": f"medseg {net['name']} {dims}D segmentation",
        "task": f"{dims}D semantic segmentation ({classes['num_classes']} classes)",
        "description": f"{net['name']} trained with medseg; sliding-window inference over {roi} windows. "
        "Run: python -m monai.bundle run --config_file configs/inference.json --input_dir IN --output_dir OUT",
        "authors": "medseg",
        "copyright": "see the training data's licence",
        "medseg_source": dict(source),
        "network_data_format": {
            "inputs": {
                "image": {
                    "type": "image",
                    "format": "magnitude",
                    "num_channels": spec["model"]["input"]["channels"],
                    "spatial_shape": roi,
                    "dtype": "float32",
                    "value_range": [],
                    "is_patch_data": True,
                    "channel_def": {str(i): f"channel {i}" for i in range(spec["model"]["input"]["channels"])},
                }
            },
            "outputs": {
                "pred": {
                    "type": "image",
                    "format": "segmentation",
                    "num_channels": spec["model"]["output"]["channels"],
                    "spatial_shape": roi,
                    "dtype": "float32",
                    "value_range": [],
                    "is_patch_data": True,
                    "channel_def": {
                        str(i): f"class {i} (label value {v:g})" for i, v in enumerate(classes["label_values"])
                    },
                }
            },
        },
    }


def _version(dist: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return "not installed"


LOGGING = """[loggers]
keys=root

[handlers]
keys=consoleHandler

[formatters]
keys=fullFormatter

[logger_root]
level=INFO
handlers=consoleHandler

[handler_consoleHandler]
class=StreamHandler
level=INFO
formatter=fullFormatter
args=(sys.stdout,)

[formatter_fullFormatter]
format=%(asctime)s - %(name)s - %(levelname)s - %(message)s
"""
"""MONAI's usual ``configs/logging.conf`` (``monai.bundle run`` warns when a bundle has none)."""

README = """# {name}

Exported by `medseg export`; runs with MONAI and PyTorch alone (nibabel for NIfTI, Pillow for PNG).

    cd <this folder>
    python -m monai.bundle run --config_file configs/inference.json --input_dir IN --output_dir OUT

Overrides (`--key value`): `input_dir` (default `input`), `output_dir` (default `output`),
`input_suffixes` (default `{suffixes}`), `bundle_root` (default `.`, the folder holding `models/`;
set it to run from elsewhere), `device` (default CUDA when present).

- `models/model.ts`: TorchScript, `image` {layout} float32 in, logits out; any batch and
  spatial size (padded inside to a multiple of {divisor}).{tta}
- `models/model.pt`: the network's state dict, for medseg: `pipeline.engines.factory.build_network`
  on `network` of `preprocessing.json`, then `load_state_dict`.
- `preprocessing.json`: every pre- and post-processing setting (see medseg's `pipeline/export.py`).
"""


def write_bundle(network: torch.nn.Module, config: Mapping[str, Any], spec: Mapping[str, Any], root: Path) -> Path:
    """Write the bundle's files beside ``models/model.ts`` (already exported into ``root`` by
    :func:`pipeline.export.export_checkpoint`, with its processing ``spec``)."""
    source = spec["source"]
    tta = bool(spec["model"]["tta_in_model"])
    for folder in ("models", "configs", "docs"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    torch.save({k: v.detach().cpu() for k, v in network.state_dict().items()}, root / "models" / "model.pt")
    files = {
        root / "preprocessing.json": spec,
        root / "configs" / "inference.json": inference_config(spec, config),
        root / "configs" / "metadata.json": metadata(spec, config, source),
    }
    for path, data in files.items():
        path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    (root / "configs" / "logging.conf").write_text(LOGGING, encoding="utf-8")
    meta = files[root / "configs" / "metadata.json"]
    (root / "docs" / "README.md").write_text(
        README.format(
            name=meta["name"],
            suffixes=json.dumps(files[root / "configs" / "inference.json"]["input_suffixes"]),
            layout=spec["model"]["input"]["layout"],
            divisor=spec["model"]["size_divisor"],
            tta=" Flip TTA is inside the model." if tta else "",
        ),
        encoding="utf-8",
    )
    return root
