from __future__ import annotations

import csv
import math
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
        ("constant", {"warmup": 0.4}, [1 / 3, 2 / 3, 1.0, 1.0, 1.0]),
        ("poly", {}, [1.0, 0.8**0.9, 0.6**0.9, 0.4**0.9, 0.2**0.9]),
        ("cosine", {"min_factor": 0.0}, [1.0, 0.8535534, 0.5, 0.1464466, 0.0]),
    ],
)
def test_schedules_per_step(name, kwargs, expected):
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = optim.SCHEDULERS.get(name)(opt, 5, **kwargs)
    seen = []
    for _ in range(5):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    np.testing.assert_allclose(seen, expected, rtol=1e-6)


def _rates(sched, opt, steps):
    seen = []
    for _ in range(steps):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return seen


@pytest.mark.parametrize("total", [1, 2, 3, 7, 400])
def test_warmup_is_a_fraction_so_every_length_is_valid(total):
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    seen = _rates(optim.cosine(opt, total, warmup=0.05, min_factor=0.0), opt, total)
    warm = round(0.05 * total)
    assert len(seen) == total and max(seen) == pytest.approx(1.0)
    if total > warm + 1:
        assert seen[-1] == pytest.approx(0.0, abs=1e-12)  # the decay ends at the run's last step
    assert all(a < b for a, b in zip(seen[: warm + 1], seen[1 : warm + 1], strict=False))


def test_legacy_warmup_epochs_still_reads_capped_at_a_tenth_with_a_warning():
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    with pytest.warns(FutureWarning, match="scheduler.warmup, a fraction of the run"):
        sched = optim.cosine(opt, 2 * 10, 10, warmup_epochs=5)  # 5 of 2 epochs: capped at 2 steps
    seen = _rates(sched, opt, 20)
    assert seen[:3] == pytest.approx([1 / 3, 2 / 3, 1.0])
    with pytest.warns(FutureWarning):
        long = optim.constant(torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0), 300, 1, warmup_epochs=5)
    assert long.lr_lambdas[0](4) == pytest.approx(5 / 6) and long.lr_lambdas[0](5) == 1.0


def test_rescale_makes_the_curve_end_at_the_new_length_and_is_not_saved():
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = optim.cosine(opt, 1000, warmup=0.1, min_factor=0.0)
    _rates(sched, opt, 5)
    sched.rescale(20)  # a budget that leaves room for 20 steps, not 1000
    # at once on the new curve: warm-up (2 steps) over, 3 of 17 decay steps done
    assert sched.total_steps == 20
    assert opt.param_groups[0]["lr"] == pytest.approx(0.5 * (1 + math.cos(math.pi * 3 / 17)))
    seen = _rates(sched, opt, 15)
    assert seen[-1] == pytest.approx(0.0, abs=1e-12)
    state = sched.state_dict()
    assert "total_steps" not in state and "_factor" not in state and state["last_epoch"] == 20
    torch.save(state, __import__("io").BytesIO())  # picklable, loads with weights_only


def test_schedule_argument_errors():
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    with pytest.raises(ValueError, match=r"warmup must be a fraction of the run in \[0, 1\), got 1"):
        optim.cosine(opt, 3, warmup=1)
    with pytest.raises(ValueError, match=r"min_factor must be in \[0, 1\], got 2"):
        optim.cosine(opt, 3, min_factor=2)
    with pytest.raises(ValueError, match="not both"):
        optim.poly(opt, 3, warmup=0.1, warmup_epochs=1)


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


# ---- the trainer reads its settings from the config ------------------------------------------


def _config(**train):
    from pipeline.config import load_config

    network = {"name": "unet", "spatial_dims": 2, "in_channels": 1, "out_channels": 2, "channels": [4, 8, 16]}
    train = {"epochs": 1, "tensorboard": False, **train}
    return load_config(base={"network": network, "train": train, "infer": {"roi_size": [16, 16], "sw_batch_size": 2}})


class _Fixed(torch.nn.Module):
    """Predicts the class map ``pred`` (one-hot logits), whatever the input; one dummy weight."""

    def __init__(self, pred: torch.Tensor) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(()))
        self.pred = pred

    def forward(self, x):
        onehot = torch.nn.functional.one_hot(self.pred, 2).permute(2, 0, 1).float()[None] * 10
        return onehot.expand(x.shape[0], -1, -1, -1) + self.w


class _DeclaresDist(torch.nn.Module):
    extra_inputs = ("dist",)

    def forward(self, pred, label, dist):
        return pred.mean() + dist.mean()


def _make_trainer(tmp_path, network=None, loss=None, val_loader=None, **train):
    from pipeline.engines.trainer import Trainer

    network = network or torch.nn.Conv2d(1, 2, 1)
    return Trainer(
        network=network,
        loss=loss or torch.nn.Module(),
        optimizer=torch.optim.SGD(network.parameters(), lr=0.1),
        scheduler=None,
        train_loader=[],
        val_loader=val_loader,
        config=_config(**train),
        run_dir=tmp_path,
        device=torch.device("cpu"),
        progress=False,
    )


def test_trainer_settings_come_from_the_config(tmp_path):
    trainer = _make_trainer(tmp_path, epochs=7, patience=3, val_every=2, grad_clip=None, amp="bf16")
    assert (trainer.epochs, trainer.patience, trainer.val_every, trainer.grad_clip) == (7, 3, 2, None)
    assert trainer.amp_dtype is torch.bfloat16 and trainer.scaler is None and trainer.num_classes == 2
    assert trainer.infer["roi_size"] == [16, 16] and trainer.val_metric == "dice"
    assert _make_trainer(tmp_path, amp="fp16").scaler is not None
    with pytest.raises(MedsegError, match=r"train.val_metric: 'hd' is not one of \['dice', 'iou'.*did you mean 'hd95'"):
        _make_trainer(tmp_path, val_metric="hd")


def test_a_declared_extra_input_missing_from_the_batch_is_an_error(tmp_path):
    trainer = _make_trainer(tmp_path, loss=_DeclaresDist())
    batch = {"image": torch.zeros(1, 1, 8, 8), "label": torch.zeros(1, 1, 8, 8)}
    with pytest.raises(MedsegError, match=r"the batch has no 'dist' entry.*_DeclaresDist.*batch keys: image, label"):
        trainer.train_step(batch)
    assert torch.isfinite(trainer.train_step({**batch, "dist": torch.ones(1, 2, 8, 8)}))


def test_tensorboard_without_the_package_warns_with_the_reason(tmp_path, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_tensorboard(name, *args, **kwargs):
        if name.startswith("torch.utils.tensorboard"):
            raise ImportError("No module named 'tensorboard'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_tensorboard)
    with pytest.warns(UserWarning, match=r"train.tensorboard is on but TensorBoard cannot be used \(No module named"):
        trainer = _make_trainer(tmp_path, tensorboard=True)
    assert trainer._tb is None


def test_tensorboard_that_cannot_write_is_an_error(tmp_path, monkeypatch):
    import sys
    import types

    class Broken:
        def __init__(self, logdir):
            raise PermissionError(13, "Permission denied")

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", types.SimpleNamespace(SummaryWriter=Broken))
    with pytest.raises(MedsegError, match=r"tensorboard: cannot write TensorBoard events \(Permission denied\)"):
        _make_trainer(tmp_path, tensorboard=True)


def test_plotting_leaves_the_matplotlib_backend_and_pyplot_alone(tmp_path):
    import matplotlib

    before = matplotlib.get_backend()
    matplotlib.use("pdf")  # a user's backend (a notebook's inline one, say)
    try:
        history = [{"epoch": 1, "train_loss": 1.0, "lr": 0.1, "val_hd95": 3.0, "val_hd95_1": 3.0}]
        assert report.plot_curves(history, tmp_path / "c.png", metric="hd95")
        assert matplotlib.get_backend() == "pdf"
        assert (tmp_path / "c.png").read_bytes()[:4] == b"\x89PNG"
        import matplotlib.pyplot as plt

        assert plt.get_fignums() == []
    finally:
        matplotlib.use(before)


@pytest.mark.parametrize(
    ("metric", "expected_best"),
    [("dice", 2), ("hd95", 2), ("precision", 1)],
)
def test_best_checkpoint_follows_the_val_metric_direction(tmp_path, metric, expected_best):
    """Epoch 1 predicts a small square inside the label (precision 1, low Dice, large HD95);
    epoch 2 the label itself grown by one pixel (precision < 1, higher Dice, HD95 1)."""
    label = torch.zeros(16, 16, dtype=torch.long)
    label[4:12, 4:12] = 1
    small = torch.zeros_like(label)
    small[6:8, 6:8] = 1
    grown = torch.zeros_like(label)
    grown[3:13, 3:13] = 1
    net = _Fixed(small)
    batch = {"image": torch.zeros(1, 1, 16, 16), "label": label[None, None]}
    trainer = _make_trainer(tmp_path, network=net, val_loader=[batch], val_metric=metric, epochs=2)
    trainer.train_epoch = lambda epoch: 0.0  # validation only
    original = trainer.on_epoch_end

    def switch(epoch, record):
        original(epoch, record)
        net.pred = grown

    trainer.on_epoch_end = switch
    state = trainer.fit()
    assert state.best_epoch == expected_best
    values = [r[f"val_{metric}"] for r in state.history]
    assert state.best_metric == (max(values) if metric != "hd95" else min(values))
    assert all(f"val_{metric}_1" in r for r in state.history)
    assert (tmp_path / "checkpoints" / "best.pt").exists()


def test_train_with_another_val_metric(tmp_path, capsys):
    from _synthetic import tiny_config, write_config, write_folders

    from pipeline.cli import main

    root = write_folders(tmp_path / "data", n=4, size=32)
    cfg = write_config(tmp_path / "cfg.yaml", tiny_config(root, tmp_path / "run", train={"epochs": 1}))
    assert main(["train", "-c", cfg, "--set", "train.val_metric=hd95"]) == 0
    assert "best validation hd95 " in capsys.readouterr().out
    rows = list(csv.DictReader((tmp_path / "run" / "log.csv").open()))
    assert float(rows[0]["val_hd95"]) >= 0 and "val_dice" not in rows[0]
    assert load_checkpoint(tmp_path / "run" / "checkpoints" / "best.pt")["train_state"]["best_epoch"] == 1


def test_curves_are_redrawn_at_most_every_curves_every_s_and_at_the_end(tmp_path, monkeypatch):
    """Four validated epochs within seconds: drawn after the first and once at the end, not four times."""
    from pipeline.engines import trainer as trainer_module

    drawn = []
    original = report.plot_curves
    monkeypatch.setattr(
        report, "plot_curves", lambda history, *a, **k: drawn.append(len(history)) or original(history, *a, **k)
    )
    label = torch.zeros(1, 1, 16, 16, dtype=torch.long)
    batch = {"image": torch.zeros(1, 1, 16, 16), "label": label}
    trainer = _make_trainer(tmp_path, network=_Fixed(label[0, 0]), val_loader=[batch], epochs=4)
    trainer.train_epoch = lambda epoch: 0.0  # validation only
    trainer.fit()
    assert drawn == [1, 4] and (tmp_path / "curves.png").stat().st_size > 0
    monkeypatch.setattr(trainer_module, "CURVES_EVERY_S", 0.0)
    drawn.clear()
    trainer.epochs = 6
    trainer.fit()
    assert drawn == [5, 6]  # every validated epoch when the interval is 0; nothing left for the end
