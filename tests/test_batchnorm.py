"""Batch-norm safety: a short run's checkpoint evaluates (eval mode, running statistics) as its
weights do in train mode (batch statistics), because the trainer recomputes the statistics
before validation and checkpoints while the run has taken few steps."""

from __future__ import annotations

import copy

import pytest
import torch
from _synthetic import tiny_config, write_config, write_folders

from pipeline.config import load_config
from pipeline.data.datalist import load_datalist
from pipeline.data.loaders import build_chain
from pipeline.engines import batchnorm
from pipeline.engines.checkpoint import load_checkpoint
from pipeline.engines.factory import build_network
from pipeline.engines.run import run_training
from pipeline.engines.trainer import dice_per_class


def test_recalibration_is_the_cumulative_average_and_restores_settings():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 3, 3), torch.nn.BatchNorm2d(3))
    net.eval()
    batches = [torch.randn(2, 1, 8, 8) * 3 + 5 for _ in range(4)]
    assert batchnorm.recalibrate_batch_norm(net, batches, max_batches=3) == 3
    bn = net[1]
    with torch.no_grad():
        outs = [net[0](b) for b in batches[:3]]
    means = torch.stack([o.mean((0, 2, 3)) for o in outs])
    torch.testing.assert_close(bn.running_mean, means.mean(0))  # equal-sized batches: mean of means
    assert bn.momentum == 0.1 and not net.training
    before = bn.running_mean.clone()
    assert batchnorm.recalibrate_batch_norm(net, [], max_batches=3) == 0
    torch.testing.assert_close(bn.running_mean, before)  # no batches: statistics kept, not reset
    assert not batchnorm.needs_recalibration(torch.nn.Sequential(torch.nn.InstanceNorm2d(3)), 0)
    assert batchnorm.needs_recalibration(net, batchnorm.FEW_STEPS - 1)
    assert not batchnorm.needs_recalibration(net, batchnorm.FEW_STEPS)


def _dice_gap(run_dir, config_path) -> tuple[float, float]:
    """Mean Dice on the training images of ``best.pt`` in eval mode and of the same weights in train mode."""
    ckpt = load_checkpoint(run_dir / "checkpoints" / "best.pt")
    config = load_config(config_path)
    net = build_network(config)
    net.load_state_dict(ckpt["network"])
    chain = build_chain(config, "val")
    scores = {"eval": [], "train": []}
    for item in load_datalist(config["data"])["train"]:
        d = chain(item)
        image, label = torch.as_tensor(d["image"])[None], torch.as_tensor(d["label"])[None]
        for mode in scores:
            model = copy.deepcopy(net).train(mode == "train")
            with torch.no_grad():
                pred = model(image.as_subclass(torch.Tensor)).argmax(1, keepdim=True)
            scores[mode].append(float(dice_per_class(pred, label, 2)[0]))
    return sum(scores["eval"]) / len(scores["eval"]), sum(scores["train"]) / len(scores["train"])


@pytest.mark.slow
@pytest.mark.parametrize("recalibrate", [True, False])
def test_short_batch_norm_run_checkpoint_scores_in_eval_mode_as_in_train_mode(tmp_path, monkeypatch, recalibrate):
    if not recalibrate:  # the check must fail without the recalibration
        monkeypatch.setattr(batchnorm, "FEW_STEPS", 0)
    root = write_folders(tmp_path / "data", n=6, size=48)
    cfg = tiny_config(
        root,
        tmp_path / "run",
        network={"name": "resunet", "spatial_dims": 2, "in_channels": 1, "out_channels": 2, "channels": [8, 16, 32]},
        train={"epochs": 1, "iterations_per_epoch": 6, "val_every": 1},
        optimizer={"name": "adamw", "lr": 0.02, "weight_decay": 0.0001},
    )
    path = write_config(tmp_path / "cfg.yaml", cfg)
    run_training(path, [], progress=False)
    eval_dice, train_dice = _dice_gap(tmp_path / "run", path)
    assert train_dice > 0.5, train_dice  # the weights learned something
    gap = abs(eval_dice - train_dice)  # measured: 0.06 with the recalibration, 0.50 without
    if recalibrate:
        assert gap < 0.1, (eval_dice, train_dice)
    else:
        assert gap >= 0.1, (eval_dice, train_dice)
