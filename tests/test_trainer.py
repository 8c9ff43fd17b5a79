from __future__ import annotations

import csv
import random

import numpy as np
import pytest
import torch

from pipeline.engines import optim, report
from pipeline.engines.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from pipeline.engines.trainer import dice_per_class, epoch_seed
from pipeline.errors import MedsegError


def test_dice_per_class_values_and_empty_convention():
    pred = torch.tensor([[[0, 1, 1, 2]], [[0, 0, 0, 0]]])
    label = torch.tensor([[[0, 1, 2, 2]], [[0, 0, 0, 0]]])
    dice = dice_per_class(pred, label, 3)
    # item 1: class 1 2*1/(2+1), class 2 2*1/(1+2); item 2: both empty -> 1
    torch.testing.assert_close(dice, torch.tensor([(2 / 3 + 1) / 2, (2 / 3 + 1) / 2]))
    assert dice_per_class(pred, label, 1).numel() == 0


def test_epoch_seed_is_stable_and_distinct():
    assert epoch_seed(0, 0) == 17 and epoch_seed(1, 2) == (1_000_003 + 2 * 7_919 + 17)
    assert len({epoch_seed(s, e) for s in range(5) for e in range(50)}) == 250


@pytest.mark.parametrize(
    ("name", "kwargs", "expected"),
    [
        ("constant", {"warmup_epochs": 2}, [1 / 3, 2 / 3, 1.0, 1.0, 1.0]),
        ("poly", {}, [1.0, 0.8**0.9, 0.6**0.9, 0.4**0.9, 0.2**0.9]),
        ("cosine", {"min_factor": 0.0}, [1.0, 0.8535534, 0.5, 0.1464466, 0.0]),
    ],
)
def test_schedules_per_epoch(name, kwargs, expected):
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = optim.SCHEDULERS.get(name)(opt, 5, **kwargs)
    seen = []
    for _ in range(5):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    np.testing.assert_allclose(seen, expected, rtol=1e-6)


def test_schedule_argument_errors():
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    with pytest.raises(ValueError, match=r"warmup_epochs must be in \[0, max_epochs=3\), got 3"):
        optim.cosine(opt, 3, warmup_epochs=3)
    with pytest.raises(ValueError, match=r"min_factor must be in \[0, 1\], got 2"):
        optim.cosine(opt, 3, min_factor=2)


def test_history_csv_union_of_columns(tmp_path):
    path = tmp_path / "log.csv"
    report.write_history([{"epoch": 1, "loss": 0.5}, {"epoch": 2, "loss": 0.25, "val_dice": 0.75}], path)
    rows = list(csv.DictReader(path.open()))
    assert rows == [{"epoch": "1", "loss": "0.5", "val_dice": ""}, {"epoch": "2", "loss": "0.25", "val_dice": "0.75"}]
    assert report.plot_curves([{"epoch": 1, "train_loss": 1.0, "lr": 0.1, "val_dice": 0.5}], tmp_path / "c.png")
    assert (tmp_path / "c.png").read_bytes()[:4] == b"\x89PNG"


def test_checkpoint_round_trip_restores_rng_and_keeps_previous(tmp_path):
    path = tmp_path / "ck" / "last.pt"
    torch.manual_seed(5)
    np.random.seed(5)
    random.seed(5)
    state = rng_state()
    expected = (torch.rand(3), np.random.rand(3), random.random())
    save_checkpoint({"rng": state, "epoch": 1}, path)
    save_checkpoint({"rng": state, "epoch": 2}, path)
    assert load_checkpoint(path)["epoch"] == 2 and load_checkpoint(tmp_path / "ck" / "last.prev.pt")["epoch"] == 1
    set_rng_state(load_checkpoint(path)["rng"])
    got = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(got[0], expected[0]) and np.array_equal(got[1], expected[1]) and got[2] == expected[2]
    assert not list(path.parent.glob(".*.tmp"))


def test_damaged_checkpoints_are_clear_errors(tmp_path):
    path = tmp_path / "last.pt"
    save_checkpoint({"epoch": 1}, path)
    save_checkpoint({"epoch": 2}, path)
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(
        MedsegError, match=r"last\.pt: checkpoint is truncated or corrupt .*the previous checkpoint is .*last\.prev\.pt"
    ):
        load_checkpoint(path)
    other = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(1)}, other)
    with pytest.raises(MedsegError, match="not a medseg checkpoint"):
        load_checkpoint(other)
    with pytest.raises(MedsegError, match="checkpoint not found"):
        load_checkpoint(tmp_path / "missing.pt")
