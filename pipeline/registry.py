"""Name → component registries, so YAML configs pick networks and losses by name.

A registry maps snake_case names to classes or factory functions. Registering a name twice
raises (timm only warns, which lets a plugin silently replace a model); looking up an unknown
name raises ``ValueError`` naming the kind, the bad value, the close matches and every option
(MONAI's ``look_up_option`` does the same for its enums).

Example:
    >>> from pipeline.registry import Registry
    >>> COLOURS = Registry("colour")
    >>> @COLOURS.register("red")
    ... class Red: ...
    >>> COLOURS.get("red") is Red
    True
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

T = TypeVar("T")

__all__ = [
    "Registry",
    "NETWORKS",
    "LOSSES",
    "OPTIMIZERS",
    "SCHEDULERS",
    "METRIC_REGISTRY",
    "BATCH_INPUTS",
    "LAYOUTS",
    "SYNTH_KINDS",
    "DEMOS",
]


class Registry:
    """A named collection of components of one kind.

    Args:
        kind: what the registry holds, used in error messages ("network", "loss").
        ordered: list names in registration order instead of sorted (for kinds whose order is
            meaningful, e.g. the metric columns of an evaluation table).
    """

    def __init__(self, kind: str, *, ordered: bool = False) -> None:
        self.kind = kind
        self.ordered = ordered
        self._items: dict[str, Any] = {}

    def register(self, name: str, obj: T | None = None) -> Callable[[T], T] | T:
        """Register ``obj`` under ``name``; without ``obj``, return a decorator.

        Raises:
            ValueError: if ``name`` is empty, not a string, or already registered.
        """
        if not isinstance(name, str) or not name:
            raise ValueError(f"{self.kind} name must be a non-empty string, got {name!r}")

        def add(item: T) -> T:
            if name in self._items:
                raise ValueError(
                    f"{self.kind} {name!r} is already registered (to {self._items[name]!r}); choose another name"
                )
            self._items[name] = item
            return item

        return add if obj is None else add(obj)

    def get(self, name: str) -> Any:
        """Return the component registered under ``name``.

        Raises:
            ValueError: for an unknown name, listing close matches and all options.
        """
        try:
            return self._items[name]
        except (KeyError, TypeError):
            pass
        options = self.names()
        close = difflib.get_close_matches(str(name), options, n=3, cutoff=0.5)
        hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        raise ValueError(f"unknown {self.kind} {name!r}.{hint} Options: {', '.join(options) or '(none)'}")

    def build(self, name: str, *args: Any, **kwargs: Any) -> Any:
        """Look up ``name`` and call it with the given arguments."""
        return self.get(name)(*args, **kwargs)

    def names(self) -> list[str]:
        """All registered names, sorted (in registration order for an ``ordered`` registry)."""
        return list(self._items) if self.ordered else sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._items)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {self.names()})"


NETWORKS = Registry("network")
LOSSES = Registry("loss")
OPTIMIZERS = Registry("optimizer")
SCHEDULERS = Registry("scheduler")
METRIC_REGISTRY = Registry("metric", ordered=True)
"""Evaluation metrics (:class:`pipeline.metrics.Metric` entries), in output column order."""
BATCH_INPUTS = Registry("batch input")
"""Extra batch entries a loss can declare in ``extra_inputs`` (``"dist"``): name → a factory
``(settings: transforms.chains.ChainSettings) -> MapTransform`` that computes the entry."""
SYNTH_KINDS = Registry("synthetic kind")
DEMOS = Registry("demo")
LAYOUTS = Registry("dataset layout")
