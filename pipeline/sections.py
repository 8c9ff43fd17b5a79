"""The schema of a whole config: every top-level section, declared once.

The data layer's two large sections (``data``, ``transforms``) are declared next to their code
in :mod:`pipeline.data.schema`; the others are here. Importing this module registers the
networks, losses, optimisers and schedulers, whose constructors the component sections check
arguments against. Components themselves never import the config machinery: a component that
takes other components (``compound``'s ``region`` and ``boundary`` terms) is declared with
``nested`` below, validated at load time and built by :func:`pipeline.config.build_component`.
"""

from __future__ import annotations

import functools

import pipeline.engines.optim  # noqa: F401  (registers the optimisers and schedules)
import pipeline.losses  # noqa: F401  (registers the losses)
import pipeline.networks  # noqa: F401  (registers the networks)
from pipeline.data.schema import data_schema, transforms_schema
from pipeline.instances.schema import task_schema
from pipeline.metrics import METRICS
from pipeline.registry import LOSSES, NETWORKS, OPTIMIZERS, SCHEDULERS, Registry
from pipeline.schema import Component, Field, Section

__all__ = ["root_schema", "nested_registries", "LOSS_DEFAULT"]

LOSS_DEFAULT = {"name": "dice_ce", "to_onehot_y": True, "softmax": True}
"""The loss when a config names none (also the compound loss's default region term)."""


def _loss_term() -> Component:
    return Component(LOSSES, help="a registered loss")


def _loss() -> Component:
    return Component(
        LOSSES,
        default=LOSS_DEFAULT,
        nested={"compound": {"region": _loss_term(), "boundary": _loss_term()}},
        help="loss name and its arguments (`medseg` README: Losses)",
    )


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
            "amp": Field(str, "auto", choices=("auto", "bf16", "fp16", "off"), help="auto: bf16 on CUDA, bf16 CPUs"),
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
            "val_metric": Field(
                str, "dice", choices=METRICS.names, help="metric (`medseg evaluate` column) whose mean picks best.pt"
            ),
        }
    )


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


@functools.cache
def root_schema() -> Section:
    """The schema of a whole medseg config (built once per process)."""
    return Section(
        {
            "seed": Field(int, 0, minimum=0, help="seed for every random generator (torch, numpy, transforms, splits)"),
            "network": Component(NETWORKS, required=True, help="network name from `medseg networks` and its arguments"),
            "loss": _loss(),
            "optimizer": Component(
                OPTIMIZERS, default={"name": "adamw", "lr": 1e-3, "weight_decay": 1e-4}, skip=("params",)
            ),
            "scheduler": Component(
                SCHEDULERS, default={"name": "cosine"}, skip=("optimizer", "total_steps", "steps_per_epoch")
            ),
            "train": _train(),
            "infer": _infer(),
            "data": data_schema(),
            "transforms": transforms_schema(),
            "task": task_schema(),
        }
    )


def nested_registries(registry: Registry, name: str) -> dict[str, Registry]:
    """Argument name → registry of the nested components that ``registry[name]`` takes."""
    for spec in root_schema().fields.values():
        if isinstance(spec, Component) and spec.registry is registry:
            return {arg: sub.registry for arg, sub in spec.nested_of(name).items()}
    return {}
