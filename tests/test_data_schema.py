"""The ``data`` and ``transforms`` config sections: registered, defaults, validation errors."""

from __future__ import annotations

import pickle

import pytest
import yaml

import pipeline.data.schema as schema
import pipeline.sections  # noqa: F401  (imports the data schema module, as root_schema does)
from pipeline.config import _SECTIONS, Section, validate
from pipeline.errors import ConfigError
from pipeline.io import read_image
from transforms.chains import build_transforms


def test_sections_are_registered_with_the_config_machinery():
    assert _SECTIONS["data"] is schema._data and _SECTIONS["transforms"] is schema._transforms


def test_defaults_a_user_expects():
    data = schema.data_schema().validate({}, "data")
    assert data == {
        "format": "folders", "root": None, "image_dir": "images", "label_dir": "labels", "label_suffix": "",
        "pattern": None, "val_fraction": 0.2, "test_fraction": 0.0, "num_folds": 5, "fold": None, "split_seed": 0,
    }  # fmt: skip
    t = schema.transforms_schema().validate({}, "transforms")
    assert t["intensity"]["mode"] == "zscore" and t["num_samples"] == 2 and t["pos_neg_ratio"] == 1.0
    assert t["augment"]["scale"]["range"] == [0.7, 1.4] and t["augment"]["elastic"]["prob"] == 0.0


def test_docstring_example_validates_and_builds():
    example = yaml.safe_load(schema.__doc__.split("::", 1)[1])
    resolved = validate(example, Section({"data": schema.data_schema(), "transforms": schema.transforms_schema()}))
    assert resolved["transforms"]["label_values"] == [0.0, 255.0]
    chain = build_transforms(
        {**resolved, "network": {"spatial_dims": 2, "in_channels": 1, "out_channels": 2}}, "train", reader=read_image
    )
    assert pickle.loads(pickle.dumps(chain)) is not None  # DataLoader workers may spawn


@pytest.mark.parametrize(
    ("section", "value", "match"),
    [
        ("data", {"val_fraction": 1.5}, r"data.val_fraction: must be <= 0.9, got 1.5"),
        ("data", {"fold": -1}, r"data.fold: must be >= 0, got -1"),
        ("transforms", {"intensity": {"mode": "hu"}}, r"transforms.intensity.mode: 'hu' is not one of"),
        ("transforms", {"augment": {"rotate": {"prob": 2}}}, r"transforms.augment.rotate.prob: must be <= 1.0"),
        ("transforms", {"spacing": [1.0, 1.0]}, r"transforms.spacing: expected 3 items, got 2"),
    ],
)
def test_validation_errors_name_the_key(section, value, match):
    make = schema.data_schema if section == "data" else schema.transforms_schema
    with pytest.raises(ConfigError, match=match):
        make().validate(value, section)
