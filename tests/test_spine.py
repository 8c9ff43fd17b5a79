"""The spine from YAML to tensors: each command resolves its config exactly once, and a mistake
anywhere in a config is found before any data is read."""

from __future__ import annotations

import re

import pytest
from _synthetic import tiny_config, write_config, write_folders

import pipeline.config as config_module
from pipeline.cli import main


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("spine")
    data = write_folders(tmp / "data", n=5, size=32)
    config = write_config(tmp / "cfg.yaml", tiny_config(data, tmp / "run"))
    assert main(["train", "-c", config]) == 0
    return tmp, data, config


def _count(argv: list[str]) -> int:
    before = config_module.validation_count()
    assert main(argv) == 0, argv
    return config_module.validation_count() - before


def test_each_command_resolves_its_config_once(trained):
    tmp, data, config = trained
    ckpt = str(tmp / "run" / "checkpoints" / "best.pt")
    assert _count(["train", "-c", config, "--output", str(tmp / "run2")]) == 1
    assert _count(["check-data", "-c", config]) == 1
    assert _count(["evaluate", "--checkpoint", ckpt, "--output", str(tmp / "ev"), "--split", "train"]) == 1
    assert _count(["infer", "--checkpoint", ckpt, "--input", str(data / "images"), "--output", str(tmp / "pr")]) == 1


def test_a_typo_inside_a_nested_component_stops_check_data_before_reading_data(tmp_path, capsys):
    cfg = tiny_config(tmp_path / "does-not-exist", tmp_path / "run")
    cfg["loss"] = {"name": "compound", "region": {"name": "dice_ce", "softmaxx": True}}
    path = write_config(tmp_path / "cfg.yaml", cfg)
    for command in (["check-data", "-c", path], ["train", "-c", path]):
        assert main(command) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and re.search(r"cfg\.yaml:\d+: loss\.region\.softmaxx: .*did you mean 'softmax'", err[0])
    assert not (tmp_path / "run").exists()
