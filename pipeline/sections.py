"""The top-level config sections. Subsystems with many settings declare theirs next to their code
(the data layer: ``data`` and ``transforms``); this module declares the small ones and imports
the others, so :func:`pipeline.config.root_schema` sees every section."""

from __future__ import annotations

import pipeline.data.schema  # noqa: F401  (declares the data and transforms sections)
from pipeline.config import Component, Field, Section, register_section
from pipeline.registry import LOSSES, NETWORKS, OPTIMIZERS, SCHEDULERS


@register_section("seed")
def _seed() -> Field:
    return Field(int, 0, minimum=0, help="seed for every random generator (torch, numpy, transforms, splits)")


@register_section("network")
def _network() -> Component:
    import pipeline.networks  # noqa: F401  (registers the networks)

    return Component(NETWORKS, required=True, help="network name from `medseg networks` and its arguments")


@register_section("loss")
def _loss() -> Component:
    import pipeline.losses  # noqa: F401  (registers the losses)

    return Component(LOSSES, default={"name": "dice_ce", "to_onehot_y": True, "softmax": True})


@register_section("optimizer")
def _optimizer() -> Component:
    import pipeline.engines.optim  # noqa: F401

    return Component(OPTIMIZERS, default={"name": "adamw", "lr": 1e-3, "weight_decay": 1e-4}, skip=("params",))


@register_section("scheduler")
def _scheduler() -> Component:
    import pipeline.engines.optim  # noqa: F401

    return Component(SCHEDULERS, default={"name": "cosine"}, skip=("optimizer", "max_epochs"))


@register_section("train")
def _train() -> Section:
    return Section(
        {
            "output": Field(str, None, nullable=True, help="run folder; default runs/<config file stem>"),
            "epochs": Field(int, 100, minimum=1),
            "batch_size": Field(int, 2, minimum=1),
            "iterations_per_epoch": Field(int, None, minimum=1, nullable=True, help="default: one pass"),
            "val_every": Field(int, 1, minimum=1, help="validate every N epochs (and after the last)"),
            "patience": Field(int, 0, minimum=0, help="stop after N validations without improvement; 0 = off"),
            "time_budget": Field(float, None, minimum=0, nullable=True, help="stop after this many minutes"),
            "amp": Field(str, "auto", choices=("auto", "bf16", "fp16", "off"), help="auto = bf16 on CUDA, off on CPU"),
            "device": Field(str, "auto", help="auto, cpu, cuda or cuda:N"),
            "threads": Field(int, 0, minimum=0, help="torch CPU threads; 0 = all cores"),
            "num_workers": Field(int, -1, minimum=-1, help="data-loader workers; -1 = chosen for the machine"),
            "cache": Field(str, "memory", choices=("memory", "disk", "none")),
            "cache_rate": Field(float, 1.0, minimum=0.0, maximum=1.0),
            "cache_dir": Field(str, None, nullable=True, help="for cache: disk; default <run folder>/cache"),
            "grad_clip": Field(float, 12.0, minimum=0, nullable=True),
            "deterministic": Field(bool, False, help="torch deterministic algorithms (slower on CUDA)"),
            "channels_last": Field(bool, False),
            "compile": Field(bool, False, help="torch.compile the training forward pass"),
            "tensorboard": Field(bool, True, help="write TensorBoard events when tensorboard is installed"),
            "val_metric": Field(str, "dice", help="metric (pipeline.metrics name) whose mean picks best.pt"),
        }
    )


@register_section("infer")
def _infer() -> Section:
    return Section(
        {
            "roi_size": Field(list, None, item=int, length=(2, 3), nullable=True, help="default: transforms patch"),
            "overlap": Field(float, 0.5, minimum=0.0, maximum=0.95),
            "mode": Field(str, "gaussian", choices=("gaussian", "constant")),
            "sw_batch_size": Field(int, 0, minimum=0, help="windows per forward pass; 0 = sized to free GPU memory"),
            "compile": Field(bool, False, help="torch.compile the network for inference (pays off on big volumes)"),
            "tta": Field(bool, False, help="average over flips along every spatial axis"),
            "amp": Field(str, "auto", choices=("auto", "bf16", "fp16", "off"), help="auto = fp16 on CUDA, off on CPU"),
            "device": Field(str, "auto"),
            "save_probabilities": Field(bool, False),
        }
    )
