"""pipeline.data.loaders: the cache is never written by the random transforms, patches that fit."""

from __future__ import annotations

import copy

import pytest
import torch
from _synthetic import tiny_config, write_config, write_folders

from pipeline.config import ConfigError, load_config
from pipeline.data import load_datalist
from pipeline.data.loaders import (
    auto_workers,
    build_chain,
    build_loaders,
    cached_sizes,
    check_patch_size,
    make_dataset,
)
from pipeline.engines import factory

EVERY_AUGMENTATION = {  # each random transform of the chain, at probability 1
    "rotate": {"prob": 1.0},
    "scale": {"prob": 1.0},
    "flip": {"prob": 1.0},
    "elastic": {"prob": 1.0},
    "gamma": {"prob": 1.0},
    "noise": {"prob": 1.0},
    "contrast": {"prob": 1.0},
}


def _loaders(tmp_path, dims=2, size=40, loss=None, **sections):
    root = write_folders(tmp_path / "data", n=5, size=size, dims=dims)
    cfg = tiny_config(root, tmp_path / "run", dims=dims, **sections)
    cfg["loss"] = loss or cfg["loss"]
    config = load_config(write_config(tmp_path / "c.yaml", cfg))
    loss = factory.build_loss(config)
    return build_loaders(config, load_datalist(config["data"]), loss, tmp_path / "run", torch.device("cpu")), config


def _tensors(item):
    return {
        k: (v.as_subclass(torch.Tensor).clone(), list(getattr(v, "applied_operations", [])))
        for k, v in item.items()
        if isinstance(v, torch.Tensor)
    }


@pytest.mark.parametrize("dims", [2, 3])
def test_cached_items_are_unchanged_after_epochs_of_every_augmentation(tmp_path, dims):
    size = 40 if dims == 2 else 20
    boundary = {"name": "boundary", "to_onehot_y": True, "softmax": True}  # adds the distance-map input
    loss = {"name": "compound", "region": {"name": "dice_ce", "to_onehot_y": True, "softmax": True}}
    (train, _), _ = _loaders(
        tmp_path, dims, size, transforms={"augment": EVERY_AUGMENTATION}, loss={**loss, "boundary": boundary}
    )
    ds = train.dataset
    assert ds.copy_cache is False  # no per-item deep copy
    before = [_tensors(item) for item in ds._cache]
    snapshot = copy.deepcopy(ds._cache)
    seen = 0
    for _ in range(3):
        for batch in train:
            batch["image"].add_(1.0)  # what a careless in-place step would do: the batch is its own copy
            seen += 1
    assert seen >= 3
    for old, item, deep in zip(before, ds._cache, snapshot, strict=True):
        now = _tensors(item)
        assert now.keys() == old.keys()
        for key, (array, ops) in old.items():
            assert torch.equal(now[key][0], array), key
            assert now[key][1] == ops, key
            assert item[key].meta.keys() == deep[key].meta.keys(), key
        assert {k: v for k, v in item.items() if k not in old} == {k: v for k, v in deep.items() if k not in old}
        assert {k: v for k, v in item.items() if k not in old} == {k: v for k, v in deep.items() if k not in old}


def test_patch_larger_than_every_image_is_refused_with_the_patch_that_fits(tmp_path):
    with pytest.raises(ConfigError, match=r"transforms\.patch_size: \[64, 32\] .*largest 40 x 40.*=\[40,32\]"):
        _loaders(tmp_path, 2, 40, transforms={"patch_size": [64, 32]})


def test_cached_sizes_are_the_sizes_before_padding(tmp_path):
    root = write_folders(tmp_path / "data", n=3, size=24)
    config = load_config(write_config(tmp_path / "c.yaml", tiny_config(root, tmp_path / "run")))
    chain = build_chain(config, "train", factory.build_loss(config))
    ds = make_dataset(load_datalist(config["data"])["train"], chain, config["train"], tmp_path / "cache", 0)
    assert ds._cache[0]["image"].shape[1:] == (32, 32)  # tiny_config's patch: every case padded
    assert set(cached_sizes(ds)) == {(24, 24)}


@pytest.mark.parametrize(
    ("patch", "sizes"),
    [([48, 48], [(30, 30), (50, 50)]), ([64, 16], [(64, 20)]), ([8, 8], [])],
)
def test_a_patch_that_fits_one_image_is_accepted(patch, sizes):
    check_patch_size(patch, sizes)


def test_pinned_memory_only_with_a_gpu(tmp_path):
    (train, _), _ = _loaders(tmp_path, 2, 40)
    assert train.pin_memory is False


def test_auto_workers_on_small_cpu_machines(monkeypatch):
    import pipeline.data.loaders as loaders

    monkeypatch.setattr(loaders, "cpu_count", lambda: 2)
    assert auto_workers(torch.device("cpu")) == 0


def test_cache_digest_changes_with_the_cached_prefix_version(tmp_path, monkeypatch):
    """A disk cache written before the chain's cached part changed (same config) is not served."""
    from pipeline.data import loaders

    root = write_folders(tmp_path / "data", n=2, size=24)
    config = load_config(write_config(tmp_path / "c.yaml", tiny_config(root, tmp_path / "run")))
    now = loaders.cache_digest(config)
    monkeypatch.setattr(loaders, "CACHED_PREFIX_VERSION", loaders.CACHED_PREFIX_VERSION - 1)
    assert loaders.cache_digest(config) != now
