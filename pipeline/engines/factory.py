"""Build the training components from a resolved config: device, network, loss, optimiser and
schedule (datasets and loaders: :mod:`pipeline.data.loaders`)."""

from __future__ import annotations

import torch

from pipeline.config import Config, ConfigError, build_component
from pipeline.data.loaders import cpu_count
from pipeline.losses import DeepSupervisionLoss
from pipeline.registry import LOSSES, NETWORKS, OPTIMIZERS, SCHEDULERS

__all__ = ["select_device", "set_threads", "build_network", "build_loss", "build_optimizer", "build_scheduler"]


def select_device(name: str) -> torch.device:
    """``auto`` → CUDA when present, else CPU; ``cuda[:N]`` without CUDA is a ConfigError."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"{name!r} is not a device; use auto, cpu, cuda or cuda:N", key="device") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"{name!r} requested but CUDA is not available; use --device cpu", key="device")
    if device.type not in ("cpu", "cuda"):
        raise ConfigError(f"{name!r} is not supported; use auto, cpu, cuda or cuda:N", key="device")
    return device


def set_threads(threads: int) -> int:
    """Set torch's CPU threads (0 = all cores this process may use); returns the count."""
    torch.set_num_threads(threads or cpu_count())
    return torch.get_num_threads()


def build_network(config: Config) -> torch.nn.Module:
    """The configured network."""
    return build_component(config["network"], NETWORKS, where="network")


def build_loss(config: Config) -> torch.nn.Module:
    """The configured loss, wrapped for deep supervision when the network has it on."""
    loss = build_component(config["loss"], LOSSES, where="loss")
    if config["network"].get("deep_supervision"):
        loss = DeepSupervisionLoss(loss)
    return loss


def build_optimizer(config: Config, params) -> torch.optim.Optimizer:
    """The configured optimiser; Adam/AdamW on CUDA tensors get ``fused=True`` (one kernel for
    the whole update instead of a few per parameter group) unless the config sets ``fused``."""
    spec = config["optimizer"]
    params = list(params)
    extra = {}
    fusable = spec["name"] in ("adam", "adamw") and "fused" not in spec and "foreach" not in spec
    if fusable and params and all(isinstance(p, torch.Tensor) and p.is_cuda for p in params):
        extra["fused"] = True
    return build_component(spec, OPTIMIZERS, params, where="optimizer", **extra)


def build_scheduler(config: Config, optimizer: torch.optim.Optimizer, steps_per_epoch: int = 1):
    """The configured schedule over the run's ``train.epochs × steps_per_epoch`` steps (stepped
    once per training step, see :mod:`pipeline.engines.optim`), or ``None``."""
    if config.get("scheduler") is None:
        return None
    total = config["train"]["epochs"] * steps_per_epoch
    return build_component(config["scheduler"], SCHEDULERS, optimizer, total, steps_per_epoch, where="scheduler")
