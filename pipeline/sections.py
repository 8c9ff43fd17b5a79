"""The top-level config sections. Each subsystem declares its own next to its code; this module
only imports them so :func:`pipeline.config.root_schema` sees every section."""

from __future__ import annotations

import pipeline.data.schema  # noqa: F401  (declares the data and transforms sections)
from pipeline.config import Component, Field, register_section
from pipeline.registry import LOSSES, NETWORKS


@register_section("seed")
def _seed() -> Field:
    return Field(int, 0, minimum=0, help="seed for every random generator (torch, numpy, splits)")


@register_section("network")
def _network() -> Component:
    import pipeline.networks  # noqa: F401  (registers the networks)

    return Component(NETWORKS, required=True, help="network name from `medseg networks` and its arguments")


@register_section("loss")
def _loss() -> Component:
    import pipeline.losses  # noqa: F401  (registers the losses)

    return Component(LOSSES, default={"name": "dice_ce", "to_onehot_y": True, "softmax": True})
