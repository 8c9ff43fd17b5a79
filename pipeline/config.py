"""Configs: YAML read with the safe loader, ``--set`` overrides merged in, resolved once.

:func:`load_config` returns a :class:`Config`: the whole config validated against the schema
(:mod:`pipeline.sections`), defaults filled in, cross-section checks done, nested components
checked against their constructors, derived values (classes, spatial dims, channels, patch and
window size) computed once, and everything read-only. Every consumer reads it; nothing
validates again. A checkpoint stores :meth:`Config.to_dict` (plain dicts and lists, loadable
with ``weights_only=True``).

Every problem is a :class:`ConfigError` whose attributes say where it is (``source``: the file
or the ``--set``; ``line``; ``key``: the dotted path) and what is wrong (``detail``)::

    configs/demo.yaml:12: train.epochs: expected int, got str 'ten'
    --set optimizer.lr=fast: optimizer.lr: expected number, got str 'fast'

A key given twice in one mapping of a file is an error naming both lines (PyYAML keeps the last
one silently). There are no ``$`` expressions, no dotted import paths and no YAML tags: a config
can only name registered components, so loading one cannot import or run code.

Example:
    >>> cfg = resolve({"network": {"name": "unet", "spatial_dims": 2, "in_channels": 1, "out_channels": 2}})
    >>> cfg.num_classes, cfg.patch_size, cfg["train"]["epochs"]
    (2, (128, 128), 100)
"""

from __future__ import annotations

import copy
import inspect
import linecache
import os
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import yaml

import pipeline.sections as sections
from pipeline.errors import ConfigError
from pipeline.instances.schema import check_task
from pipeline.io import atomic_write_text
from pipeline.registry import Registry
from pipeline.schema import Component, Section

__all__ = [
    "Config",
    "ConfigError",
    "load_config",
    "load_yaml",
    "parse_overrides",
    "apply_overrides",
    "resolve",
    "build_component",
    "dump_config",
    "root_schema",
    "validation_count",
    "plain",
]

DEFAULT_PATCH = {2: (128, 128), 3: (96, 96, 96)}
"""Training crop when ``transforms.patch_size`` is null: 128² in 2D, 96³ in 3D."""

_VALIDATIONS = [0]


def validation_count() -> int:
    """How many times a whole config has been validated in this process (tests count it)."""
    return _VALIDATIONS[0]


def root_schema() -> Section:
    """The schema of a whole medseg config."""
    return sections.root_schema()


# --------------------------------------------------------------------------- YAML with lines


class _Loader(yaml.SafeLoader):
    """The safe loader, refusing duplicate keys and recording the line of every key path."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self.lines: dict[str, int] = {}
        self._path: list[str] = []


def _construct_mapping(loader: _Loader, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
    loader.flatten_mapping(node)
    seen: dict[Any, int] = {}
    out: dict[Any, Any] = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        line = key_node.start_mark.line + 1
        try:
            hash(key)
        except TypeError:
            raise ConfigError(f"line {line}: a mapping key must be a plain value, got {key!r}") from None
        if key in seen:
            path = ".".join([*loader._path, str(key)])
            raise ConfigError(
                f"duplicate key (lines {seen[key]} and {line}); YAML would silently keep the last one", key=path
            )
        seen[key] = line
        loader._path.append(str(key))
        loader.lines[".".join(loader._path)] = line
        try:
            out[key] = loader.construct_object(value_node, deep=True)
        finally:
            loader._path.pop()
    return out


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def _parse_yaml(text: str, source: str) -> tuple[Any, dict[str, int]]:
    loader = _Loader(text)
    try:
        return loader.get_single_data(), loader.lines
    except ConfigError as err:
        raise err.located(source=source) from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ConfigError(f"invalid YAML{where}: {problem}", source=source) from None
    finally:
        loader.dispose()


def _read_yaml(path: str | os.PathLike) -> tuple[dict[str, Any], dict[str, int]]:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError("config file not found", source=str(path)) from None
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"cannot read config ({err})", source=str(path)) from None
    data, lines = _parse_yaml(text, str(path))
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"the top level must be a mapping of sections, got {type(data).__name__}", source=str(path))
    return data, lines


def load_yaml(path: str | os.PathLike) -> dict[str, Any]:
    """Read a YAML mapping with the safe loader, refusing duplicate keys.

    Raises:
        ConfigError: missing file, YAML syntax error, a duplicate key, or a top level that is
            not a mapping.
    """
    return _read_yaml(path)[0]


# --------------------------------------------------------------------------- overrides


def parse_overrides(items: Iterable[str]) -> list[tuple[str, Any]]:
    """Parse ``--set a.b=value`` strings; values are YAML (``3``, ``true``, ``[1, 2]``, ``{a: 1}``).

    A value that is not valid YAML (``[1, 2``) is an error, never silently a string.

    Raises:
        ConfigError: an item without ``=``, with an empty key, or with a malformed value.
    """
    out = []
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip()
        source = f"--set {item}"
        if not sep or not key or any(not part for part in key.split(".")):
            raise ConfigError("expected KEY=VALUE with a dotted key, e.g. train.epochs=5", source=source)
        value = _parse_yaml(text, source)[0] if text.strip() else ""
        out.append((key, value))
    return out


def _seed(spec: Any) -> Any:
    """What an absent section starts as when an override writes into it: its default."""
    if isinstance(spec, Component):
        return copy.deepcopy(spec.default) or {}
    return {}


def apply_overrides(
    raw: dict[str, Any], overrides: Iterable[tuple[str, Any]], schema: Section | None = None
) -> dict[str, Any]:
    """Return a copy of ``raw`` with each ``(dotted.key, value)`` set.

    An override into a section the file leaves out merges into that section's default
    (``--set optimizer.lr=0.01`` keeps the default optimiser's name), so ``--set`` never needs
    the rest of the section spelled out.

    Raises:
        ConfigError: when a key walks through a value that is not a mapping.
    """
    out = copy.deepcopy(raw)
    for key, value in overrides:
        node, spec = out, schema
        parts = key.split(".")
        for i, part in enumerate(parts[:-1]):
            child = spec.child(part) if isinstance(spec, Section) else None
            nxt = node.get(part)
            if nxt is None:
                nxt = node[part] = _seed(child)
            elif isinstance(nxt, str) and isinstance(child, Component):  # `loss: dice` shorthand
                nxt = node[part] = {"name": nxt}
            if not isinstance(nxt, dict):
                raise ConfigError(f"{'.'.join(parts[: i + 1])} is not a section", source=f"--set {key}")
            node = nxt
            spec = child if isinstance(child, Section) else None
        node[parts[-1]] = value
    return out


# --------------------------------------------------------------------------- the resolved config


class FrozenList(tuple):
    """A read-only list: a tuple that compares equal to a list with the same items."""

    __slots__ = ()

    def __eq__(self, other: object) -> bool:
        if isinstance(other, (list, tuple)):
            return tuple(self) == tuple(other)
        return NotImplemented

    def __ne__(self, other: object) -> bool:
        result = self.__eq__(other)
        return result if result is NotImplemented else not result

    __hash__ = tuple.__hash__


class FrozenDict(Mapping):
    """A read-only mapping over plain data (nested mappings and lists are frozen too)."""

    __slots__ = ("_data",)

    def __init__(self, data: Mapping[str, Any]) -> None:
        self._data = {k: _freeze(v) for k, v in data.items()}

    def __getitem__(self, key: str) -> Any:
        return self._data[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __repr__(self) -> str:
        return repr(_thaw(self))

    def __reduce__(self):
        return (type(self), (_thaw(self),))


def _freeze(value: Any) -> Any:
    if isinstance(value, FrozenDict | FrozenList):
        return value
    if isinstance(value, Mapping):
        return FrozenDict(value)
    if isinstance(value, (list, tuple)):
        return FrozenList(_freeze(v) for v in value)
    return value


def plain(value: Any) -> Any:
    """``value`` as plain dicts and lists (a resolved config, for YAML, JSON and checkpoints)."""
    return _thaw(value)


def _thaw(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _thaw(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_thaw(v) for v in value]
    return value


class Config(FrozenDict):
    """The resolved, read-only config: sections as read-only mappings, plus derived values.

    Attributes:
        spatial_dims / in_channels / out_channels: from ``network``.
        num_classes: classes including background; ``max(2, out_channels)`` (one sigmoid output
            is a binary task).
        sigmoid: the network has one output channel read through a sigmoid (threshold 0.5).
        patch_size: the training crop (``transforms.patch_size``, default 128² / 96³).
        roi_size: the sliding window (``infer.roi_size``, default the patch size).
        label_values: the raw label value of each class, or ``None`` (labels are class indices).
        source: the config file, when it came from one.
    """

    __slots__ = ("source",)

    def __init__(self, data: Mapping[str, Any], source: str | None = None) -> None:
        super().__init__(data)
        self.source = source

    def __reduce__(self):
        return (type(self), (_thaw(self), self.source))

    @property
    def spatial_dims(self) -> int:
        return int(self["network"]["spatial_dims"])

    @property
    def in_channels(self) -> int:
        return int(self["network"]["in_channels"])

    @property
    def out_channels(self) -> int:
        return int(self["network"]["out_channels"])

    @property
    def num_classes(self) -> int:
        return max(2, self.out_channels)

    @property
    def sigmoid(self) -> bool:
        return self.out_channels == 1

    @property
    def patch_size(self) -> tuple[int, ...]:
        return tuple(self["transforms"]["patch_size"])

    @property
    def roi_size(self) -> tuple[int, ...]:
        return tuple(self["infer"]["roi_size"])

    @property
    def label_values(self) -> tuple[float, ...] | None:
        values = self["transforms"]["label_values"]
        return tuple(values) if values is not None else None

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dicts and lists (for YAML, JSON and checkpoints)."""
        return _thaw(self)

    def with_label_values(self, values: Iterable[float]) -> Config:
        """This config with ``transforms.label_values`` set to the dataset's table (one value
        per class, as :mod:`pipeline.data.labels` decides it); nothing else is validated again.

        Raises:
            ConfigError: not one distinct value per class.
        """
        values = [float(v) for v in values]
        if len(values) != self.num_classes or len(set(values)) != len(values):
            raise ConfigError(
                f"needs {self.num_classes} distinct values (one per class), got {values}", key="transforms.label_values"
            )
        data = self.to_dict()
        data["transforms"]["label_values"] = values
        return Config(data, self.source)


def _integer(network: Mapping[str, Any], key: str) -> int:
    value = network.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"must be a positive int, got {value!r}", key=f"network.{key}")
    return value


def _derive(cfg: dict[str, Any]) -> None:
    """Fill derived defaults and check settings that span sections (in place)."""
    network = cfg["network"]
    dims = _integer(network, "spatial_dims")
    if dims not in (2, 3):
        raise ConfigError(f"must be 2 or 3, got {dims}", key="network.spatial_dims")
    in_channels = _integer(network, "in_channels")
    classes = max(2, _integer(network, "out_channels"))
    t = cfg["transforms"]
    patch = t["patch_size"] or list(DEFAULT_PATCH[dims])
    if len(patch) != dims:
        raise ConfigError(f"needs {dims} values for spatial_dims={dims}, got {patch}", key="transforms.patch_size")
    t["patch_size"] = list(patch)
    roi = cfg["infer"]["roi_size"] or list(patch)
    if len(roi) != dims:
        raise ConfigError(f"has {len(roi)} values but network.spatial_dims is {dims}", key="infer.roi_size")
    cfg["infer"]["roi_size"] = list(roi)
    channels = t["channels"]
    if channels is not None and len(channels) != in_channels:
        raise ConfigError(
            f"selects {len(channels)} channel(s) {channels} but network.in_channels is {in_channels}",
            key="transforms.channels",
        )
    labels = t["label_values"]
    if labels is not None and len(labels) != classes:
        raise ConfigError(
            f"lists {len(labels)} values {labels} but there are {classes} classes (network.out_channels)",
            key="transforms.label_values",
        )
    if labels is not None and len(set(labels)) != len(labels):
        raise ConfigError(f"values must be distinct, got {labels}", key="transforms.label_values")
    flip_axes = t["augment"]["flip"]["axes"]
    if flip_axes is not None and any(a >= dims for a in flip_axes):
        raise ConfigError(f"spatial axes are 0..{dims - 1}, got {flip_axes}", key="transforms.augment.flip.axes")
    low, high = t["intensity"]["window"]
    if t["intensity"]["mode"] in ("window", "ct") and not low < high:
        raise ConfigError(f"needs low < high, got {[low, high]}", key="transforms.intensity.window")
    for name in ("scale", "gamma", "contrast"):
        lo, hi = t["augment"][name]["range"]
        if lo > hi:
            raise ConfigError(f"needs low <= high, got {[lo, hi]}", key=f"transforms.augment.{name}.range")
    if dims == 2 and t["spacing"] is not None:
        raise ConfigError("is for 3D data; remove it for spatial_dims=2", key="transforms.spacing")
    check_task(cfg)
    # absolute, so a run's saved config finds its data from any folder (--set data.root=... moves it)
    for section, key in (("data", "root"), ("train", "cache_dir")):
        if cfg[section][key]:
            cfg[section][key] = os.path.abspath(os.path.expanduser(cfg[section][key]))


def _blame(
    err: ConfigError, lines: Mapping[str, int], source: str | None, overrides: list[tuple[str, Any]]
) -> ConfigError:
    """Locate ``err``: the ``--set`` that touched its key, else the file and the key's line."""
    if err.source is not None:
        return err
    bad = err.key or ""
    for key, value in reversed(overrides):
        if bad == key or bad.startswith(key + ".") or bad.startswith(key + "[") or key.startswith(bad + "."):
            return err.located(source=f"--set {key}={_show(value)}")
    line = None
    probe = bad.split("[", 1)[0]
    while probe and line is None:
        line = lines.get(probe)
        probe = probe.rpartition(".")[0]
    return err.located(source=source or "config", line=line)


def _show(value: Any) -> str:
    return yaml.safe_dump(value, default_flow_style=True, width=10**6).strip().removesuffix("...").strip()


def resolve(
    raw: Mapping[str, Any],
    *,
    source: str | None = None,
    lines: Mapping[str, int] | None = None,
    overrides: list[tuple[str, Any]] | None = None,
) -> Config:
    """Validate a raw config mapping against the schema and derive what follows from it.

    Args:
        raw: the mapping as read from YAML (with overrides applied).
        source / lines / overrides: where the values came from, for error messages.

    Raises:
        ConfigError: located at the file and line, or at the ``--set`` that caused it.
    """
    _VALIDATIONS[0] += 1
    try:
        cfg = root_schema().validate(_thaw(raw), "")
        _derive(cfg)
    except ConfigError as err:
        raise _blame(err, lines or {}, source, overrides or []) from None
    return Config(cfg, source)


def load_config(
    path: str | os.PathLike | None = None,
    overrides: Iterable[str] = (),
    *,
    base: Mapping[str, Any] | None = None,
) -> Config:
    """Load a config file (or start from ``base``), apply ``--set`` overrides and resolve it.

    Args:
        path: YAML file; ``None`` starts from ``base`` (or an empty mapping).
        overrides: ``--set`` strings, applied in order.
        base: a mapping to start from instead of a file (e.g. a checkpoint's resolved config).

    Raises:
        ConfigError: naming the file and line (or the ``--set``) and the key path.
    """
    if path is not None:
        raw, lines = _read_yaml(path)
        source: str | None = str(path)
    else:
        raw, lines, source = _thaw(base or {}), {}, None
    parsed = parse_overrides(overrides)
    raw = apply_overrides(raw, parsed, root_schema())
    return resolve(raw, source=source, lines=lines, overrides=parsed)


# --------------------------------------------------------------------------- building


def _raised_by_argument_check(err: BaseException, target: Any) -> bool:
    """Whether ``err`` comes from a ``raise`` statement of an argument check (the STYLE
    convention: constructors check their arguments and raise ``ValueError``/``TypeError``), in the
    registered factory itself, in an ``__init__``, or in one of our own helpers, as opposed to a
    failure deeper down (a bug, which keeps its traceback)."""
    tb = err.__traceback__
    if tb is None:
        return False
    while tb.tb_next is not None:
        tb = tb.tb_next
    frame = tb.tb_frame
    code = frame.f_code
    own = code is getattr(target, "__code__", None)
    ours = frame.f_globals.get("__name__", "").startswith("pipeline.")
    if not (own or ours or code.co_name in ("__init__", "__post_init__")):
        return False
    return linecache.getline(code.co_filename, tb.tb_lineno).strip().startswith("raise ")


def build_component(
    spec: Mapping[str, Any],
    registry: Registry,
    *args: Any,
    where: str = "",
    **extra: Any,
) -> Any:
    """Build a registered component from its resolved ``{name, **kwargs}`` mapping.

    Args:
        spec: the resolved mapping.
        registry: where ``spec["name"]`` is registered.
        args / extra: arguments the caller supplies (not from YAML).
        where: the key path, for errors. Arguments that are components themselves (declared
            ``nested`` in the schema, see :class:`pipeline.schema.Component`) are built first.

    Raises:
        ConfigError: the arguments do not bind to the constructor, or the constructor's own
            argument check refused a value (a ``raise`` in its body). Any other error inside a
            constructor is a bug and propagates with its traceback.
    """
    name = spec["name"]
    target = registry.get(name)
    label = where or registry.kind
    nested = sections.nested_registries(registry, name)
    kwargs: dict[str, Any] = {}
    for key, value in spec.items():
        if key == "name":
            continue
        if key in nested and isinstance(value, Mapping):
            value = build_component(value, nested[key], where=f"{label}.{key}")
        kwargs[key] = _thaw(value) if isinstance(value, FrozenDict | FrozenList) else value
    kwargs.update(extra)
    try:
        inspect.signature(target).bind(*args, **kwargs)
    except TypeError as err:
        raise ConfigError(f"{name}: {err}", key=label) from None
    except ValueError:  # no signature to check against
        pass
    try:
        return target(*args, **kwargs)
    except (TypeError, ValueError) as err:
        if isinstance(err, ConfigError) or _raised_by_argument_check(err, target):
            raise ConfigError(f"{name}: {err}", key=label) from err
        raise


def dump_config(cfg: Mapping[str, Any], path: str | os.PathLike) -> None:
    """Write a resolved config as YAML (atomically: temporary file, then rename)."""
    atomic_write_text(path, yaml.safe_dump(_thaw(cfg), sort_keys=False))
