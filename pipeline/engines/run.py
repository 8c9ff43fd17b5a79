"""``medseg train``: from a config file to a finished run folder, on one process or under torchrun.

The run folder (``train.output``, default ``runs/<config stem>``) holds ``config.yaml`` (the
resolved config), ``log.csv``, ``curves.png``, ``checkpoints/{last,best}.pt`` and, when
TensorBoard is installed, ``tensorboard/``. A fresh run that fails before its first checkpoint
(a bad file, a bad setting, Ctrl-C) removes what it wrote, so the next attempt needs no
``--overwrite``; ``--resume`` continues from ``last.pt`` (``last.prev.pt`` if that is damaged)
and starts the run again when it never reached a checkpoint.

Under torchrun (``WORLD_SIZE`` > 1): ``train.batch_size`` is per process, so a step sees
``batch_size × transforms.num_samples × world_size`` crops; each rank caches and reshuffles only
its share of the training cases (:func:`pipeline.engines.factory.shard`); validation cases are
split across ranks and the Dice all-reduced; batch norm is synchronised on CUDA; only rank 0
writes files; rank 0 reads the checkpoint to resume from and sends it to the others; a setup
error on one rank (a bad file in its shard) stops every rank with that rank's one-line error.
"""

from __future__ import annotations

import os
import shutil
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from pipeline.config import Config, ConfigError, apply_overrides, dump_config, load_config, load_yaml, parse_overrides
from pipeline.data import load_datalist
from pipeline.data.labels import fill_label_values
from pipeline.data.loaders import build_loaders
from pipeline.engines import factory
from pipeline.engines.checkpoint import load_checkpoint, previous_path
from pipeline.engines.instances import tune_postprocess
from pipeline.engines.runlock import RunLock
from pipeline.engines.trainer import Trainer
from pipeline.errors import MedsegError
from pipeline.instances.schema import is_instance

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


def _load_run_config(config_path: str | os.PathLike | None, overrides: Sequence[str], resume: bool) -> Config:
    """The config a command line trains with: with ``--resume``, the run's own resolved
    ``config.yaml``, so a bare ``--resume`` continues exactly what ran whatever ``--set`` flags
    started it (repeating them changes nothing; changing a setting that cannot change mid-run is
    refused against the checkpoint, see :data:`RESUMABLE_CHANGES`); else the config file."""
    if resume and config_path is not None:
        raw = apply_overrides(load_yaml(config_path), parse_overrides(overrides))
        train = raw.get("train") if isinstance(raw.get("train"), Mapping) else {}
        saved = run_dir_for({"train": {"output": train.get("output")}}, config_path) / "config.yaml"
        if saved.is_file():
            return load_config(saved, overrides)
    return load_config(config_path, overrides)


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


def _has_checkpoint(run_dir: Path) -> bool:
    last = run_dir / "checkpoints" / "last.pt"
    return last.exists() or previous_path(last).exists()


def _resume_checkpoint(run_dir: Path) -> tuple[Path | None, dict[str, Any] | None]:
    """``checkpoints/last.pt``, else ``last.prev.pt`` with a warning when ``last.pt`` is damaged or
    missing (a kill between the two renames of a save); ``(None, None)`` when the run never
    reached a checkpoint (killed in its first epoch): it starts again, so that one command line
    with ``--resume`` (e.g. under ``torchrun --max-restarts``) both starts and continues a run."""
    last = run_dir / "checkpoints" / "last.pt"
    prev = previous_path(last)
    if not _has_checkpoint(run_dir):
        if any((run_dir / name).exists() for name in RUN_FILES):
            warnings.warn(f"--resume: {run_dir} holds no checkpoint yet; starting the run again", stacklevel=3)
        return None, None
    try:
        return last, load_checkpoint(last)
    except MedsegError as err:
        if not prev.exists():
            raise
        try:
            found = prev, load_checkpoint(prev)
        except MedsegError as prev_err:
            raise MedsegError(f"--resume: no usable checkpoint: {err}; {prev_err}") from None
        aside = ""
        if last.exists():  # else the next save would rotate the damaged file over the good last.prev.pt
            damaged = last.with_name("last.damaged.pt")
            os.replace(last, damaged)
            aside = f" ({last.name} kept as {damaged.name})"
        warnings.warn(f"{err}; resuming from {prev} instead{aside}", stacklevel=3)
        return found


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


def _remove_failed_start(run_dir: Path, created: bool, lock: RunLock | None) -> None:
    """Undo a fresh run that failed before its first checkpoint, so nothing half-written blocks the
    next attempt; a run with a checkpoint is kept (``--resume`` continues it)."""
    if _has_checkpoint(run_dir):
        if lock is not None:
            lock.release()
        return
    if lock is not None:
        lock.release(remove=True)
    for name in RUN_FILES:
        path = run_dir / name
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        elif path.exists():
            path.unlink()
    if created:
        try:
            run_dir.rmdir()
        except OSError:  # not empty: the user's own files stay
            pass


def _agree_on_failure(error: BaseException | None, dist: distributed_context, device: torch.device) -> None:
    """Under DDP, make every rank stop when one could not set up (e.g. a bad file in its shard):
    the rank that failed raises its own error, the others a line pointing at it, instead of
    waiting for a collective that never comes."""
    if dist.world_size > 1:
        flag = torch.tensor([0 if error is None else dist.rank + 1], device=device)
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        failed = int(flag.item()) - 1
        if error is None and failed >= 0:
            raise MedsegError(f"rank {failed} could not set up (its error is printed above); stopping")
    if error is not None:
        raise error


def _shared_resume_checkpoint(
    run_dir: Path, dist: distributed_context, device: torch.device
) -> tuple[Path | None, dict[str, Any] | None]:
    """Rank 0 picks and reads the checkpoint and sends it to the other ranks, so that every rank
    resumes from the same epoch even when the run folder is not on storage they share (nodes
    with local disks) or they see it at different moments (NFS caching)."""
    found: tuple[Path | None, dict[str, Any] | None] = (None, None)
    error: MedsegError | None = None
    if dist.rank == 0:
        try:
            found = _resume_checkpoint(run_dir)
        except MedsegError as err:
            error = err
    _agree_on_failure(error, dist, device)
    if dist.world_size > 1:
        box = [found]
        torch.distributed.broadcast_object_list(box, src=0, device=device if device.type == "cuda" else None)
        found = box[0]
    return found


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
    """Train as configured; returns a summary (run folder, epochs, best ``train.val_metric`` value
    as ``best_metric``, and as ``best_dice`` when that metric is Dice, stop reason).

    Raises:
        ConfigError / DataError / MedsegError: bad settings, data or run folder (one line each).
    """
    config = _load_run_config(config_path, overrides, resume)
    run_dir = run_dir_for(config, config_path)
    # the dataset's one table of label values, saved with the run for infer and evaluate
    config = fill_label_values(config)
    with distributed_context(config["train"]["device"]) as dist:
        factory.set_threads(config["train"]["threads"])
        device = dist.device(factory.select_device(config["train"]["device"]))
        created = not run_dir.exists()
        lock: RunLock | None = None
        error: MedsegError | None = None
        if dist.rank == 0:  # first of all: nothing reads or writes the folder while another run holds it
            try:
                lock = RunLock(run_dir)
            except MedsegError as err:
                error = err
        _agree_on_failure(error, dist, device)
        fresh = True
        try:
            ckpt_path, ckpt = _shared_resume_checkpoint(run_dir, dist, device) if resume else (None, None)
            if ckpt is not None:
                _check_resumable(ckpt["config"], config.to_dict(), ckpt_path)
            fresh = ckpt is None
            if dist.rank == 0:
                try:
                    _prepare_run_dir(run_dir, resume=not fresh, overwrite=overwrite or resume)
                except MedsegError as err:
                    error = err
            _agree_on_failure(error, dist, device)
            trainer = _build_trainer(config, run_dir, dist, device, progress)
            if ckpt is not None:
                trainer.resume(ckpt)
            if dist.rank == 0:
                dump_config(config, run_dir / "config.yaml")
            state = trainer.fit()
            if dist.world_size > 1:
                torch.distributed.barrier()
            if dist.rank == 0 and is_instance(config):  # thresholds chosen on validation, saved with the run
                tune_postprocess(config, run_dir, progress=progress)
        except BaseException:
            if dist.rank == 0 and fresh:
                _remove_failed_start(run_dir, created, lock)
                lock = None
            raise
        finally:
            if lock is not None:
                lock.release()
    return {
        "run_dir": str(run_dir),
        "epochs": state.epoch,
        "val_metric": trainer.val_metric,
        "best_metric": state.best_metric if state.best_epoch >= 0 else None,
        "best_dice": state.best_metric if state.best_epoch >= 0 and trainer.val_metric == "dice" else None,
        "best_epoch": state.best_epoch if state.best_epoch >= 0 else None,
        "stop_reason": trainer.stop_reason or "finished",
        "minutes": state.elapsed / 60,
        "rank": dist.rank,
    }


def _build_trainer(
    config: Config, run_dir: Path, dist: distributed_context, device: torch.device, progress: bool
) -> Trainer:
    """Network, loss, optimiser, loaders (data is loaded and cached here) and the Trainer.

    Under DDP every rank learns whether another failed, so a bad file in one rank's shard stops
    them all with its one-line error instead of a hang.
    """
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = not config["train"]["deterministic"]
    if config["train"]["deterministic"]:
        torch.use_deterministic_algorithms(True, warn_only=True)
    torch.manual_seed(config["seed"])
    error: MedsegError | None = None
    try:
        splits = load_datalist(config["data"])
        network = factory.build_network(config).to(device)
        if config["train"]["channels_last"]:
            network = network.to(
                memory_format=torch.channels_last_3d if config.spatial_dims == 3 else torch.channels_last
            )
        loss = factory.build_loss(config)
        optimizer = factory.build_optimizer(config, network.parameters())
        train_loader, val_loader = build_loaders(
            config, splits, loss, run_dir, device, rank=dist.rank, world_size=dist.world_size
        )
        steps_per_epoch = config["train"]["iterations_per_epoch"] or len(train_loader)
        scheduler = factory.build_scheduler(config, optimizer, steps_per_epoch)
    except MedsegError as err:
        error = err
    _agree_on_failure(error, dist, device)
    model: torch.nn.Module = network
    if dist.world_size > 1:
        network = _sync_batch_norm(network, device)
        model = torch.nn.parallel.DistributedDataParallel(
            network, device_ids=[device.index] if device.type == "cuda" else None
        )
    return Trainer(
        network=model,
        loss=loss,
        optimizer=optimizer,
        scheduler=scheduler,
        train_loader=train_loader,
        val_loader=val_loader,
        config=config,
        run_dir=run_dir,
        device=device,
        rank=dist.rank,
        world_size=dist.world_size,
        progress=progress,
    )


def _sync_batch_norm(network: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """Batch norm under DDP: synchronised on CUDA, so the statistics are those of the global batch
    (what one process with that batch would compute); per process on the CPU, where PyTorch's
    SyncBatchNorm does not run. Instance norm (the UNet's default) does not depend on the batch.
    The converted layers keep the parameter and buffer names, so checkpoints load either way."""
    if not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in network.modules()):
        return network
    if device.type == "cuda":
        return torch.nn.SyncBatchNorm.convert_sync_batchnorm(network)
    warnings.warn(
        "batch norm under DDP on the CPU uses each process's own batch statistics (SyncBatchNorm needs CUDA); "
        "network.norm: instance does not depend on the batch",
        stacklevel=3,
    )
    return network
