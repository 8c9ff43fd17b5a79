"""Training steps/s: a MONAI tutorial-style loop against our Trainer, same data and network, one process.

Both train MONAI's UNet (channels 16..256, strides 2, two residual units, batch norm: the spleen
tutorial's network) with DiceCE (one-hot labels, softmax) on 2×1×96³ crops (CUDA; 2×1×48³ on the
CPU) drawn by ``RandCropByPosNegLabeld`` from the same cached synthetic CT volumes, from the same
initial weights.

- **tutorial**: MONAI's spleen tutorial loop: ``CacheDataset`` (intensity window cached, crop
  centres searched per sample) → ``DataLoader(num_workers=4)``, fp32, ``Adam``, ``loss.item()``
  every step.
- **ours**: :meth:`pipeline.engines.trainer.Trainer.train_step` (gradient clipping at 12, our
  default, included) with our data path: foreground /
  background indices cached once (as ``transforms/chains.py`` does), loader workers sized by
  :func:`pipeline.engines.factory.auto_workers`, pinned memory, optimiser from
  :func:`pipeline.engines.factory.build_optimizer` (fused Adam on CUDA), ``cudnn.benchmark``.
  Variants (``+``-joined): ``fp32``/``bf16`` (autocast), ``cl`` (channels-last network),
  ``compile`` (``torch.compile`` of the forward), ``gpu`` (cache on the GPU, crops drawn there,
  ``ThreadDataLoader`` with no workers: MONAI's fast-training recipe).

After a warm-up (cuDNN search, compilation, worker start) the paths run alternating blocks of
steps, each timed from a device sync to a device sync, with their loaders' iterators kept alive;
the median block is shown. Ours calls ``Trainer.train_step`` (exactly as ``train_epoch`` and
``medseg train`` do); only the block ends wait for the device.

Usage:
    PYTHONPATH=. python bench/training.py                       # CPU, 1 thread
    PYTHONPATH=. python bench/training.py --device cuda --json out.json
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from monai.data import CacheDataset, DataLoader, ThreadDataLoader
from monai.losses import DiceCELoss
from monai.networks.layers import Norm
from monai.networks.nets import UNet
from monai.transforms import (
    Compose,
    DeleteItemsd,
    EnsureTyped,
    FgBgToIndicesd,
    RandCropByPosNegLabeld,
    ScaleIntensityRanged,
)
from torch.utils.data import RandomSampler

import pipeline.losses  # noqa: F401  (registers the losses)
from pipeline.config import load_config
from pipeline.engines import factory
from pipeline.engines.trainer import Trainer
from pipeline.registry import LOSSES

SIZES = {
    "cuda": {"volume": (256, 256, 160), "cases": 4, "patch": 96, "warmup": 10, "block": 25},
    "cpu": {"volume": (64, 64, 48), "cases": 4, "patch": 48, "warmup": 2, "block": 3},
}
BATCH = 2
DEFAULT_VARIANTS = {"cuda": ["bf16", "bf16+cl", "bf16+gpu", "bf16+cl+gpu"], "cpu": ["fp32", "fp32+cl", "bf16+cl"]}
WINDOW = {"a_min": -57.0, "a_max": 164.0, "b_min": 0.0, "b_max": 1.0, "clip": True}  # the tutorial's CT window


def synthetic_cases(n: int, shape: tuple[int, ...]) -> list[dict[str, np.ndarray]]:
    """CT-like volumes ``1HWD`` (HU) with a blob-shaped foreground label (about a tenth of the voxels)."""
    g = torch.Generator().manual_seed(3)
    cases = []
    for _ in range(n):
        field = F.interpolate(
            torch.randn(1, 1, *(s // 16 for s in shape), generator=g), size=shape, mode="trilinear", align_corners=False
        )[0]
        label = (field > 1.0).float()
        image = 40 + 80 * label + 30 * torch.randn(1, *shape, generator=g)
        cases.append({"image": image.numpy(), "label": label.numpy()})
    return cases


def network() -> torch.nn.Module:
    torch.manual_seed(0)
    return UNet(3, 1, 2, channels=(16, 32, 64, 128, 256), strides=(2, 2, 2, 2), num_res_units=2, norm=Norm.BATCH)


def sampler(ds, steps: int) -> RandomSampler:
    # the same number of samples for both loops, so neither pays for an epoch boundary mid-run
    return RandomSampler(ds, replacement=True, num_samples=steps * BATCH, generator=torch.Generator().manual_seed(0))


def crop(patch: int, **indices) -> RandCropByPosNegLabeld:
    return RandCropByPosNegLabeld(
        ["image", "label"], label_key="label", spatial_size=(patch,) * 3, pos=1, neg=1, num_samples=1, **indices
    )


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


class TutorialLoop:
    """MONAI's spleen-tutorial loop, one step per :meth:`step` (``loss.item()`` every step)."""

    def __init__(self, cases, initial: torch.nn.Module, device: torch.device, size: dict, total: int) -> None:
        transforms = Compose(
            [
                ScaleIntensityRanged("image", **WINDOW),
                crop(size["patch"], image_key="image", image_threshold=0),
                EnsureTyped(["image", "label"]),
            ]
        )
        ds = CacheDataset(cases, transforms, cache_rate=1.0, num_workers=4, progress=False)
        self.batches = iter(DataLoader(ds, batch_size=BATCH, sampler=sampler(ds, total), num_workers=4))
        self.device = device
        self.model = copy.deepcopy(initial).to(device).train()
        self.loss_function = DiceCELoss(to_onehot_y=True, softmax=True)
        self.optimizer = torch.optim.Adam(self.model.parameters(), 1e-4)
        self.epoch_loss = 0.0

    def setup(self) -> None:
        torch.backends.cudnn.benchmark = False

    def step(self) -> None:
        batch_data = next(self.batches)
        inputs, labels = batch_data["image"].to(self.device), batch_data["label"].to(self.device)
        self.optimizer.zero_grad()
        outputs = self.model(inputs)
        loss = self.loss_function(outputs, labels)
        loss.backward()
        self.optimizer.step()
        self.epoch_loss += loss.item()


class OurLoop:
    """:meth:`Trainer.train_step` on our data path with the variant's settings (see the module docstring)."""

    def __init__(
        self, cases, initial: torch.nn.Module, device: torch.device, size: dict, total: int, spec: str, run_dir: Path
    ) -> None:
        tokens = set(spec.split("+"))
        on_gpu = "gpu" in tokens and device.type == "cuda"
        cached = [
            EnsureTyped(["image", "label"], track_meta=False),
            ScaleIntensityRanged("image", **WINDOW),
            FgBgToIndicesd("label", image_key="image", image_threshold=0),
        ]
        if on_gpu:
            cached.append(EnsureTyped(["image", "label", "label_fg_indices", "label_bg_indices"], device=device))
        transforms = Compose(
            [
                *cached,
                crop(size["patch"], fg_indices_key="label_fg_indices", bg_indices_key="label_bg_indices"),
                DeleteItemsd(["label_fg_indices", "label_bg_indices"]),
                EnsureTyped(["image", "label"], track_meta=False),
            ]
        )
        ds = CacheDataset(cases, transforms, cache_rate=1.0, num_workers=4, progress=False)
        if on_gpu:
            loader = ThreadDataLoader(ds, batch_size=BATCH, sampler=sampler(ds, total), num_workers=0)
        else:
            loader = DataLoader(
                ds,
                batch_size=BATCH,
                sampler=sampler(ds, total),
                num_workers=factory.auto_workers(device),
                pin_memory=device.type == "cuda",
            )
        self.batches = iter(loader)
        self.device = device
        model = copy.deepcopy(initial).to(device)
        if "cl" in tokens:
            model = model.to(memory_format=torch.channels_last_3d)
        optimizer = factory.build_optimizer({"optimizer": {"name": "adam", "lr": 1e-4}}, model.parameters())
        self.trainer = Trainer(
            network=model,
            loss=LOSSES.build("dice_ce", to_onehot_y=True, softmax=True),
            optimizer=optimizer,
            scheduler=None,
            train_loader=loader,
            val_loader=None,
            config=load_config(
                base={
                    "network": {"name": "unet", "spatial_dims": 3, "in_channels": 1, "out_channels": 2},
                    "train": {
                        "epochs": 1,
                        "grad_clip": 12.0,
                        "amp": "bf16" if "bf16" in tokens else "off",
                        "tensorboard": False,
                        "compile": "compile" in tokens,
                    },
                }
            ),
            run_dir=run_dir,
            device=device,
            progress=False,
        )
        self.trainer.network.train()
        self.losses: list[torch.Tensor] = []

    def setup(self) -> None:
        torch.backends.cudnn.benchmark = self.device.type == "cuda"

    def step(self) -> None:
        self.losses.append(self.trainer.train_step(next(self.batches)))


def block_rate(loop, steps: int, device: torch.device) -> float:
    """Steps/s over ``steps`` steps, from a device sync to a device sync."""
    loop.setup()
    _sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        loop.step()
    _sync(device)
    return steps / (time.perf_counter() - start)


def main() -> None:
    # the tutorial asks for 4 workers whatever the machine; torch's warning about it is expected
    warnings.filterwarnings("ignore", message="This DataLoader will create")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument(
        "--threads", type=int, default=1, help="torch CPU threads (default 1: steadiest on a shared machine)"
    )
    parser.add_argument("--blocks", type=int, default=5, help="timed blocks of steps per path; the median is shown")
    parser.add_argument("--variants", nargs="+", default=None, help="our variants (default: per device)")
    parser.add_argument("--json", type=Path, default=None, help="also write the results to this JSON file")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: CUDA is not available")
    size = SIZES[device.type]
    variants = args.variants or DEFAULT_VARIANTS[device.type]
    cases = synthetic_cases(size["cases"], size["volume"])
    initial = network()
    name = torch.cuda.get_device_name() if device.type == "cuda" else f"CPU, {args.threads} threads"
    p = size["patch"]
    print(
        f"torch {torch.__version__}, {name}; MONAI UNet (batch norm), DiceCE, {BATCH}×1×{p}³ crops of "
        f"{size['cases']} cached {'×'.join(map(str, size['volume']))} volumes; "
        f"{args.blocks} alternating blocks of {size['block']} steps after {size['warmup']}, median block\n"
    )
    total = size["warmup"] + size["block"] * args.blocks
    with tempfile.TemporaryDirectory() as tmp:
        loops = {"tutorial fp32": TutorialLoop(cases, initial, device, size, total)}
        for v in variants:
            loops[f"ours {v}"] = OurLoop(cases, initial, device, size, total, v, Path(tmp))
        for loop in loops.values():  # warm-up: cuDNN search, compilation, worker start
            block_rate(loop, size["warmup"], device)
        rates: dict[str, list[float]] = {label: [] for label in loops}
        for i in range(args.blocks):  # alternating blocks and order: load from elsewhere hits every path alike
            for label, loop in list(loops.items())[:: 1 if i % 2 == 0 else -1]:
                rates[label].append(block_rate(loop, size["block"], device))
    base = statistics.median(rates["tutorial fp32"])
    print("| path | steps/s | ms/step | vs tutorial |")
    print("| --- | --: | --: | --: |")
    rows = []
    for label, values in rates.items():
        r = statistics.median(values)
        rows.append({"path": label, "steps_s": r, "ms_step": 1e3 / r, "speedup": r / base, "all": values})
        print(f"| {label} | {r:.2f} | {1e3 / r:.1f} | {r / base:.2f} |")
    best = max(rows[1:], key=lambda row: row["speedup"])
    target = 2.0 if device.type == "cuda" else 1.0
    ok = "MET" if best["speedup"] >= target else "NOT MET"
    print(f"\nbest: {best['path']} {best['speedup']:.2f}× the tutorial loop (target ≥ {target:g}×: {ok})")
    if args.json:
        args.json.write_text(json.dumps({"device": name, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
