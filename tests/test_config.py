from __future__ import annotations

import pytest
import yaml

from pipeline.config import (
    Component,
    ConfigError,
    Field,
    Section,
    build_component,
    dump_config,
    load_config,
    parse_overrides,
)
from pipeline.registry import Registry

TOY = Registry("network")


@TOY.register("toy")
def _toy(spatial_dims, in_channels, out_channels, *, channels=(4, 8), norm="batch", dropout=0.0, deep=False):
    if spatial_dims not in (2, 3):
        raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims!r}")
    return {"dims": spatial_dims, "channels": tuple(channels), "norm": norm, "dropout": dropout, "deep": deep}


SCHEMA = Section(
    {
        "seed": Field(int, 0, minimum=0),
        "network": Component(TOY, required=True),
        "train": Section(
            {
                "epochs": Field(int, 10, minimum=1),
                "lr": Field(float, 1e-3),
                "amp": Field(bool, False),
                "mode": Field(str, "fast", choices=("fast", "slow")),
                "patch": Field(list, [32, 32], item=int, length=(2, 3)),
            }
        ),
    }
)

NET = "network: {name: toy, spatial_dims: 2, in_channels: 1, out_channels: 2}\n"


def write(tmp_path, text, name="c.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def load(tmp_path, text, overrides=()):
    return load_config(write(tmp_path, text), overrides, schema=SCHEMA)


def test_defaults_filled_and_types_normalised(tmp_path):
    cfg = load(tmp_path, NET + "train: {epochs: 3, lr: 1}\n")
    assert cfg["seed"] == 0
    assert cfg["train"] == {"epochs": 3, "lr": 1.0, "amp": False, "mode": "fast", "patch": [32, 32]}
    assert isinstance(cfg["train"]["lr"], float)
    assert cfg["network"] == {"name": "toy", "spatial_dims": 2, "in_channels": 1, "out_channels": 2}


def test_overrides_parse_yaml_values_and_create_sections(tmp_path):
    cfg = load(tmp_path, NET, ["train.epochs=5", "train.patch=[16, 16, 8]", "network.channels=[2, 4]", "seed=7"])
    assert cfg["train"]["epochs"] == 5 and cfg["train"]["patch"] == [16, 16, 8] and cfg["seed"] == 7
    assert cfg["network"]["channels"] == [2, 4]
    net = build_component(cfg["network"], TOY)
    assert net["channels"] == (2, 4)


@pytest.mark.parametrize(
    ("text", "overrides", "pattern"),
    [
        (NET + "trian: {}\n", [], r"c\.yaml: trian: unknown key \(did you mean 'train'\?\)"),
        (NET + "train: {epochs: ten}\n", [], r"c\.yaml: train\.epochs: expected int, got str 'ten'"),
        (NET + "train: {epochs: 0}\n", [], r"train\.epochs: must be >= 1, got 0"),
        (NET + "train: {amp: 1}\n", [], r"train\.amp: expected bool, got int 1"),
        (
            NET + "train: {mode: fsat}\n",
            [],
            r"train\.mode: 'fsat' is not one of \['fast', 'slow'\] \(did you mean 'fast'\?\)",
        ),
        (NET + "train: {patch: [1, 2, 3, 4]}\n", [], r"train\.patch: expected 2 or 3 items, got 4"),
        (NET + "train: {patch: [1, x]}\n", [], r"train\.patch\[1\]: expected int, got str 'x'"),
        ("seed: 1\n", [], r"c\.yaml: network: missing required section"),
        ("network: {spatial_dims: 2}\n", [], r"network\.name: missing required key \(one of: toy\)"),
        ("network: {name: toi, spatial_dims: 2}\n", [], r"network\.name: unknown network 'toi'\. Did you mean 'toy'"),
        ("network: {name: toy, spatial_dims: 2, in_channels: 1}\n", [], r"network\.out_channels: missing required key"),
        (
            NET[:-2] + ", chanels: [1]}\n",
            [],
            r"network\.chanels: network 'toy' has no argument 'chanels' \(did you mean 'channels'\?\)",
        ),
        (NET[:-2] + ", dropout: high}\n", [], r"network\.dropout: expected float, got str 'high'"),
        (NET[:-2] + ", norm: '$eval'}\n", [], r"network\.norm: '\$eval' looks like an expression"),
        (NET, ["train.epochs=abc"], r"^--set train\.epochs='abc': train\.epochs: expected int"),
        (
            NET,
            ["train.epoch=3"],
            r"^--set train\.epoch=3: train\.epoch: unknown key \(did you mean 'train\.epochs'\?\)",
        ),
        (NET, ["network.name=nope"], r"^--set network\.name='nope': network\.name: unknown network 'nope'"),
        (NET, ["trainepochs"], r"--set 'trainepochs': expected KEY=VALUE"),
        (NET, ["seed.x=1"], r"--set seed\.x=1: seed: expected int, got dict"),
        (NET + "seed: 3\n", ["seed.x=1"], r"--set seed\.x: seed is not a section"),
        ("network: [1\n", [], r"c\.yaml: invalid YAML at line 2"),
        ("- 1\n- 2\n", [], r"c\.yaml: the top level must be a mapping of sections, got list"),
        ("!!python/object/apply:os.system ['true']\n", [], r"c\.yaml: invalid YAML .*python/object/apply:os\.system"),
    ],
)
def test_errors_name_file_and_key(tmp_path, text, overrides, pattern):
    with pytest.raises(ConfigError, match=pattern):
        load(tmp_path, text, overrides)


def test_missing_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match=r"nothere\.yaml: config file not found"):
        load_config(tmp_path / "nothere.yaml", schema=SCHEMA)


def test_dotted_import_path_is_not_a_component(tmp_path):
    with pytest.raises(ConfigError, match="unknown network 'monai.networks.nets.UNet'"):
        load(tmp_path, "network: {name: monai.networks.nets.UNet, spatial_dims: 2}\n")


def test_constructor_errors_become_config_errors(tmp_path):
    cfg = load(tmp_path, NET, ["network.spatial_dims=4"])
    with pytest.raises(ConfigError, match=r"network \(toy\): spatial_dims must be 2 or 3, got 4"):
        build_component(cfg["network"], TOY, where="network")


def test_resolved_config_round_trips_through_yaml(tmp_path):
    cfg = load(tmp_path, NET, ["train.patch=[8, 8, 8]"])
    out = tmp_path / "resolved.yaml"
    dump_config(cfg, out)
    assert yaml.safe_load(out.read_text()) == cfg
    assert load_config(out, schema=SCHEMA) == cfg
    assert not list(tmp_path.glob("*.tmp"))


def test_shorthand_component_and_base_mapping():
    schema = Section(
        {"network": Component(TOY, default={"name": "toy", "spatial_dims": 3, "in_channels": 1, "out_channels": 1})}
    )
    assert load_config(base={}, schema=schema)["network"]["spatial_dims"] == 3
    assert parse_overrides(["a.b=[1, 2]", "c=true", "d="]) == [("a.b", [1, 2]), ("c", True), ("d", "")]
