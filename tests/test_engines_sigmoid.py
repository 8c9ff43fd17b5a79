"""Single-channel sigmoid networks end to end: ``network.out_channels: 1`` with a sigmoid loss
trains, validates, infers and evaluates with ``p > 0.5`` as foreground (two classes)."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from _synthetic import tiny_config, write_config, write_folders
from PIL import Image

from pipeline.cli import main
from pipeline.engines.inferer import activation, predict, to_labels


class _Constant(torch.nn.Module):
    """One output channel of constant logit ``value`` (a fixed, confident binary network)."""

    def __init__(self, value: float) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 1, 1)
        with torch.no_grad():
            self.conv.weight.zero_()
            self.conv.bias.fill_(value)

    def forward(self, x):
        return self.conv(x)


def test_single_channel_probabilities_and_labels():
    x = torch.zeros(1, 1, 12, 12)
    probs = predict(_Constant(2.0).eval(), x, roi_size=(8, 8), tta=True)
    assert probs.shape == (1, 1, 12, 12)
    torch.testing.assert_close(probs, torch.full_like(probs, 1 / (1 + np.exp(-2.0))))
    assert to_labels(probs).unique().tolist() == [1]  # argmax over one channel would say 0
    assert to_labels(predict(_Constant(-2.0).eval(), x, roi_size=(8, 8))).unique().tolist() == [0]
    two = activation(torch.tensor([[[1.0]], [[3.0]]]), dim=0)
    assert to_labels(two, dim=0).tolist() == [[1]] and to_labels(two, dim=0, keepdim=True).shape == (1, 1, 1)


@pytest.fixture(scope="module")
def sigmoid_run(tmp_path_factory):
    base = tmp_path_factory.mktemp("sigmoid")
    root = write_folders(base / "data", n=6, size=40)
    cfg = tiny_config(
        root,
        base / "run",
        network={"name": "unet", "spatial_dims": 2, "in_channels": 1, "out_channels": 1, "channels": [4, 8, 16]},
        # softmax/to_onehot_y spelled out: the loss default (softmax: true) merges into a same-name loss
        loss={"name": "dice_ce", "sigmoid": True, "softmax": False, "to_onehot_y": False},
        data={"format": "folders", "root": str(root), "val_fraction": 0.34, "test_fraction": 0.17},
        train={"epochs": 2},
    )
    path = write_config(base / "cfg.yaml", cfg)
    assert main(["train", "-c", path]) == 0
    return base, root


def test_sigmoid_training_validates_above_zero(sigmoid_run):
    base, _ = sigmoid_run
    rows = list(csv.DictReader((base / "run" / "log.csv").open()))
    assert len(rows) == 2 and max(float(r["val_dice"]) for r in rows) > 0.1


def test_sigmoid_inference_writes_foreground(sigmoid_run, tmp_path):
    base, root = sigmoid_run
    ckpt = str(base / "run" / "checkpoints" / "best.pt")
    out = tmp_path / "pred"
    assert (
        main(["infer", "--checkpoint", ckpt, "--input", str(root / "images" / "case0.png"), "--output", str(out)]) == 0
    )
    pred = np.asarray(Image.open(out / "case0.png"))
    label = np.asarray(Image.open(root / "labels" / "case0.png"))
    assert pred.shape == label.shape and set(np.unique(pred)) <= {0, 1}
    overlap = 2 * np.sum((pred > 0) & (label > 0)) / (np.sum(pred > 0) + np.sum(label > 0))
    assert overlap > 0.1


def test_evaluate_checkpoint_honours_classes_and_refuses_folder_options(sigmoid_run, tmp_path, capsys):
    base, _ = sigmoid_run
    ckpt = str(base / "run" / "checkpoints" / "best.pt")
    cfg = str(base / "cfg.yaml")
    out = tmp_path / "eval"
    args = ["evaluate", "--checkpoint", ckpt, "-c", cfg, "--split", "val", "--metrics", "dice"]
    assert main([*args, "--output", str(out), "--classes", "1"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["classes"] == [1] and summary["per_class"]["1"]["dice"]["mean"] > 0.1
    capsys.readouterr()
    assert main([*args, "--output", str(tmp_path / "e2"), "--classes", "2"]) == 2
    assert "--classes 2: the network predicts classes 1" in capsys.readouterr().err
    for flag, value in (("--fov", str(tmp_path)), ("--case-regex", r"^(\d+)_")):
        assert main([*args, "--output", str(tmp_path / "e3"), flag, value]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and f"{flag}: only with --pred/--label folders" in err
    assert not (tmp_path / "e2").exists() and not (tmp_path / "e3").exists()
