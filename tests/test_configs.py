"""Every shipped config validates, builds, and trains one step on synthetic data of its layout."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from pipeline.config import load_config
from pipeline.data.synth import make_dataset
from pipeline.engines import factory
from pipeline.engines.run import run_training

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))

# config -> (synthetic kind, generator options) in the layout the config reads
LAYOUT = {
    "vessel_drive": ("vessel2d", {}),
    "demo_vessel2d": ("vessel2d", {}),
    "vessel_hepatic": ("vessel3d", {}),
    "lung_msd": ("lung", {"nodules": False}),  # Task06 labels one class (tumour)
    "demo_lung": ("lung", {}),
    "cell_dsb": ("cell", {}),
    "demo_cell": ("cell", {}),
    "cell_dsb_instances": ("cell", {}),
}


def test_every_config_has_a_layout():
    assert {c.stem for c in CONFIGS} == set(LAYOUT)


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_config_builds(path):
    cfg = load_config(path)
    network = factory.build_network(cfg)
    loss = factory.build_loss(cfg)
    optimizer = factory.build_optimizer(cfg, network.parameters())
    factory.build_scheduler(cfg, optimizer)
    assert cfg.spatial_dims == len(cfg.roi_size) == len(cfg.patch_size)
    assert isinstance(network, torch.nn.Module) and isinstance(loss, torch.nn.Module)


@pytest.mark.slow
@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_config_trains_one_step_on_its_layout(path, tmp_path):
    kind, options = LAYOUT[path.stem]
    dims = load_config(path)["network"]["spatial_dims"]
    size = 48 if dims == 2 else [32, 32, 16]
    root = make_dataset(kind, tmp_path / "data", 5, seed=1, size=size, **options)
    patch = "[32, 32]" if dims == 2 else "[32, 32, 16]"
    overrides = [
        f"data.root={root}",
        f"train.output={tmp_path / 'run'}",
        "train.epochs=1",
        "train.iterations_per_epoch=1",
        "train.batch_size=1",
        "train.num_workers=0",
        "train.tensorboard=false",
        "network.channels=[4, 8, 16]",
        "transforms.num_samples=1",
        f"transforms.patch_size={patch}",
        f"infer.roi_size={patch}",
    ]
    if dims == 3:
        overrides.append("transforms.spacing=null")
    summary = run_training(path, overrides, progress=False)
    assert summary["epochs"] == 1
    run = tmp_path / "run"
    assert (run / "checkpoints" / "last.pt").is_file() and (run / "log.csv").is_file()
    assert (run / "config.yaml").is_file()
    assert summary["best_dice"] is not None and 0.0 <= summary["best_dice"] <= 1.0
