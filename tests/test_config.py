from __future__ import annotations

import pytest
import torch
import yaml

from pipeline.config import (
    Config,
    ConfigError,
    build_component,
    dump_config,
    load_config,
    parse_overrides,
    resolve,
)
from pipeline.registry import Registry

NET = "network: {name: unet, spatial_dims: 2, in_channels: 1, out_channels: 2}\n"


def write(tmp_path, text, name="c.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def load(tmp_path, text, overrides=()):
    return load_config(write(tmp_path, text), overrides)


def test_defaults_filled_and_derived_values_computed_once(tmp_path):
    cfg = load(tmp_path, NET + "train: {epochs: 3}\noptimizer: {name: adamw, lr: 1}\n")
    assert isinstance(cfg, Config) and cfg.source == str(tmp_path / "c.yaml")
    assert cfg["seed"] == 0 and cfg["train"]["epochs"] == 3 and cfg["train"]["batch_size"] == 2
    assert cfg["loss"] == {"name": "dice_ce", "to_onehot_y": True, "softmax": True}
    assert (cfg.spatial_dims, cfg.in_channels, cfg.num_classes, cfg.sigmoid) == (2, 1, 2, False)
    assert cfg.patch_size == (128, 128) and cfg["transforms"]["patch_size"] == [128, 128]
    assert cfg.roi_size == (128, 128), "the window defaults to the patch"
    one = load(tmp_path, NET.replace("out_channels: 2", "out_channels: 1"))
    assert (one.num_classes, one.sigmoid) == (2, True)


def test_resolved_config_is_read_only_and_plain_when_saved(tmp_path):
    cfg = load(tmp_path, NET)
    with pytest.raises(TypeError):
        cfg["train"]["epochs"] = 1  # type: ignore[index]
    with pytest.raises(AttributeError):
        cfg["transforms"]["patch_size"].append(3)
    plain = cfg.to_dict()
    assert type(plain["train"]) is dict and type(plain["transforms"]["patch_size"]) is list
    buffer = __import__("io").BytesIO()
    torch.save({"config": plain}, buffer)
    buffer.seek(0)
    assert torch.load(buffer, weights_only=True)["config"] == plain


def test_duplicate_keys_are_refused_with_both_lines(tmp_path):
    text = NET + "train:\n  epochs: 40\nseed: 1\ntrain:\n  epochs: 100\n"
    with pytest.raises(ConfigError, match=r"c\.yaml: train: duplicate key \(lines 2 and 5\)") as info:
        load(tmp_path, text)
    assert (info.value.key, info.value.source) == ("train", str(tmp_path / "c.yaml"))
    with pytest.raises(ConfigError, match=r"train\.seed|seed: duplicate key \(lines 2 and 3\)"):
        load(tmp_path, NET + "seed: 1\nseed: 2\n")
    with pytest.raises(ConfigError, match=r"network\.in_channels: duplicate key"):
        load(tmp_path, "network: {name: unet, spatial_dims: 2, in_channels: 1, in_channels: 3, out_channels: 2}\n")


def test_overrides_merge_into_section_defaults(tmp_path):
    cfg = load(
        tmp_path,
        NET,
        ["optimizer.lr=0.01", "scheduler.warmup=0.1", "loss.include_background=false", "train.epochs=2"],
    )
    assert cfg["optimizer"] == {"name": "adamw", "lr": 0.01, "weight_decay": 1e-4}
    assert cfg["scheduler"] == {"name": "cosine", "warmup": 0.1}
    assert cfg["loss"]["include_background"] is False and cfg["loss"]["name"] == "dice_ce"
    shorthand = load(tmp_path, NET + "loss: dice\n", ["loss.sigmoid=true"])
    assert shorthand["loss"] == {"name": "dice", "sigmoid": True}


@pytest.mark.parametrize(
    ("text", "overrides", "pattern"),
    [
        (NET + "trian: {}\n", [], r"c\.yaml:2: trian: unknown key \(did you mean 'train'\?\)"),
        (NET + "train: {epochs: ten}\n", [], r"c\.yaml:2: train\.epochs: expected int, got str 'ten'"),
        (NET + "train: {epochs: 0}\n", [], r"train\.epochs: must be >= 1, got 0"),
        (NET + "train: {deterministic: 1}\n", [], r"train\.deterministic: expected bool, got int 1"),
        (NET + "train: {cache: memroy}\n", [], r"train\.cache: 'memroy' is not one of .*did you mean 'memory'"),
        (NET + "transforms: {patch_size: [1, 2, 3, 4]}\n", [], r"transforms\.patch_size: expected 2 or 3 items"),
        (NET + "transforms: {patch_size: [1, x]}\n", [], r"transforms\.patch_size\[1\]: expected int, got str"),
        (NET + "transforms: {patch_size: [8, 8, 8]}\n", [], r"transforms\.patch_size: needs 2 values"),
        ("seed: 1\n", [], r"c\.yaml: network: missing required section"),
        ("network: {spatial_dims: 2}\n", [], r"c\.yaml:1: network\.name: missing required key"),
        ("network: {name: unte}\n", [], r"network\.name: unknown network 'unte'\. Did you mean 'unet'"),
        (
            NET[:-2] + ", chanels: [1]}\n",
            [],
            r"network\.chanels: network 'unet' has no argument 'chanels' \(did you mean 'channels'\?\)",
        ),
        (NET[:-2] + ", norm: '$eval'}\n", [], r"network\.norm: '\$eval' looks like an expression"),
        (
            NET + "loss: {name: compound, region: {name: dice_ce, softmaxx: true}}\n",
            [],
            r"c\.yaml:2: loss\.region\.softmaxx: loss 'dice_ce' has no argument 'softmaxx' \(did you mean 'softmax'",
        ),
        (NET + "loss: {name: compound, boundary: {name: nope}}\n", [], r"loss\.boundary\.name: unknown loss 'nope'"),
        (NET, ["train.epochs=abc"], r"^--set train\.epochs=abc: train\.epochs: expected int"),
        (NET, ["train.epoch=3"], r"^--set train\.epoch=3: train\.epoch: unknown key \(did you mean 'train\.epochs'"),
        (NET, ["network.name=nope"], r"^--set network\.name=nope: network\.name: unknown network 'nope'"),
        (NET, ["optimizer.lr=fast"], r"^--set optimizer\.lr=fast: optimizer\.lr: expected float"),
        (NET, ["trainepochs"], r"^--set trainepochs: expected KEY=VALUE"),
        (NET, ["transforms.patch_size=[64, 64"], r"^--set transforms\.patch_size=\[64, 64: invalid YAML"),
        (NET, ["seed.x=1"], r"^--set seed\.x=1: seed: expected int, got dict"),
        (NET + "seed: 3\n", ["seed.x=1"], r"^--set seed\.x: seed is not a section"),
        ("network: [1\n", [], r"c\.yaml: invalid YAML at line 2"),
        ("- 1\n- 2\n", [], r"c\.yaml: the top level must be a mapping of sections, got list"),
        ("!!python/object/apply:os.system ['true']\n", [], r"c\.yaml: invalid YAML .*python/object/apply:os\.system"),
        ("network: {name: monai.networks.nets.UNet}\n", [], r"unknown network 'monai\.networks\.nets\.UNet'"),
    ],
)
def test_errors_name_source_line_and_key(tmp_path, text, overrides, pattern):
    with pytest.raises(ConfigError, match=pattern):
        load(tmp_path, text, overrides)


def test_error_attributes_are_not_sliced_from_the_message(tmp_path):
    with pytest.raises(ConfigError) as info:
        load(tmp_path, NET + "train:\n  batch_size: 2\n  epochs: -1\n")
    err = info.value
    assert (err.key, err.line, err.detail) == ("train.epochs", 4, "must be >= 1, got -1")
    with pytest.raises(ConfigError) as info:
        load(tmp_path, NET, ["train.val_every=0"])
    assert info.value.source == "--set train.val_every=0" and info.value.key == "train.val_every"


def test_missing_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match=r"nothere\.yaml: config file not found"):
        load_config(tmp_path / "nothere.yaml")


TOY = Registry("toy")


@TOY.register("toy")
def _toy(spatial_dims, *, channels=(4, 8), bug=False):
    if spatial_dims not in (2, 3):
        raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims!r}")
    if bug:
        return int(None)  # a bug inside a constructor, not a user mistake
    return {"dims": spatial_dims, "channels": tuple(channels)}


def test_only_binding_and_argument_checks_are_user_errors():
    assert build_component({"name": "toy", "spatial_dims": 2}, TOY)["channels"] == (4, 8)
    with pytest.raises(ConfigError, match=r"network: toy: spatial_dims must be 2 or 3, got 4"):
        build_component({"name": "toy", "spatial_dims": 4}, TOY, where="network")
    with pytest.raises(ConfigError, match=r"network: toy: .*unexpected keyword argument 'chanels'"):
        build_component({"name": "toy", "spatial_dims": 2, "chanels": 1}, TOY, where="network")
    with pytest.raises(TypeError, match="NoneType") as info:
        build_component({"name": "toy", "spatial_dims": 2, "bug": True}, TOY, where="network")
    assert not isinstance(info.value, ConfigError), "a bug must keep its traceback, not look like a user error"


def test_nested_components_are_built_before_the_outer_one(tmp_path):
    from pipeline.losses import CompoundLoss
    from pipeline.registry import LOSSES

    cfg = load(tmp_path, NET + "loss: {name: compound, region: {name: dice, softmax: true, to_onehot_y: true}}\n")
    loss = build_component(cfg["loss"], LOSSES, where="loss")
    assert isinstance(loss, CompoundLoss) and type(loss.region).__name__ == "DiceLoss"


def test_resolved_config_round_trips_through_yaml(tmp_path):
    cfg = load(tmp_path, NET, ["transforms.patch_size=[8, 8]"])
    out = tmp_path / "resolved.yaml"
    dump_config(cfg, out)
    assert yaml.safe_load(out.read_text()) == cfg.to_dict()
    assert load_config(out) == cfg
    assert resolve(cfg.to_dict()) == cfg
    assert not list(tmp_path.glob("*.tmp"))


def test_parse_overrides_values_are_yaml():
    assert parse_overrides(["a.b=[1, 2]", "c=true", "d=", "e=x y"]) == [
        ("a.b", [1, 2]),
        ("c", True),
        ("d", ""),
        ("e", "x y"),
    ]


@pytest.mark.parametrize(("word", "expected"), [("off", "off"), ("no", "off"), ("auto", "auto")])
def test_yaml_words_for_booleans_mean_the_choice(word, expected):
    """``--set train.amp=off`` reaches the schema as YAML 1.1's false: it means the choice ``off``."""
    from pipeline.schema import Field

    field = Field(str, "auto", choices=("auto", "bf16", "fp16", "off"))
    assert field.validate(yaml.safe_load(word), "train.amp") == expected
    with pytest.raises(ConfigError):
        Field(str, "a", choices=("a", "b")).validate(False, "x")  # no such word among the choices: still an error
