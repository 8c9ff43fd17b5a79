"""The trainer's speed paths: no host sync in a step, plain tensors to the network, fused
optimiser on CUDA, compiled forward with unchanged checkpoints; GPU checks skip without CUDA."""

from __future__ import annotations

import pytest
import torch
from monai.data import MetaTensor
from monai.losses import DiceCELoss
from monai.networks.nets import UNet

from pipeline.config import load_config
from pipeline.engines import factory
from pipeline.engines.trainer import Trainer

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class _TypeRecorder(torch.nn.Module):
    def __init__(self, net: torch.nn.Module) -> None:
        super().__init__()
        self.net, self.types = net, set()

    def forward(self, x):
        self.types.add(type(x))
        return self.net(x)


def _config(**train) -> dict:
    """A resolved config whose ``train`` section holds ``train`` (the trainer reads its settings there)."""
    network = {"name": "unet", "spatial_dims": 3, "in_channels": 1, "out_channels": 2}
    return load_config(base={"network": network, "train": {"epochs": 1, "tensorboard": False, **train}})


def _trainer(tmp_path, network, device="cpu", **train) -> Trainer:
    optimizer = factory.build_optimizer({"optimizer": {"name": "adamw", "lr": 1e-3}}, network.parameters())
    return Trainer(
        network=network,
        loss=DiceCELoss(to_onehot_y=True, softmax=True),
        optimizer=optimizer,
        scheduler=None,
        train_loader=[],
        val_loader=None,
        config=_config(**train),
        run_dir=tmp_path,
        device=torch.device(device),
        progress=False,
    )


def _net(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return UNet(3, 1, 2, channels=(4, 8, 16), strides=(2, 2))


def _batch(device="cpu", meta=False):
    g = torch.Generator().manual_seed(1)
    image = torch.randn(2, 1, 16, 16, 16, generator=g)
    label = (torch.rand(2, 1, 16, 16, 16, generator=g) > 0.7).float()
    if meta:
        image, label = MetaTensor(image), MetaTensor(label)
    return {"image": image.to(device), "label": label.to(device)}


def test_train_step_has_no_host_sync(tmp_path):
    """On the meta device every value read by the host raises (``.item()``, ``bool``, ``float``,
    ``.cpu()``, ``nonzero``), so a step that completes there never waits for a GPU: the trainer's
    code, MONAI's DiceCE, gradient clipping and AdamW included."""
    trainer = _trainer(tmp_path, _net().to("meta"), device="meta")
    losses = [trainer.train_step(_batch()) for _ in range(2)]
    assert all(v.device.type == "meta" and v.shape == () and not v.requires_grad for v in losses)


def test_the_meta_guard_catches_a_sync(tmp_path):
    """The guard above is live: a step that reads its loss on the host fails on meta."""
    trainer = _trainer(tmp_path, _net().to("meta"), device="meta")
    with pytest.raises(RuntimeError, match=r"Tensor\.item\(\) cannot be called on meta tensors"):
        float(trainer.train_step(_batch()))


def test_metatensor_batches_reach_the_network_as_plain_tensors(tmp_path):
    net = _TypeRecorder(_net())
    trainer = _trainer(tmp_path, net)
    moved = trainer._move(_batch(meta=True), ("image", "label"))
    assert {type(t) for t in moved.values()} == {torch.Tensor}
    trainer.train_step(_batch(meta=True))
    assert net.types == {torch.Tensor}


def test_meta_and_plain_batches_train_alike(tmp_path):
    a = _trainer(tmp_path / "a", _net())
    b = _trainer(tmp_path / "b", _net())
    for _ in range(2):
        la, lb = a.train_step(_batch(meta=True)), b.train_step(_batch())
    torch.testing.assert_close(la, lb)
    for pa, pb in zip(a.network.parameters(), b.network.parameters(), strict=True):
        torch.testing.assert_close(pa, pb)


def test_optimizer_is_fused_only_for_cuda_adam():
    cpu_params = list(_net().parameters())
    adam = factory.build_optimizer({"optimizer": {"name": "adam", "lr": 1e-3}}, cpu_params)
    assert not adam.defaults.get("fused")
    sgd = factory.build_optimizer({"optimizer": {"name": "sgd", "lr": 1e-3}}, cpu_params)
    assert "fused" not in sgd.defaults or not sgd.defaults["fused"]


def test_compiled_forward_keeps_checkpoint_keys(tmp_path, monkeypatch):
    calls = []

    def fake_compile(module, **kwargs):
        def forward(x):
            calls.append(x.shape)
            return module(x)

        return forward

    monkeypatch.setattr(torch, "compile", fake_compile)
    net = _net()
    trainer = _trainer(tmp_path, net, compile=True)
    trainer.train_step(_batch())
    assert calls == [torch.Size([2, 1, 16, 16, 16])]
    assert set(trainer.checkpoint_state()["network"]) == set(net.state_dict())


@pytest.mark.gpu
@cuda
def test_cuda_step_has_no_host_sync(tmp_path):
    torch.backends.cudnn.benchmark = True
    trainer = _trainer(tmp_path, _net().cuda(), device="cuda", amp="bf16")
    assert trainer.optimizer.defaults.get("fused") is True
    batch = {k: v.pin_memory() for k, v in _batch().items()}
    trainer.train_step(batch)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        losses = [trainer.train_step(batch) for _ in range(3)]
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert all(torch.isfinite(v) for v in losses)


@pytest.mark.gpu
@cuda
def test_cuda_compiled_step_matches_eager(tmp_path):
    eager = _trainer(tmp_path / "e", _net().cuda(), device="cuda", amp="bf16")
    compiled = _trainer(tmp_path / "c", _net().cuda(), device="cuda", amp="bf16", compile=True)
    batch = _batch("cuda")
    le, lc = eager.train_step(batch), compiled.train_step(batch)
    torch.testing.assert_close(lc, le, atol=2e-2, rtol=2e-2)
