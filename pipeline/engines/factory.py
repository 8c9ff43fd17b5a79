"""Build what the engines need from a resolved config: device, network, loss, optimiser,
schedule, cached datasets and loaders, and the :class:`~pipeline.engines.trainer.Trainer`."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from monai.data import CacheDataset, DataLoader, Dataset, PersistentDataset

from pipeline.config import ConfigError, build_component
from pipeline.data.labels import fill_label_values
from pipeline.io import read_image
from pipeline.registry import LOSSES, NETWORKS, OPTIMIZERS, SCHEDULERS
from transforms import keys

__all__ = [
    "select_device",
    "set_threads",
    "num_classes",
    "roi_size",
    "build_network",
    "build_loss",
    "build_optimizer",
    "build_scheduler",
    "distance_transforms",
    "make_dataset",
    "build_loaders",
    "shard",
]


def select_device(name: str) -> torch.device:
    """``auto`` → CUDA when present, else CPU; ``cuda[:N]`` without CUDA is a ConfigError."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"device: {name!r} is not a device; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device: {name!r} requested but CUDA is not available; use --device cpu")
    if device.type not in ("cpu", "cuda"):
        raise ConfigError(f"device: {name!r} is not supported; use auto, cpu, cuda or cuda:N")
    return device


def set_threads(threads: int) -> int:
    """Set torch's CPU threads (0 = all cores this process may use); returns the count."""
    torch.set_num_threads(threads or cpu_count())
    return torch.get_num_threads()


def cpu_count() -> int:
    """Cores this process may use."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def num_classes(config: Mapping[str, Any]) -> int:
    """Classes including background (a single-output network is a binary task)."""
    return max(2, int(config["network"]["out_channels"]))


def roi_size(config: Mapping[str, Any]) -> list[int]:
    """Sliding-window size: ``infer.roi_size``, else the training patch size."""
    from transforms.chains import chain_settings

    roi = config.get("infer", {}).get("roi_size") or chain_settings(config)["patch_size"]
    dims = config["network"]["spatial_dims"]
    if len(roi) != dims:
        raise ConfigError(f"infer.roi_size: {roi} has {len(roi)} values but network.spatial_dims is {dims}")
    return list(roi)


def build_network(config: Mapping[str, Any]) -> torch.nn.Module:
    import pipeline.networks  # noqa: F401  (registers)

    return build_component(config["network"], NETWORKS, where="network")


def build_loss(config: Mapping[str, Any]) -> torch.nn.Module:
    """The configured loss, wrapped for deep supervision when the network has it on."""
    from pipeline.losses import DeepSupervisionLoss

    loss = build_component(config["loss"], LOSSES, where="loss")
    if config["network"].get("deep_supervision"):
        loss = DeepSupervisionLoss(loss)
    return loss


def build_optimizer(config: Mapping[str, Any], params) -> torch.optim.Optimizer:
    """The configured optimiser; Adam/AdamW on CUDA tensors get ``fused=True`` (one kernel for
    the whole update instead of a few per parameter group) unless the config sets ``fused``."""
    import pipeline.engines.optim  # noqa: F401

    spec = config["optimizer"]
    params = list(params)
    extra = {}
    fusable = spec["name"] in ("adam", "adamw") and "fused" not in spec and "foreach" not in spec
    if fusable and params and all(isinstance(p, torch.Tensor) and p.is_cuda for p in params):
        extra["fused"] = True
    return build_component(spec, OPTIMIZERS, params, where="optimizer", **extra)


def build_scheduler(config: Mapping[str, Any], optimizer: torch.optim.Optimizer):
    if config.get("scheduler") is None:
        return None
    return build_component(config["scheduler"], SCHEDULERS, optimizer, config["train"]["epochs"], where="scheduler")


def distance_transforms(config: Mapping[str, Any], loss: torch.nn.Module) -> list:
    """Transforms that give a loss the batch entries it lists in ``extra_inputs``.

    Signed distance maps are computed on the augmented patch, after every random transform:
    measured cheaper than carrying cached maps through rotation and zoom, and exact (see
    :class:`transforms.dictionary.SignedDistanceMapd`). Spacing is the resampling target when
    one is set, else the label's own (1 for 2D images).
    """
    if keys.DIST not in tuple(getattr(loss, "extra_inputs", ())):
        return []
    from transforms.dictionary import SignedDistanceMapd

    spacing = config.get("transforms", {}).get("spacing")
    return [SignedDistanceMapd(keys.LABEL, num_classes=num_classes(config), spacing=spacing)]


def shard(items: Sequence[Mapping[str, Any]], rank: int, world_size: int) -> list[Mapping[str, Any]]:
    """This rank's share of ``items`` (round robin, every rank the same count by repeating items).

    Each rank caches only its share and its loader reshuffles it every epoch (the trainer reseeds
    the loader's generator from ``(seed, epoch, rank)``), as MONAI's own DDP recipes partition a
    dataset before caching it; a ``DistributedSampler`` would index the whole dataset, so every
    rank would have to cache every case. Equal counts keep every rank at the same number of steps
    (a rank with fewer would leave the others waiting in an all-reduce).
    """
    if world_size <= 1:
        return list(items)
    per_rank = -(-len(items) // world_size)
    padded = [items[i % len(items)] for i in range(per_rank * world_size)]
    return padded[rank::world_size]


def make_dataset(
    items: Sequence[Mapping[str, Any]],
    transform,
    train_cfg: Mapping[str, Any],
    cache_dir: str | Path,
    num_workers: int,
) -> Dataset:
    """A MONAI dataset caching the deterministic prefix of ``transform`` as configured."""
    items = list(items)
    if train_cfg["cache"] == "memory":
        return CacheDataset(
            items, transform, cache_rate=train_cfg["cache_rate"], num_workers=max(1, num_workers), progress=False
        )
    if train_cfg["cache"] == "disk":
        Path(cache_dir).mkdir(parents=True, exist_ok=True)
        return PersistentDataset(items, transform, cache_dir=cache_dir)
    return Dataset(items, transform)


def auto_workers(device: torch.device) -> int:
    """Loader workers: none on a small CPU machine (they would steal the network's cores)."""
    cpus = cpu_count()
    if device.type == "cuda":
        return max(1, min(8, cpus - 1))
    return 0 if cpus <= 4 else min(4, cpus // 4)


def build_loaders(
    config: Mapping[str, Any],
    splits: Mapping[str, Sequence[Mapping[str, Any]]],
    loss: torch.nn.Module,
    run_dir: str | Path,
    device: torch.device,
    *,
    rank: int = 0,
    world_size: int = 1,
) -> tuple[DataLoader, DataLoader | None]:
    """Training and validation loaders; under DDP each rank caches and samples only its shard."""
    from transforms.chains import Chain, build_transforms

    # the run's table of label values should already be in the config (fill_label_values at the
    # start of training, before the config is saved); decide it here for callers that did not
    config = fill_label_values(config)
    train_cfg = config["train"]
    workers = train_cfg["num_workers"] if train_cfg["num_workers"] >= 0 else auto_workers(device)
    if not splits.get("train"):
        raise ConfigError("data: the training split is empty; check data.root and the split fractions")
    # MONAI's PersistentDataset names cache files by the data item only: key the folder by the
    # settings that shape the cached arrays, so a shared cache_dir never serves stale transforms
    shaping = {k: config.get(k) for k in ("transforms", "network")}
    digest = hashlib.sha1(json.dumps(shaping, sort_keys=True, default=str).encode()).hexdigest()[:12]
    cache_root = Path(train_cfg.get("cache_dir") or Path(run_dir) / "cache") / digest
    train_items = shard(splits["train"], rank, world_size)
    train_ds = make_dataset(
        train_items,
        Chain([*build_transforms(config, "train", reader=read_image).transforms, *distance_transforms(config, loss)]),
        train_cfg,
        cache_root / "train",
        workers,
    )
    generator = torch.Generator()
    generator.manual_seed(config["seed"])
    train_loader = DataLoader(
        train_ds,
        batch_size=train_cfg["batch_size"],
        shuffle=True,
        num_workers=workers,
        generator=generator,
        pin_memory=device.type == "cuda",
        drop_last=len(train_ds) > train_cfg["batch_size"],
        persistent_workers=False,  # workers are reseeded from the generator every epoch
    )
    val_loader = None
    if splits.get("val"):
        val_items = list(splits["val"])[rank::world_size]  # no padding duplicates: metrics are summed
        val_ds = make_dataset(
            val_items, build_transforms(config, "val", reader=read_image), train_cfg, cache_root / "val", workers
        )
        val_loader = DataLoader(val_ds, batch_size=1, shuffle=False, num_workers=workers)
    return train_loader, val_loader
