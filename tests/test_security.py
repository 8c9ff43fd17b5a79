"""Hostile files: checkpoints and configs cannot run code, and outputs stay in the output folder."""

from __future__ import annotations

import ast
import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from _synthetic import blob_case, tiny_config, write_config, write_folders, write_image

from pipeline.cli import main
from pipeline.config import ConfigError, load_config
from pipeline.engines import factory
from pipeline.engines.checkpoint import FORMAT, load_checkpoint, save_checkpoint
from pipeline.engines.predictor import output_name
from pipeline.errors import MedsegError

ROOT = Path(__file__).resolve().parents[1]
SOURCES = sorted(p for d in ("pipeline", "transforms", "bench") for p in (ROOT / d).rglob("*.py"))


class _RunsCode:
    """Unpickling this calls ``os.system`` (what a booby-trapped checkpoint does)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _one_error_line(capsys) -> str:
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


def _checkpoint(path: Path, config: dict) -> Path:
    config = load_config(None, base=config)
    return save_checkpoint({"config": config, "network": factory.build_network(config).state_dict()}, path)


# ----------------------------------------------------------------------------------- checkpoints


@pytest.mark.parametrize("zipfile", [True, False], ids=["zip", "legacy"])
def test_checkpoint_with_a_code_running_pickle_is_refused(tmp_path, capsys, zipfile):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"
    state = {"format": FORMAT, "config": {}, "network": {}, "payload": _RunsCode(marker)}
    torch.save(state, evil, _use_new_zipfile_serialization=zipfile)
    with pytest.raises(MedsegError, match=r"evil\.pt: refused: it holds Python objects \(posix\.system\) that could"):
        load_checkpoint(evil)
    image = write_image(tmp_path / "x.png", np.zeros((8, 8), np.uint8))
    assert main(["infer", "--checkpoint", str(evil), "--input", str(image), "--output", str(tmp_path / "out")]) == 2
    assert re.search(r"evil\.pt: refused: it holds Python objects", _one_error_line(capsys))
    assert not marker.exists()


def test_every_torch_load_is_weights_only():
    calls = []
    for path in SOURCES:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "load":
                owner = node.func.value
                if isinstance(owner, ast.Name) and owner.id == "torch":
                    safe = any(
                        k.arg == "weights_only" and isinstance(k.value, ast.Constant) and k.value.value is True
                        for k in node.keywords
                    )
                    calls.append((path.relative_to(ROOT).as_posix(), node.lineno, safe))
    assert ("pipeline/engines/checkpoint.py", True) in {(p, s) for p, _, s in calls}
    assert [c for c in calls if not c[2]] == []


def test_no_unsafe_deserialisers_or_dynamic_imports_in_the_package():
    banned = {
        ("yaml", "load"), ("yaml", "unsafe_load"), ("yaml", "full_load"), ("yaml", "load_all"),
        ("pickle", "load"), ("pickle", "loads"), ("importlib", "import_module"), ("pydoc", "locate"),
    }  # fmt: skip
    found = []
    for path in SOURCES:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.Call):
                continue
            func = node.func
            if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name):
                if (func.value.id, func.attr) in banned:
                    found.append(f"{path.name}:{node.lineno} {func.value.id}.{func.attr}")
            elif isinstance(func, ast.Name) and func.id in ("eval", "exec", "__import__"):
                found.append(f"{path.name}:{node.lineno} {func.id}")
    assert found == []


# ----------------------------------------------------------------------------------- configs


@pytest.mark.parametrize(
    "tag",
    [
        '!!python/object/apply:os.system ["touch {marker}"]',
        "!!python/name:os.system",
        '!!python/object/new:subprocess.Popen [["touch", "{marker}"]]',
    ],
    ids=["apply", "name", "new"],
)
def test_yaml_python_tags_are_refused(tmp_path, capsys, tag):
    marker = tmp_path / "pwned"
    path = tmp_path / "cfg.yaml"
    path.write_text("seed: 0\nnetwork: " + tag.format(marker=marker) + "\n")
    with pytest.raises(ConfigError, match=r"cfg\.yaml: invalid YAML at line 2, column 10: .*python/"):
        load_config(path)
    assert main(["train", "-c", str(path)]) == 2
    assert re.search(r"cfg\.yaml: invalid YAML", _one_error_line(capsys))
    assert not marker.exists()


def test_python_tag_in_a_set_override_is_refused(tmp_path, capsys):
    marker = tmp_path / "pwned"
    config = write_config(tmp_path / "cfg.yaml", tiny_config(tmp_path, tmp_path / "run"))
    rc = main(["train", "-c", config, "--set", f'network.name=!!python/object/apply:os.system ["touch {marker}"]'])
    assert rc == 2
    assert re.search(r"--set network\.name=.*: invalid YAML .*python/object/apply", _one_error_line(capsys))
    assert not marker.exists()


@pytest.mark.parametrize(
    ("section", "spec", "pattern"),
    [
        ("network", {"name": "monai.networks.nets.UNet"}, r"network\.name: .*'monai\.networks\.nets\.UNet'"),
        ("loss", {"name": "torch.nn.CrossEntropyLoss"}, r"loss\.name: .*'torch\.nn\.CrossEntropyLoss'"),
        ("optimizer", {"name": "adamw", "lr": "$__import__('os').system('x')"}, r"optimizer\.lr: .*looks like an"),
        ("network", {"_target_": "monai.networks.nets.UNet"}, r"network\.name: missing required key"),
    ],
    ids=["dotted-network", "dotted-loss", "expression", "hydra-target"],
)
def test_configs_name_registered_components_only(tmp_path, section, spec, pattern):
    config = tiny_config(tmp_path, tmp_path / "run")
    config[section] = spec
    with pytest.raises(ConfigError, match=pattern):
        load_config(write_config(tmp_path / "cfg.yaml", config))


# ----------------------------------------------------------------------------------- output paths


@pytest.mark.parametrize(
    ("source", "name"),
    [
        ("../../etc/x.nii.gz", "x.nii.gz"),
        ("/etc/passwd.png", "passwd.png"),
        ("data/../../../tmp/evil.tif", "evil.png"),
        ("..", "...png"),
        ("..\\..\\evil.png", "..\\..\\evil.png"),  # a backslash is a plain character in a POSIX name
    ],
)
def test_output_name_keeps_only_a_file_name(source, name):
    assert output_name(source) == name
    assert Path(name).name == name and name not in ("", ".", "..")


def test_datalist_paths_with_dot_dot_cannot_write_outside_the_output(tmp_path, capsys):
    """An MSD dataset.json that points outside its folder: predictions still land in OUTPUT/predictions."""
    root = tmp_path / "dataset"
    folders = [("dataset/imagesTr", "dataset/labelsTr")] * 2 + [("elsewhere/deep/images", "elsewhere/deep/labels")]
    for i, (images, labels) in enumerate(folders):
        image, label = blob_case(np.random.default_rng(i), (20, 20, 20))
        for sub in (images, labels):
            (tmp_path / sub).mkdir(parents=True, exist_ok=True)
        write_image(tmp_path / images / f"case{i}.nii.gz", image)
        write_image(tmp_path / labels / f"case{i}.nii.gz", label)
    entries = [{"image": f"./imagesTr/case{i}.nii.gz", "label": f"./labelsTr/case{i}.nii.gz"} for i in range(2)]
    outside = "../elsewhere/deep"
    entries.append({"image": f"./imagesTr/../{outside}/images/case2.nii.gz", "label": f"{outside}/labels/case2.nii.gz"})
    (root / "dataset.json").write_text(json.dumps({"training": entries, "labels": {"0": "bg", "1": "fg"}}))
    config = tiny_config(root, tmp_path / "run", dims=3, data={"format": "msd", "root": str(root), "val_fraction": 0.0})
    checkpoint = _checkpoint(tmp_path / "model.pt", config)
    before = {p for p in tmp_path.rglob("*")}
    out = tmp_path / "out"
    argv = ["evaluate", "--checkpoint", str(checkpoint), "--output", str(out), "--split", "train", "--save-predictions"]
    assert main(argv) == 0
    written = {p for p in tmp_path.rglob("*")} - before
    assert all(p == out or out in p.parents for p in written), sorted(written)
    assert sorted(p.name for p in (out / "predictions").iterdir()) == [f"case{i}.nii.gz" for i in range(3)]


def test_a_planted_symlink_in_the_output_is_replaced_not_followed(tmp_path):
    root = write_folders(tmp_path / "data", n=2, size=40)
    checkpoint = _checkpoint(tmp_path / "model.pt", tiny_config(root, tmp_path / "run"))
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    out = tmp_path / "out"
    out.mkdir()
    (out / "case0.png").symlink_to(victim)
    argv = ["infer", "--checkpoint", str(checkpoint), "--input", str(root / "images"), "--output", str(out)]
    assert main([*argv, "--overwrite"]) == 0
    assert victim.read_text() == "keep me"
    assert not (out / "case0.png").is_symlink() and (out / "case0.png").read_bytes()[:4] == b"\x89PNG"
