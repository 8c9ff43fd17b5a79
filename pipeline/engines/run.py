"""``medseg train``: from a config file to a finished run folder, on one process or under torchrun.

The run folder (``train.output``, default ``runs/<config stem>``) holds ``config.yaml`` (the
resolved config), ``log.csv``, ``curves.png``, ``checkpoints/{last,best}.pt`` and, when
TensorBoard is installed, ``tensorboard/``.
"""

from __future__ import annotations

import os
import shutil
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from pipeline.config import ConfigError, dump_config, load_config
from pipeline.engines import factory
from pipeline.engines.checkpoint import load_checkpoint, previous_path
from pipeline.engines.inferer import autocast_dtype
from pipeline.engines.trainer import Trainer
from pipeline.errors import MedsegError

__all__ = ["run_training", "run_dir_for", "distributed_context", "RESUMABLE_CHANGES"]

RESUMABLE_CHANGES = (
    "train.epochs",
    "train.patience",
    "train.time_budget",
    "train.num_workers",
    "train.threads",
    "train.device",
    "train.tensorboard",
    "train.cache",
    "train.cache_dir",
    "infer.sw_batch_size",
    "infer.device",
)
"""Settings a resumed run may change; any other difference from the checkpoint's config is an error."""

RUN_FILES = ("checkpoints", "log.csv", "curves.png", "tensorboard", "config.yaml", "cache")


def run_dir_for(config: Mapping[str, Any], config_path: str | os.PathLike | None) -> Path:
    """``train.output``, else ``runs/<config file stem>``."""
    if config["train"].get("output"):
        return Path(config["train"]["output"])
    if config_path is None:
        raise ConfigError("train.output: required when the config does not come from a file")
    return Path("runs") / Path(config_path).name.split(".")[0]


def _flatten(cfg: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in cfg.items():
        path = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(_flatten(v, path + "."))
        else:
            out[path] = v
    return out


def _check_resumable(saved: Mapping[str, Any], new: Mapping[str, Any], ckpt: Path) -> None:
    a, b = _flatten(saved), _flatten(new)
    changed = sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k) and k not in RESUMABLE_CHANGES)
    changed = [k for k in changed if k != "train.output"]
    if changed:
        shown = ", ".join(f"{k} ({a.get(k)!r} -> {b.get(k)!r})" for k in changed[:4])
        more = f" and {len(changed) - 4} more" if len(changed) > 4 else ""
        raise ConfigError(
            f"--resume: the config differs from the one {ckpt} was trained with: {shown}{more}; "
            f"only {', '.join(RESUMABLE_CHANGES)} may change"
        )


def _resume_checkpoint(run_dir: Path) -> tuple[Path, dict[str, Any]]:
    last = run_dir / "checkpoints" / "last.pt"
    prev = previous_path(last)
    if not last.exists() and not prev.exists():
        raise MedsegError(f"--resume: {run_dir} holds no checkpoint (checkpoints/last.pt); start without --resume")
    try:
        return last, load_checkpoint(last)
    except MedsegError as err:
        if not prev.exists():
            raise
        warnings.warn(f"{err}; resuming from {prev} instead", stacklevel=2)
        return prev, load_checkpoint(prev)


def _prepare_run_dir(run_dir: Path, resume: bool, overwrite: bool) -> None:
    if resume:
        return
    existing = [name for name in RUN_FILES if (run_dir / name).exists()]
    if existing and not overwrite:
        raise MedsegError(
            f"{run_dir} already holds a run ({', '.join(existing)}); pass --resume to continue it "
            "or --overwrite to start again"
        )
    for name in existing:
        path = run_dir / name
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / ".write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        raise MedsegError(f"{run_dir}: cannot write the run folder ({err.strerror})") from None


class distributed_context:
    """Initialise ``torch.distributed`` when launched by torchrun (``WORLD_SIZE`` > 1).

    NCCL on CUDA, gloo on CPU. Yields ``(rank, world_size, local_rank)``; tears down on exit.
    """

    def __init__(self, device_setting: str) -> None:
        self.world_size = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        self.device_setting = device_setting
        self.started = False

    def __enter__(self) -> distributed_context:
        if self.world_size > 1 and not torch.distributed.is_initialized():
            use_cuda = torch.cuda.is_available() and self.device_setting != "cpu"
            if use_cuda:
                torch.cuda.set_device(self.local_rank)
            torch.distributed.init_process_group("nccl" if use_cuda else "gloo")
            self.started = True
        return self

    def __exit__(self, *exc: object) -> None:
        if self.started:
            torch.distributed.destroy_process_group()

    def device(self, selected: torch.device) -> torch.device:
        if self.world_size > 1 and selected.type == "cuda":
            return torch.device("cuda", self.local_rank)
        return selected


def run_training(
    config_path: str | os.PathLike | None,
    overrides: Sequence[str] = (),
    *,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Train as configured; returns a summary (run folder, epochs, best Dice, stop reason).

    Raises:
        ConfigError / DataError / MedsegError: bad settings, data or run folder (one line each).
    """
    from pipeline.data import load_datalist

    config = load_config(config_path, overrides)
    run_dir = run_dir_for(config, config_path)
    with distributed_context(config["train"]["device"]) as dist:
        ckpt_path, ckpt = (None, None)
        if resume:
            ckpt_path, ckpt = _resume_checkpoint(run_dir)
            _check_resumable(ckpt["config"], config, ckpt_path)
        if dist.rank == 0:
            _prepare_run_dir(run_dir, resume, overwrite)
        if dist.world_size > 1:
            torch.distributed.barrier()
        factory.set_threads(config["train"]["threads"])
        device = dist.device(factory.select_device(config["train"]["device"]))
        if device.type == "cuda":
            torch.backends.cudnn.benchmark = not config["train"]["deterministic"]
        if config["train"]["deterministic"]:
            torch.use_deterministic_algorithms(True, warn_only=True)
        torch.manual_seed(config["seed"])

        splits = load_datalist(config["data"])
        network = factory.build_network(config).to(device)
        if config["train"]["channels_last"]:
            network = network.to(
                memory_format=torch.channels_last_3d if network_dims(config) == 3 else torch.channels_last
            )
        loss = factory.build_loss(config)
        optimizer = factory.build_optimizer(config, network.parameters())
        scheduler = factory.build_scheduler(config, optimizer)
        train_loader, val_loader = factory.build_loaders(
            config, splits, loss, run_dir, device, rank=dist.rank, world_size=dist.world_size
        )
        model: torch.nn.Module = network
        if dist.world_size > 1:
            model = torch.nn.parallel.DistributedDataParallel(
                network, device_ids=[device.index] if device.type == "cuda" else None
            )
        infer = dict(config["infer"], roi_size=factory.roi_size(config))
        trainer = Trainer(
            network=model,
            loss=loss,
            optimizer=optimizer,
            scheduler=scheduler,
            train_loader=train_loader,
            val_loader=val_loader,
            config=config,
            run_dir=run_dir,
            num_classes=factory.num_classes(config),
            device=device,
            epochs=config["train"]["epochs"],
            val_every=config["train"]["val_every"],
            patience=config["train"]["patience"],
            time_budget=config["train"]["time_budget"],
            iterations_per_epoch=config["train"]["iterations_per_epoch"],
            grad_clip=config["train"]["grad_clip"],
            amp_dtype=autocast_dtype(config["train"]["amp"], device),
            infer=infer,
            seed=config["seed"],
            tensorboard=config["train"]["tensorboard"],
            rank=dist.rank,
            world_size=dist.world_size,
            progress=progress,
        )
        if ckpt is not None:
            trainer.resume(ckpt)
        if dist.rank == 0:
            dump_config(config, run_dir / "config.yaml")
        state = trainer.fit()
        if dist.world_size > 1:
            torch.distributed.barrier()
    return {
        "run_dir": str(run_dir),
        "epochs": state.epoch,
        "best_dice": state.best_metric if state.best_epoch >= 0 else None,
        "best_epoch": state.best_epoch if state.best_epoch >= 0 else None,
        "stop_reason": trainer.stop_reason or "finished",
        "minutes": state.elapsed / 60,
        "rank": dist.rank,
    }


def network_dims(config: Mapping[str, Any]) -> int:
    return int(config["network"]["spatial_dims"])
