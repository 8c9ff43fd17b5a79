"""From a resolved config to transform chains, cached datasets and data loaders.

Everything that turns datalists into batches lives here: the chain settings taken from the
config (:func:`chain_settings`), the chain for each mode (:func:`build_chain`), the cache
(:func:`make_dataset`), the per-rank share under DDP (:func:`shard`) and the loaders
(:func:`build_loaders`). The engines receive the loaders built.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Mapping, Sequence
from multiprocessing.pool import ThreadPool
from pathlib import Path
from typing import Any

import torch
from monai.data import CacheDataset, DataLoader, Dataset, PersistentDataset

from pipeline.config import Config
from pipeline.errors import ConfigError
from pipeline.io import read_image
from transforms import keys
from transforms.chains import Chain, ChainSettings, build_transforms

__all__ = [
    "chain_settings",
    "build_chain",
    "make_dataset",
    "build_loaders",
    "shard",
    "auto_workers",
    "cpu_count",
    "cached_sizes",
    "check_patch_size",
]


def chain_settings(config: Config, inputs: Sequence[str] = ()) -> ChainSettings:
    """The transform chain's settings from the resolved config.

    Args:
        config: the resolved config (defaults and derived values filled in).
        inputs: extra batch inputs the loss declares (its ``extra_inputs``).
    """
    t = config["transforms"]
    return ChainSettings(
        spatial_dims=config.spatial_dims,
        in_channels=config.in_channels,
        num_classes=config.num_classes,
        patch_size=config.patch_size,
        spacing=tuple(t["spacing"]) if t["spacing"] is not None else None,
        orientation=t["orientation"],
        channels=tuple(t["channels"]) if t["channels"] is not None else None,
        intensity=t["intensity"],
        label_values=config.label_values,
        crop_foreground=t["crop_foreground"],
        num_samples=t["num_samples"],
        pos_neg_ratio=t["pos_neg_ratio"],
        class_balanced=t["class_balanced"],
        augment=t["augment"],
        inputs=tuple(inputs),
        instance=_instance_settings(config),
    )


def _instance_settings(config: Config) -> dict[str, Any] | None:
    """The instance target's settings of an instance task (``task``), else None."""
    task = config.get("task") or {}
    if task.get("kind") != "instance":
        return None
    return {"border_width": task["border_width"], "border": task["border"]}


def build_chain(
    config: Config, mode: str, loss: torch.nn.Module | None = None, reader: Callable[[Any], Any] | None = None
) -> Chain:
    """The chain for ``mode``; in train mode with the batch inputs ``loss`` declares. ``reader``
    replaces :func:`pipeline.io.read_image` as the loader's reader (the predictor's also takes
    in-memory images, :func:`pipeline.engines.inputs.read_any`)."""
    inputs = tuple(getattr(loss, "extra_inputs", ())) if loss is not None and mode == "train" else ()
    return build_transforms(chain_settings(config, inputs), mode, reader=reader or read_image)


def cpu_count() -> int:
    """Cores this process may use."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def shard(items: Sequence[Mapping[str, Any]], rank: int, world_size: int) -> list[Mapping[str, Any]]:
    """This rank's share of ``items`` (round robin, every rank the same count by repeating items).

    Each rank caches only its share and its loader reshuffles it every epoch (the trainer reseeds
    the loader's generator from ``(seed, epoch, rank)``), as MONAI's own DDP recipes partition a
    dataset before caching it; a ``DistributedSampler`` would index the whole dataset, so every
    rank would have to cache every case. Equal counts keep every rank at the same number of steps
    (a rank with fewer would leave the others waiting in an all-reduce).

    Example:
        >>> [d["case"] for d in shard([{"case": c} for c in "abc"], rank=1, world_size=2)]
        ['b', 'a']
    """
    if world_size <= 1:
        return list(items)
    per_rank = -(-len(items) // world_size)
    padded = [items[i % len(items)] for i in range(per_rank * world_size)]
    return padded[rank::world_size]


class _CacheDataset(CacheDataset):
    """MONAI's ``CacheDataset`` whose cache fill stops cleanly on a bad file.

    MONAI fills the cache in a ``ThreadPool`` context whose exit calls ``terminate()``, which
    does not wait for thread workers: a bad file raised in one thread, the interpreter exited
    while others were still decoding in C++, and the process died with ``terminate called
    without an active exception`` (exit 134) after printing the right message. Here one worker
    loads in the calling thread, and several are joined before the error propagates.
    """

    def _fill_cache(self, indices=None) -> list:
        if self.cache_num <= 0:
            return []
        indices = list(range(self.cache_num)) if indices is None else list(indices)
        if self.num_workers <= 1:
            return [self._load_cache_item(i) for i in indices]
        pool = ThreadPool(self.num_workers)
        try:
            return list(pool.imap(self._load_cache_item, indices))
        finally:
            pool.terminate()  # drop queued items
            pool.join()  # and wait for the running ones: no thread outlives the error


def make_dataset(
    items: Sequence[Mapping[str, Any]],
    transform: Chain,
    train_cfg: Mapping[str, Any],
    cache_dir: str | Path,
    num_workers: int,
) -> Dataset:
    """A MONAI dataset caching the deterministic prefix of ``transform`` as configured.

    The in-memory cache hands its arrays to the random transforms without MONAI's default
    per-item ``deepcopy`` (``copy_cache=False``): every random transform of our chains returns new
    arrays (crops are views, but each later step writes a new array and the batch is collated into
    new tensors), so the cache is never written to; ``tests/test_data_loaders.py`` checks it after
    epochs of every augmentation at probability 1. The copy cost a full copy of each case's image,
    labels and foreground/background indices per draw.
    """
    items = list(items)
    if train_cfg["cache"] == "memory":
        return _CacheDataset(
            items,
            transform,
            cache_rate=train_cfg["cache_rate"],
            num_workers=max(1, num_workers),
            progress=False,
            copy_cache=False,
        )
    if train_cfg["cache"] == "disk":
        Path(cache_dir).mkdir(parents=True, exist_ok=True)
        return PersistentDataset(items, transform, cache_dir=cache_dir)
    return Dataset(items, transform)


def auto_workers(device: torch.device) -> int:
    """Loader workers: none on a CPU machine of up to 4 cores, where they would take the network's.

    Measured on 2 cores (``bench/throughput.py --workers 0 1 2 --threads 1 2``, medseg's step
    against the bare loop of the same network and batch in the same run): 0 workers was best in
    2D and 3D at either thread count: ``demo_vessel2d`` 0.66 of the bare loop's steps/s with 0
    workers, 0.55 and 0.49 with 1 and 2 (1 thread); ``demo_lung`` 0.92 with 0, 0.61 and 0.71
    with 1 and 2. Workers are started again every epoch (they are reseeded from the loader's
    generator), and each start re-faults the forked cache: 25 % of the CPU time went to the kernel
    with workers against 1-14 % without.
    """
    cpus = cpu_count()
    if device.type == "cuda":
        return max(1, min(8, cpus - 1))
    return 0 if cpus <= 4 else min(4, cpus // 4)


def cached_sizes(dataset: Dataset) -> list[tuple[int, ...]]:
    """Spatial size of each case an in-memory cache holds, before the padding to the patch size.

    Read from the cached image's record of its ``SpatialPad`` (MONAI's ``applied_operations``),
    so nothing is loaded again; empty for datasets that cache nothing in memory.
    """
    sizes = []
    for item in getattr(dataset, "_cache", None) or ():
        image = item.get(keys.IMAGE) if isinstance(item, Mapping) else None
        if image is None:
            continue
        pads = [op for op in getattr(image, "applied_operations", ()) if op.get("class") == "SpatialPad"]
        sizes.append(tuple(int(v) for v in (pads[-1]["orig_size"] if pads else image.shape[1:])))
    return sizes


def check_patch_size(patch_size: Sequence[int], sizes: Sequence[Sequence[int]]) -> None:
    """Refuse a patch larger than every training image along an axis.

    Such a patch is mostly padding in every crop (``cell_dsb.yaml``'s 256² on 128² tiles: three
    quarters of the compute). nnU-Net's planner never chooses a patch larger than the data's
    median shape; a user who sets one by hand gets this error, with the patch that fits, rather
    than a silently changed patch that the saved config and the checkpoint would not show.

    Raises:
        ConfigError: naming ``transforms.patch_size``, the largest image size and a patch that fits.

    Example:
        >>> check_patch_size([96, 96], [(128, 100), (90, 120)])
        >>> check_patch_size([256, 96], [(128, 128), (120, 128)])  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        pipeline.errors.ConfigError: transforms.patch_size: [256, 96] is larger ... use transforms.patch_size=[128,96]
    """
    if not sizes:
        return
    largest = [max(s[a] for s in sizes) for a in range(len(patch_size))]
    if all(p <= m for p, m in zip(patch_size, largest, strict=True)):
        return
    fits = [min(p, m) for p, m in zip(patch_size, largest, strict=True)]
    raise ConfigError(
        f"{list(patch_size)} is larger than every training image (largest {' x '.join(map(str, largest))}); "
        f"use transforms.patch_size=[{','.join(map(str, fits))}]",
        key="transforms.patch_size",
    )


CACHED_PREFIX_VERSION = 2
"""Bumped when the deterministic (cached) part of the chains changes without a config change, so
a disk cache of the old part is not served: 2 = the training chain records the label's spacing
(``transforms.dictionary.RecordSpacingd``) for its random part, which runs without metadata."""


def cache_digest(config: Config) -> str:
    """A short digest of the settings that shape cached arrays.

    MONAI's ``PersistentDataset`` names cache files by the data item only: the cache folder is
    keyed by this digest, so a shared ``cache_dir`` never serves arrays of other settings.
    """
    shaping = {k: config.to_dict()[k] for k in ("transforms", "network")}
    if config.get("task", {}).get("kind") == "instance":  # the instance targets are part of the chain
        shaping["task"] = {k: config["task"][k] for k in ("kind", "target", "border_width", "border")}
    shaping["cached_prefix"] = CACHED_PREFIX_VERSION
    return hashlib.sha1(json.dumps(shaping, sort_keys=True, default=str).encode()).hexdigest()[:12]


def build_loaders(
    config: Config,
    splits: Mapping[str, Sequence[Mapping[str, Any]]],
    loss: torch.nn.Module,
    run_dir: str | Path,
    device: torch.device,
    *,
    rank: int = 0,
    world_size: int = 1,
) -> tuple[DataLoader, DataLoader | None]:
    """Training and validation loaders; under DDP each rank caches and samples only its shard.

    Raises:
        ConfigError: the training split is empty.
    """
    train_cfg = config["train"]
    workers = train_cfg["num_workers"] if train_cfg["num_workers"] >= 0 else auto_workers(device)
    if not splits.get("train"):
        raise ConfigError("the training split is empty; check data.root and the split fractions", key="data")
    cache_root = Path(train_cfg["cache_dir"] or Path(run_dir) / "cache") / cache_digest(config)
    train_ds = make_dataset(
        shard(splits["train"], rank, world_size),
        build_chain(config, "train", loss),
        train_cfg,
        cache_root / "train",
        workers,
    )
    check_patch_size(config.patch_size, cached_sizes(train_ds))
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
        val_ds = make_dataset(val_items, build_chain(config, "val"), train_cfg, cache_root / "val", workers)
        val_loader = DataLoader(val_ds, batch_size=1, shuffle=False, num_workers=workers)
    return train_loader, val_loader
