"""Export: ONNX / TorchScript equal PyTorch on odd sizes; the MONAI bundle equals ``medseg infer``; CLI errors."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from _synthetic import blob_case, subprocess_env, tiny_config, write_config, write_folders
from PIL import Image

from pipeline.cli import main
from pipeline.engines.checkpoint import load_checkpoint, save_checkpoint
from pipeline.engines.inferer import flip_sets, sliding_window_inference
from pipeline.engines.predictor import Predictor, run_inference
from pipeline.errors import MedsegError
from pipeline.export import TOLERANCE, ExportModule, export_checkpoint, export_network, onnx_runner
from pipeline.networks import NETWORKS

TINY = {
    "unet": {"channels": (4, 8, 16)},
    "resunet": {"channels": (4, 8, 16)},
    "denseunet": {"channels": (4, 8, 16), "growth_rate": 4, "multiscale_input": True},
}
# odd sizes (padded inside the graph), an aligned one (no padding), and a second batch size
SHAPES = {2: [(2, 1, 37, 45), (1, 1, 32, 32), (3, 1, 19, 50)], 3: [(2, 1, 19, 23, 17), (1, 1, 16, 24, 8)]}


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


def _network(name: str, dims: int) -> torch.nn.Module:
    torch.manual_seed(0)
    net = NETWORKS.build(name, dims, 1, 3, **TINY[name])
    # non-trivial norm statistics, so eval-mode batch norm is not an identity
    for module in net.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
    return net.eval()


def _max_diff(net: torch.nn.Module, run, shape: tuple[int, ...]) -> float:
    x = torch.randn(shape, generator=torch.Generator().manual_seed(sum(shape)))
    with torch.no_grad():
        want = net(x)
        got = run(x)
    assert tuple(got.shape) == tuple(want.shape) == (shape[0], 3, *shape[2:])
    return float((got - want).abs().max())


@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("name", list(TINY))
def test_onnx_equals_pytorch_on_odd_sizes(tmp_path, name, dims):
    import onnx

    net = _network(name, dims)
    path = tmp_path / "model.onnx"
    export_network(net, "onnx", path, check=False)
    model = onnx.load(str(path))
    onnx.checker.check_model(model)
    dims_of_input = model.graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_param != "" for d in dims_of_input] == [True, False] + [True] * dims  # batch, C fixed, spatial
    run = onnx_runner(path)
    for shape in SHAPES[dims]:
        assert _max_diff(net, run, shape) <= TOLERANCE, shape


@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("name", list(TINY))
def test_torchscript_equals_pytorch_on_odd_sizes(tmp_path, name, dims):
    net = _network(name, dims)
    path = tmp_path / "model.ts"
    export_network(net, "torchscript", path, check=False)
    loaded = torch.jit.load(str(path))
    for shape in SHAPES[dims]:
        assert _max_diff(net, loaded, shape) <= TOLERANCE, shape


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
@pytest.mark.parametrize("name", NETWORKS.names())
def test_every_registered_network_exports(tmp_path, name, fmt):
    """A new network is covered by registering it: the export's own check runs it on an odd size."""
    net = NETWORKS.build(name, 2, 1, 2).eval()
    diff = export_network(net, fmt, tmp_path / "model")
    assert diff is not None and 0 <= diff <= TOLERANCE


def test_export_module_tta_is_medseg_flip_tta():
    net = _network("unet", 2)
    x = torch.randn(1, 1, 21, 27, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        want = sliding_window_inference(x, (21, 27), 4, net, overlap=0.0, flips=flip_sets(2))
        got = ExportModule(net, tta=True)(x)
        plain = ExportModule(net)(x)
    assert float((got - want).abs().max()) <= 1e-5
    assert float((plain - want).abs().max()) > 1e-3  # the flips do change the logits


def test_export_check_catches_a_wrong_graph(tmp_path, monkeypatch):
    """The network's own forward traced at an aligned size freezes "no padding": the check refuses it."""
    import pipeline.export as export

    monkeypatch.setattr(export.ExportModule, "forward", lambda self, x: self.network(x))
    shapes = {1: (1, 1, 32, 32), 4: (2, 1, 37, 39)}  # traced aligned, checked odd
    monkeypatch.setattr(export, "example_shape", lambda net, batch=1, offset=1: shapes[offset])
    with pytest.raises(MedsegError, match=r"torchscript export: (fails on|output shape .* for) input \(2, 1, 37, 39\)"):
        export_network(_network("unet", 2), "torchscript", tmp_path / "model.ts")
    assert export_network(_network("unet", 2), "torchscript", tmp_path / "ok.ts", check=False) is None


# --------------------------------------------------------------------------- checkpoints from medseg train


def _shift_head(checkpoint: Path, image: Path, target: Path, quantile: float = 0.7) -> Path:
    """Copy a checkpoint with the class-1 bias of the head shifted so ~30 % of ``image`` is class 1.

    One epoch on tiny data often predicts background everywhere, and equal all-zero outputs would
    prove nothing. Shifting one logit by a constant moves the decision threshold only.
    """
    ckpt = load_checkpoint(checkpoint)
    probs = Predictor(checkpoint)(image).probabilities
    margin = torch.log(probs[1].clamp_min(1e-12) / probs[0].clamp_min(1e-12)).flatten()
    bias = next(k for k in ckpt["network"] if k.startswith("head.") and k.endswith("bias"))
    ckpt["network"][bias][1] -= float(margin.quantile(quantile))
    return save_checkpoint({k: v for k, v in ckpt.items() if k != "format"}, target, keep_previous=False)


@pytest.fixture(scope="module")
def trained_2d(tmp_path_factory):
    """A 1-epoch 2D checkpoint (labels 0/255, flip TTA on) and a PNG and a TIFF of odd sizes."""
    base = tmp_path_factory.mktemp("export2d")
    root = write_folders(base / "data", n=4, size=40, dims=2)
    for path in (root / "labels").iterdir():
        Image.fromarray(np.asarray(Image.open(path)) * 255).save(path)
    cfg = tiny_config(
        root,
        base / "run",
        2,
        train={"epochs": 1},
        transforms={"patch_size": [32, 32], "num_samples": 2, "label_values": [0, 255]},
        infer={"overlap": 0.25, "sw_batch_size": 4, "device": "cpu", "tta": True},
    )
    assert main(["train", "-c", write_config(base / "cfg.yaml", cfg)]) == 0
    inputs = base / "inputs"
    inputs.mkdir()
    rng = np.random.default_rng(7)
    for i, (shape, suffix) in enumerate([((45, 37), ".png"), ((29, 51), ".TIF")]):
        Image.fromarray(blob_case(rng, shape)[0].astype(np.uint8)).save(inputs / f"img{i}{suffix}")
    (inputs / "notes.txt").write_text("not an image: both skip it")
    ckpt = _shift_head(base / "run" / "checkpoints" / "last.pt", inputs / "img0.png", base / "shifted.pt")
    return ckpt, inputs


@pytest.fixture(scope="module")
def trained_3d(tmp_path_factory):
    """A 1-epoch 3D checkpoint (resampled to 1.5×1.2×1 mm, RAS, TTA) and two NIfTI volumes whose
    affines are flipped and anisotropic, so orientation and spacing both have work to undo."""
    base = tmp_path_factory.mktemp("export3d")
    root = write_folders(base / "data", n=3, size=26, dims=3)  # 17 x 21 x 26 after resampling: above the patch
    cfg = tiny_config(
        root,
        base / "run",
        3,
        train={"epochs": 1},
        transforms={"patch_size": [16, 16, 16], "num_samples": 1, "label_values": [0, 1], "spacing": [1.5, 1.2, 1.0]},
        infer={"overlap": 0.25, "sw_batch_size": 2, "device": "cpu", "tta": True, "roi_size": [16, 16, 16]},
    )
    assert main(["train", "-c", write_config(base / "cfg.yaml", cfg)]) == 0
    inputs = base / "inputs"
    inputs.mkdir()
    rng = np.random.default_rng(5)
    for i, shape in enumerate([(19, 23, 17), (21, 17, 15)]):
        affine = np.diag([-1.0, 1.3, 0.9, 1.0])
        affine[:3, 3] = [10.0, -5.0, 3.0]
        nib.save(nib.Nifti1Image(blob_case(rng, shape)[0], affine), str(inputs / f"vol{i}.nii.gz"))
    ckpt = _shift_head(base / "run" / "checkpoints" / "last.pt", inputs / "vol0.nii.gz", base / "shifted.pt")
    return ckpt, inputs


# medseg's packages cannot be imported in the bundle's process: the bundle runs on MONAI alone
_WITHOUT_MEDSEG = (
    "import runpy, sys; sys.modules['pipeline'] = None; sys.modules['transforms'] = None; "
    "sys.argv = ['monai.bundle'] + sys.argv[1:]; runpy.run_module('monai.bundle', run_name='__main__')"
)


def _monai_bundle(bundle: Path, *args: str) -> str:
    """``python -m monai.bundle ARGS`` in ``bundle`` without medseg importable; returns its log."""
    env = {k: v for k, v in subprocess_env(1).items() if k != "PYTHONPATH"}
    cmd = [sys.executable, "-c", _WITHOUT_MEDSEG, *args]
    done = subprocess.run(cmd, cwd=bundle, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout + done.stderr


def _read(path: Path) -> tuple[np.ndarray, np.ndarray | None]:
    if path.name.endswith(".nii.gz"):
        img = nib.load(str(path))
        return np.asarray(img.dataobj), img.affine
    return np.asarray(Image.open(path)), None


@pytest.mark.slow
@pytest.mark.parametrize("trained", ["trained_2d", "trained_3d"])
def test_bundle_run_gives_the_labels_of_medseg_infer(tmp_path, trained, request):
    ckpt, inputs = request.getfixturevalue(trained)
    bundle = export_checkpoint(ckpt, "bundle", tmp_path / "bundle")
    for name in ("configs/metadata.json", "configs/inference.json", "models/model.pt", "models/model.ts"):
        assert (bundle / name).is_file(), name
    config_text = (bundle / "configs" / "inference.json").read_text()
    assert "pipeline" not in config_text and "medseg" not in config_text
    written = run_inference(ckpt, inputs, tmp_path / "medseg", progress=False)
    _monai_bundle(bundle, "run", "--config_file", "configs/inference.json", "--input_dir", str(inputs),
                  "--output_dir", str(tmp_path / "monai"))  # fmt: skip
    assert sorted(p.name for p in (tmp_path / "monai").iterdir()) == sorted(p.name for p in written)
    values = load_checkpoint(ckpt)["config"]["transforms"]["label_values"]
    for ours in written:
        want, want_affine = _read(ours)
        got, got_affine = _read(tmp_path / "monai" / ours.name)
        assert got.shape == want.shape and got.dtype == want.dtype
        assert set(np.unique(want).tolist()) == set(values)  # both classes: the comparison is not vacuous
        np.testing.assert_array_equal(got, want)
        if want_affine is not None:
            np.testing.assert_allclose(got_affine, want_affine, atol=1e-5)
    # MONAI's own check of the metadata's input and output shapes against the network
    log = _monai_bundle(bundle, "verify_net_in_out", "network_def", "--meta_file", "configs/metadata.json",
                        "--config_file", "configs/inference.json")  # fmt: skip
    assert "data shape of network is verified with no error" in log


@pytest.mark.slow
def test_onnx_and_torchscript_exports_with_spec(tmp_path, trained_3d):
    ckpt, _ = trained_3d
    config = load_checkpoint(ckpt)["config"]
    onnx_dir = export_checkpoint(ckpt, "onnx", tmp_path / "onnx")
    ts_dir = export_checkpoint(ckpt, "torchscript", tmp_path / "ts")
    assert sorted(p.name for p in onnx_dir.iterdir()) == ["model.onnx", "preprocessing.json"]
    assert sorted(p.name for p in ts_dir.iterdir()) == ["model.ts", "preprocessing.json"]
    spec = json.loads((onnx_dir / "preprocessing.json").read_text())
    assert spec["model"]["file"] == "model.onnx" and spec["model"]["size_divisor"] == 4
    assert spec["spacing"] == [1.5, 1.2, 1.0] and spec["orientation"] == "RAS"
    assert [s["step"] for s in spec["preprocessing"]] == ["orientation", "spacing", "intensity"]
    assert spec["intensity"] == {
        "mode": "zscore",
        "nonzero": False,
        "statistics": "per image and channel: mean and std over the image (nonzero voxels only if nonzero)",
        "monai": {"_target_": "NormalizeIntensityd", "nonzero": False, "channel_wise": True},
    }
    assert spec["sliding_window"]["roi_size"] == [16, 16, 16] and spec["sliding_window"]["overlap"] == 0.25
    assert spec["tta"]["enabled"] is True and len(spec["tta"]["flips"]) == 8 and spec["tta"]["in_model"] is False
    assert spec["classes"] == {"num_classes": 2, "label_values": [0.0, 1.0]}
    assert spec["network"] == config["network"]
    assert spec["source"]["check_max_abs_diff"] <= TOLERANCE
    # the two exports compute the same logits
    x = torch.randn(1, 1, 17, 19, 21, generator=torch.Generator().manual_seed(0))
    a = onnx_runner(onnx_dir / "model.onnx")(x)
    b = torch.jit.load(str(ts_dir / "model.ts"))(x)
    assert float((a - b).abs().max()) <= TOLERANCE


def test_spec_of_a_ct_config_names_window_and_channels(tmp_path):
    from pipeline.config import resolve
    from pipeline.export import processing_spec

    config = resolve({
        "network": {"name": "unet", "spatial_dims": 2, "in_channels": 1, "out_channels": 3, "channels": [4, 8]},
        "transforms": {"channels": [1], "intensity": {"mode": "window", "window": [-160.0, 240.0], "clip": False}},
        "infer": {"overlap": 0.5, "mode": "constant", "tta": False, "roi_size": [64, 64]},
    })  # fmt: skip
    spec = processing_spec(config, "model.onnx")
    assert spec["channels"] == [1] and spec["spacing"] is None and spec["orientation"] is None
    assert spec["intensity"]["monai"] == {
        "_target_": "ScaleIntensityRanged", "a_min": -160.0, "a_max": 240.0, "b_min": 0.0, "b_max": 1.0, "clip": False,
    }  # fmt: skip
    assert spec["sliding_window"]["mode"] == "constant" and spec["tta"]["flips"] == [[]]
    assert spec["classes"] == {"num_classes": 3, "label_values": [0, 1, 2]}
    flipped = resolve({
        "network": {"name": "unet", "spatial_dims": 2, "in_channels": 1, "out_channels": 2, "channels": [4, 8]},
        "transforms": {"augment": {"flip": {"prob": 0.5, "axes": [1]}}},
        "infer": {"tta": True, "roi_size": [64, 64]},
    })  # fmt: skip
    assert processing_spec(flipped, "model.onnx")["tta"]["flips"] == [[], [3]]  # the axes training flips
    assert spec["model"]["size_divisor"] == 2 and spec["postprocessing"]["activation"] == "softmax over K"


# --------------------------------------------------------------------------- CLI


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A checkpoint written without training: the resolved tiny config and fresh weights."""
    from pipeline.config import load_config
    from pipeline.engines.factory import build_network

    base = tmp_path_factory.mktemp("ckpt")
    cfg = tiny_config(base / "data", base / "run", 2)
    config = load_config(write_config(base / "cfg.yaml", cfg))
    return save_checkpoint({"config": config, "network": build_network(config).state_dict()}, base / "c.pt")


def test_cli_writes_each_format(tmp_path, checkpoint, capsys):
    for fmt, model in (("onnx", "model.onnx"), ("torchscript", "model.ts"), ("bundle", "models/model.ts")):
        out = tmp_path / fmt
        assert main(["export", str(checkpoint), "--format", fmt, "--output", str(out)]) == 0
        assert (out / model).is_file() and (out / "preprocessing.json").is_file()
        assert f"wrote {fmt} export to {out}" in capsys.readouterr().out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle", "onnx", "torchscript"]  # no temp folders left


def test_cli_bad_format_is_one_line(tmp_path, checkpoint, capsys):
    assert main(["export", str(checkpoint), "--format", "tensorrt", "--output", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err == "medseg: error: export format 'tensorrt' is not one of onnx, torchscript, bundle\n"
    assert not (tmp_path / "out").exists()


def test_cli_refuses_a_non_empty_output_without_overwrite(tmp_path, checkpoint, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert main(["export", str(checkpoint), "--format", "torchscript", "--output", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "folder exists and is not empty; pass --overwrite" in err
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    assert main(["export", str(checkpoint), "--format", "torchscript", "--output", str(out), "--overwrite"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["model.ts", "preprocessing.json"]
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["export", str(checkpoint), "--format", "torchscript", "--output", str(empty)]) == 0


def test_cli_names_the_extra_when_onnx_is_missing(tmp_path, checkpoint, capsys, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "onnx" else real(name, *a))
    assert main(["export", str(checkpoint), "--format", "onnx", "--output", str(tmp_path / "out")]) == 2
    assert capsys.readouterr().err.strip() == "medseg: error: ONNX export needs onnx: pip install medseg[export]"
    assert not (tmp_path / "out").exists()


def test_cli_failure_leaves_nothing_half_written(tmp_path, checkpoint, capsys, monkeypatch):
    import pipeline.export as export

    def fail(network, config, spec, root):
        (Path(root) / "configs").mkdir()
        (Path(root) / "configs" / "inference.json").write_bytes(b"half")
        raise MedsegError("bundle: cannot write (differs from PyTorch)")

    monkeypatch.setattr(export, "write_bundle", fail)
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("previous export")
    assert main(["export", str(checkpoint), "--format", "bundle", "--output", str(out), "--overwrite"]) == 2
    assert "differs from PyTorch" in capsys.readouterr().err
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no temporary folder left behind
    assert [p.name for p in out.iterdir()] == ["old.txt"]  # the previous export is intact


def test_cli_bad_checkpoint_is_one_line(tmp_path, checkpoint, capsys):
    bad = tmp_path / "bad.pt"
    data = Path(checkpoint).read_bytes()
    bad.write_bytes(data[: len(data) // 2])  # a truncated download
    assert main(["export", str(bad), "--format", "bundle", "--output", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"medseg: error: {bad}: checkpoint is truncated or corrupt") and err.count("\n") == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.pt"]


def test_export_extra_is_in_dev_and_pinned():
    root = Path(__file__).resolve().parents[1]
    text = (root / "pyproject.toml").read_text()  # tomllib is Python 3.11+, medseg supports 3.10
    extras = {name: json.loads(re.search(rf"^{name} = (\[.*\])$", text, re.M).group(1)) for name in ("dev", "export")}
    names = {r.split(">")[0].split("=")[0] for r in extras["export"]}
    assert names == {"onnx", "onnxruntime", "fire"}
    assert set(extras["export"]) <= set(extras["dev"])
    pins = {line.split("==")[0] for line in (root / "constraints.txt").read_text().splitlines() if "==" in line}
    assert names <= pins


# --------------------------------------------------------------------------- bundle preprocessing = medseg's


def test_bundle_converter_is_medseg_normalise_mode():
    from pipeline._bundle import PIL_CONVERTER
    from pipeline.io import normalise_mode

    convert = eval(PIL_CONVERTER[1:])  # how MONAI evaluates a "$" expression
    rng = np.random.default_rng(0)
    grey = Image.fromarray(rng.integers(0, 256, (9, 7), dtype=np.uint8))
    rgb = Image.fromarray(rng.integers(0, 256, (9, 7, 3), dtype=np.uint8))
    images = {
        "grey palette": grey.convert("RGB").quantize(8),
        "colour palette": rgb.quantize(8),
        "RGBA": rgb.convert("RGBA"),
        "LA": grey.convert("LA"),
        "1": grey.convert("1"),
        "L": grey,
        "RGB": rgb,
    }
    assert images["grey palette"].mode == "P"
    for what, img in images.items():
        want, got = normalise_mode(img), convert(img)
        assert got.mode == want.mode, what
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want), err_msg=what)


@pytest.mark.parametrize(
    ("transforms_cfg", "suffix"),
    [
        ({"channels": [1], "intensity": {"mode": "minmax"}}, ".png"),
        ({"channels": [2, 0], "intensity": {"mode": "zscore", "nonzero": True}}, ".tif"),
        ({"intensity": {"mode": "window", "window": [20.0, 200.0]}}, ".png"),
        ({"intensity": {"mode": "ct", "window": [20.0, 200.0], "mean": 90.0, "std": 40.0}}, ".png"),
    ],
)
def test_bundle_preprocessing_is_medseg_infer_chain(tmp_path, transforms_cfg, suffix):
    from monai.bundle import ConfigParser

    from pipeline._bundle import inference_config
    from pipeline.config import resolve
    from pipeline.data.loaders import build_chain
    from pipeline.export import processing_spec

    channels = len(transforms_cfg.get("channels", [0, 1, 2]))
    config = resolve({
        "network": {"name": "unet", "spatial_dims": 2, "in_channels": channels, "out_channels": 2, "channels": [4, 8]},
        "transforms": transforms_cfg,
        "infer": {"roi_size": [16, 16]},
    })  # fmt: skip
    path = tmp_path / f"rgb{suffix}"
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (13, 21, 3), dtype=np.uint8)).save(path)
    parser = ConfigParser(inference_config(processing_spec(config, "model.ts"), config))
    got = parser.get_parsed_content("preprocessing")({"image": str(path)})["image"]
    want = build_chain(config, "infer")({"image": str(path)})["image"]
    assert tuple(got.shape) == tuple(want.shape) == (channels, 21, 13)
    torch.testing.assert_close(got.as_tensor(), want.as_tensor(), rtol=0, atol=1e-6)
