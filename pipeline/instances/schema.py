"""The ``task`` section of a config: semantic segmentation (the default) or instances of objects.

``task.kind: instance`` makes a run learn the 3-class "centre + border" encoding of instance
maps (:mod:`pipeline.instances.targets`, built in the transform chain from the datalist's
``instance`` entry, or from ``label`` read as an id map when there is none), choose the
post-processing thresholds on the validation split after training
(:func:`pipeline.instances.postprocess.select_thresholds`), and turn predictions into one id per
object in ``medseg infer`` and ``medseg evaluate``.

Example YAML::

    task:
      kind: instance
      border_width: 1.0
      postprocess: {markers: interior, metric: mean_ap}
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pipeline.errors import ConfigError
from pipeline.instances.postprocess import MARKERS, SELECTION_METRICS
from pipeline.instances.targets import BACKGROUND, BORDER, INTERIOR
from pipeline.schema import Field, Section

__all__ = ["task_schema", "check_task", "is_instance", "TARGETS", "SELECTION_METRICS"]

TARGETS = ("classes",)
"""Instance training targets: ``classes`` = background / interior / border (network.out_channels 3)."""

NUM_CLASSES = max(BACKGROUND, INTERIOR, BORDER) + 1


def task_schema() -> Section:
    """Schema of the ``task`` section."""
    postprocess = Section(
        {
            "markers": Field(str, "interior", choices=MARKERS, help="seeds: interior class regions or distance peaks"),
            "interior_thresholds": Field(
                list,
                [0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95],
                item=float,
                minimum=0.0,
                maximum=1.0,
                help="seed thresholds tried on the validation split",
            ),
            "min_sizes": Field(
                list, [0, 8, 16, 32, 64, 128], item=int, minimum=0, help="minimum object sizes (pixels) tried"
            ),
            "max_hole_size": Field(int, 64, minimum=0, help="enclosed holes up to this many pixels are filled"),
            "foreground_threshold": Field(float, 0.5, minimum=0.0, maximum=1.0, help="1 - p(background) above it"),
            "min_distance": Field(int, 3, minimum=1, help="markers distance: peak separation (pixels)"),
            "metric": Field(str, "mean_ap", choices=SELECTION_METRICS, help="what the threshold search maximises"),
        },
        check=_check_grid,
        help="instances from probabilities; thresholds chosen on validation after training",
    )
    return Section(
        {
            "kind": Field(str, "semantic", choices=("semantic", "instance"), help="semantic masks or object instances"),
            "target": Field(str, "classes", choices=TARGETS, help="instance: training target encoding"),
            "border_width": Field(float, 1.0, minimum=0.0, help="instance: border class width (pixels)"),
            "border": Field(str, "all", choices=("all", "touching"), help="instance: every border or contacts only"),
            "postprocess": postprocess,
            "outputs": Section({"objects_csv": Field(bool, True, help="infer: write <case>_objects.csv")}),
        },
        help="what is segmented: semantic classes or object instances",
    )


def _check_grid(section: dict[str, Any], where: str) -> None:
    for key in ("interior_thresholds", "min_sizes"):
        if not section[key]:
            raise ConfigError("needs at least one value", key=f"{where}.{key}")


def is_instance(config: Mapping[str, Any]) -> bool:
    """Whether a (resolved or saved) config is an instance task."""
    task = config.get("task") or {}
    return task.get("kind") == "instance"


def check_task(config: Mapping[str, Any]) -> None:
    """Rules across sections for an instance task (called when a config is resolved).

    Raises:
        ConfigError: ``network.out_channels`` is not 3 (background, interior, border), or
            ``border_width`` is 0.
    """
    if not is_instance(config):
        return
    if config["network"]["out_channels"] != NUM_CLASSES:
        raise ConfigError(
            f"must be {NUM_CLASSES} for task.kind instance (background, interior, border), "
            f"got {config['network']['out_channels']}",
            key="network.out_channels",
        )
    if not config["task"]["border_width"] > 0:
        raise ConfigError("must be > 0 for task.kind instance", key="task.border_width")
