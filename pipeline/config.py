"""YAML configs: load with the safe loader, validate against a schema, apply overrides, build.

A config is a YAML mapping. Plain settings are declared as :class:`Field` s inside
:class:`Section` s; components (network, loss, ...) are :class:`Component` s: a mapping with a
registry ``name`` plus keyword arguments, checked against the registered constructor's
signature. Validation returns a plain ``dict`` (the *resolved* config, defaults filled in) that
can be written back to YAML and stored in a checkpoint loaded with ``weights_only=True``.

Every problem is a :class:`ConfigError` naming the source (file or ``--set``) and the key path:

    configs/demo.yaml: train.epochs: expected int, got str 'ten'

There are no ``$`` expressions, no dotted import paths and no YAML tags: a config can only name
components that were registered, so loading one cannot import or run code.
"""

from __future__ import annotations

import copy
import difflib
import inspect
import os
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml

from pipeline.errors import ConfigError
from pipeline.io import atomic_write_text
from pipeline.registry import Registry

__all__ = [
    "ConfigError",
    "Field",
    "Section",
    "Component",
    "load_config",
    "load_yaml",
    "parse_overrides",
    "apply_overrides",
    "validate",
    "build_component",
    "dump_config",
    "root_schema",
    "register_section",
]


class _Required:
    def __repr__(self) -> str:
        return "REQUIRED"


REQUIRED: Any = _Required()

_TYPE_NAMES = {int: "int", float: "float", bool: "bool", str: "str", list: "list", dict: "mapping"}


def _type_ok(value: Any, kind: type) -> bool:
    # bool is an int subclass in Python; a YAML `true` must not pass as a channel count.
    if kind is bool:
        return isinstance(value, bool)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if kind is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind is list:
        return isinstance(value, (list, tuple))
    if kind is dict:
        return isinstance(value, Mapping)
    return isinstance(value, kind)


def _describe(value: Any) -> str:
    text = repr(value)
    if len(text) > 60:
        text = text[:57] + "..."
    return f"{type(value).__name__} {text}"


class Field:
    """One plain setting.

    Args:
        kind: ``int``, ``float``, ``bool``, ``str``, ``list`` or ``dict``.
        default: value when the key is absent; ``REQUIRED`` (the default) makes it mandatory.
        item: element type for ``list`` fields.
        length: exact list length, or a tuple of allowed lengths.
        choices: allowed values.
        minimum / maximum: inclusive numeric bounds (also applied to list items).
        nullable: accept ``null``.
        help: one line shown in docs and errors.
    """

    def __init__(
        self,
        kind: type,
        default: Any = REQUIRED,
        *,
        item: type | None = None,
        length: int | tuple[int, ...] | None = None,
        choices: Iterable[Any] | None = None,
        minimum: float | None = None,
        maximum: float | None = None,
        nullable: bool = False,
        help: str = "",
    ) -> None:
        if kind not in _TYPE_NAMES:
            raise TypeError(f"Field kind must be one of {list(_TYPE_NAMES.values())}, got {kind!r}")
        self.kind = kind
        self.default = default
        self.item = item
        self.length = (length,) if isinstance(length, int) else length
        self.choices = tuple(choices) if choices is not None else None
        self.minimum = minimum
        self.maximum = maximum
        self.nullable = nullable
        self.help = help

    @property
    def required(self) -> bool:
        return self.default is REQUIRED

    def _check_scalar(self, value: Any, kind: type, where: str) -> Any:
        if not _type_ok(value, kind):
            raise ConfigError(f"{where}: expected {_TYPE_NAMES[kind]}, got {_describe(value)}")
        if kind is str and value.startswith("$"):
            raise ConfigError(f"{where}: {value!r} looks like an expression; configs hold plain values only")
        if kind in (int, float):
            if self.minimum is not None and value < self.minimum:
                raise ConfigError(f"{where}: must be >= {self.minimum}, got {value!r}")
            if self.maximum is not None and value > self.maximum:
                raise ConfigError(f"{where}: must be <= {self.maximum}, got {value!r}")
            if kind is float:
                value = float(value)
        return value

    def validate(self, value: Any, where: str) -> Any:
        if value is None:
            if self.nullable:
                return None
            raise ConfigError(f"{where}: must not be null")
        if self.kind is list:
            if not _type_ok(value, list):
                raise ConfigError(f"{where}: expected list, got {_describe(value)}")
            if self.length is not None and len(value) not in self.length:
                want = " or ".join(str(n) for n in self.length)
                raise ConfigError(f"{where}: expected {want} items, got {len(value)}")
            if self.item is not None:
                value = [self._check_scalar(v, self.item, f"{where}[{i}]") for i, v in enumerate(value)]
            else:
                value = list(value)
        elif self.kind is dict:
            if not _type_ok(value, dict):
                raise ConfigError(f"{where}: expected mapping, got {_describe(value)}")
            value = dict(value)
        else:
            value = self._check_scalar(value, self.kind, where)
        if self.choices is not None and value not in self.choices:
            close = difflib.get_close_matches(str(value), [str(c) for c in self.choices], n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(f"{where}: {value!r} is not one of {list(self.choices)}{hint}")
        return value


class Section:
    """A mapping of named fields, sub-sections and components."""

    def __init__(self, fields: Mapping[str, Field | Section | Component], *, required: bool = False, help: str = ""):
        self.fields = dict(fields)
        self.required = required
        self.help = help

    def validate(self, value: Any, where: str) -> dict[str, Any]:
        if value is None:
            value = {}
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where or 'config'}: expected mapping, got {_describe(value)}")
        out: dict[str, Any] = {}
        for key in value:
            if key not in self.fields:
                path = _join(where, key)
                close = difflib.get_close_matches(str(key), list(self.fields), n=1)
                hint = f" (did you mean {_join(where, close[0])!r}?)" if close else ""
                raise ConfigError(f"{path}: unknown key{hint}; known keys here: {', '.join(self.fields)}")
        for key, spec in self.fields.items():
            path = _join(where, key)
            if key in value:
                out[key] = spec.validate(value[key], path)
            elif isinstance(spec, Field):
                if spec.required:
                    raise ConfigError(f"{path}: missing required key")
                out[key] = copy.deepcopy(spec.default)
            elif spec.required:
                raise ConfigError(f"{path}: missing required section")
            elif isinstance(spec, Section):
                out[key] = spec.validate({}, path)
            elif spec.default is not None:
                out[key] = spec.validate(copy.deepcopy(spec.default), path)
            else:
                out[key] = None
        return out

    def child(self, key: str) -> Field | Section | Component | None:
        return self.fields.get(key)


class Component:
    """A registry-built component: ``{name: <registered name>, **kwargs}``.

    Keyword arguments are checked against the registered constructor's signature: unknown ones
    are errors, missing required ones are errors, and a value whose constructor default is a
    bool / int / float / str / sequence must have that type.

    Args:
        registry: where ``name`` is looked up.
        default: a default mapping (with ``name``) used when the key is absent; ``None`` leaves it
            absent (``null`` in the resolved config) unless ``required``.
        required: the section must be present.
        skip: constructor parameters the caller supplies (not settable from YAML).
    """

    def __init__(
        self,
        registry: Registry,
        *,
        default: Mapping[str, Any] | None = None,
        required: bool = False,
        skip: Iterable[str] = (),
        help: str = "",
    ) -> None:
        self.registry = registry
        self.default = dict(default) if default is not None else None
        self.required = required
        self.skip = frozenset(skip)
        self.help = help

    def parameters(self, name: str) -> tuple[dict[str, inspect.Parameter], bool]:
        """The settable parameters of ``name``'s constructor and whether it takes ``**kwargs``."""
        target = self.registry.get(name)
        try:
            sig = inspect.signature(target)
        except (TypeError, ValueError):  # some builtins have no signature: accept anything
            return {}, True
        params: dict[str, inspect.Parameter] = {}
        var_kw = False
        for p in sig.parameters.values():
            if p.kind is p.VAR_KEYWORD:
                var_kw = True
            elif p.kind is not p.VAR_POSITIONAL and p.name not in self.skip and p.name != "self":
                params[p.name] = p
        return params, var_kw

    def validate(self, value: Any, where: str) -> dict[str, Any] | None:
        if value is None:
            if self.required:
                raise ConfigError(f"{where}: missing required section")
            return None
        if isinstance(value, str):  # `loss: dice` is shorthand for `loss: {name: dice}`
            value = {"name": value}
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a mapping with a 'name', got {_describe(value)}")
        if "name" not in value:
            raise ConfigError(f"{where}.name: missing required key (one of: {', '.join(self.registry.names())})")
        name = value["name"]
        try:
            self.registry.get(name)
        except ValueError as err:
            raise ConfigError(f"{where}.name: {err}") from None
        params, var_kw = self.parameters(name)
        out: dict[str, Any] = {"name": name}
        for key, val in value.items():
            if key == "name":
                continue
            path = f"{where}.{key}"
            if key not in params and not var_kw:
                close = difflib.get_close_matches(str(key), list(params), n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise ConfigError(
                    f"{path}: {self.registry.kind} {name!r} has no argument {key!r}{hint}; "
                    f"it takes: {', '.join(params) or '(nothing)'}"
                )
            if isinstance(val, str) and val.startswith("$"):
                raise ConfigError(f"{path}: {val!r} looks like an expression; configs hold plain values only")
            if key in params:
                _check_against_default(val, params[key].default, path)
            out[key] = list(val) if isinstance(val, tuple) else val
        for pname, p in params.items():
            if p.default is inspect.Parameter.empty and pname not in out:
                raise ConfigError(f"{where}.{pname}: missing required key for {self.registry.kind} {name!r}")
        return out


def _check_against_default(value: Any, default: Any, where: str) -> None:
    if default is inspect.Parameter.empty or default is None or value is None:
        return
    if isinstance(default, (list, tuple)):
        # sequences often also accept a scalar broadcast to every dimension
        if not isinstance(value, (list, tuple, int, float)) or isinstance(value, bool):
            raise ConfigError(f"{where}: expected list or number, got {_describe(value)}")
        return
    # an int default accepts any number: many float settings default to a literal 0 (SGD's momentum)
    kind = {bool: bool, int: float, float: float, str: str}.get(type(default))
    if kind is not None and not _type_ok(value, kind):
        expected = "number" if type(default) is int else _TYPE_NAMES[kind]
        raise ConfigError(f"{where}: expected {expected}, got {_describe(value)}")


def _join(where: str, key: Any) -> str:
    return f"{where}.{key}" if where else str(key)


# --------------------------------------------------------------------------- schema registry

_SECTIONS: dict[str, Callable[[], Field | Section | Component]] = {}


def register_section(name: str) -> Callable[[Callable[[], Field | Section | Component]], Callable]:
    """Register a function returning the schema of one top-level section.

    Subsystems (data, training, inference) declare their own sections next to their code; the
    function is called lazily so importing ``pipeline.config`` stays cheap.
    """

    def add(fn: Callable[[], Field | Section | Component]) -> Callable:
        if name in _SECTIONS:
            raise ValueError(f"config section {name!r} is already registered")
        _SECTIONS[name] = fn
        return fn

    return add


def root_schema() -> Section:
    """The schema of a whole medseg config (imports the modules that declare sections)."""
    import pipeline.sections  # noqa: F401  (declares the built-in sections)

    return Section({name: make() for name, make in _SECTIONS.items()})


# --------------------------------------------------------------------------- loading


def load_yaml(path: str | os.PathLike) -> dict[str, Any]:
    """Read a YAML mapping with the safe loader.

    Raises:
        ConfigError: missing file, YAML syntax error, or a top level that is not a mapping.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"{path}: cannot read config ({err})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ConfigError(f"{path}: invalid YAML{where}: {problem}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections, got {type(data).__name__}")
    return data


def parse_overrides(items: Iterable[str]) -> list[tuple[str, Any]]:
    """Parse ``--set a.b=value`` strings; values are YAML scalars/lists (``3``, ``true``, ``[1, 2]``).

    Raises:
        ConfigError: an item without ``=`` or with an empty key.
    """
    out = []
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key or any(not part for part in key.split(".")):
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE with a dotted key, e.g. train.epochs=5")
        try:
            value = yaml.safe_load(text) if text.strip() else ""
        except yaml.YAMLError:
            value = text
        out.append((key, value))
    return out


def apply_overrides(raw: dict[str, Any], overrides: Iterable[tuple[str, Any]]) -> dict[str, Any]:
    """Return a copy of ``raw`` with each ``(dotted.key, value)`` set, creating sections as needed.

    Raises:
        ConfigError: when a key walks through a value that is not a mapping.
    """
    out = copy.deepcopy(raw)
    for key, value in overrides:
        node = out
        parts = key.split(".")
        for i, part in enumerate(parts[:-1]):
            nxt = node.get(part)
            if nxt is None:
                nxt = node[part] = {}
            elif isinstance(nxt, str) and i == 0:  # `loss: dice` shorthand
                nxt = node[part] = {"name": nxt}
            if not isinstance(nxt, dict):
                raise ConfigError(f"--set {key}: {'.'.join(parts[: i + 1])} is not a section")
            node = nxt
        node[parts[-1]] = value
    return out


def validate(raw: Mapping[str, Any], schema: Section | None = None, source: str = "config") -> dict[str, Any]:
    """Validate ``raw`` against ``schema`` (default: :func:`root_schema`) and fill defaults.

    Raises:
        ConfigError: prefixed with ``source``.
    """
    schema = schema if schema is not None else root_schema()
    try:
        return schema.validate(raw, "")
    except ConfigError as err:
        raise ConfigError(f"{source}: {err}") from None


def load_config(
    path: str | os.PathLike | None = None,
    overrides: Iterable[str] = (),
    schema: Section | None = None,
    base: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Load, override and validate a config.

    Args:
        path: YAML file; ``None`` starts from ``base`` (or an empty mapping).
        overrides: ``--set`` strings, applied in order.
        schema: defaults to :func:`root_schema`.
        base: a mapping to start from instead of a file (e.g. a checkpoint's resolved config).

    Returns:
        The resolved config as plain nested dicts and lists.

    Raises:
        ConfigError: naming the file (or ``--set``) and the key path.
    """
    raw = load_yaml(path) if path is not None else copy.deepcopy(dict(base or {}))
    parsed = parse_overrides(overrides)
    source = str(path) if path is not None else "config"
    raw = apply_overrides(raw, parsed)
    try:
        return validate(raw, schema, "")
    except ConfigError as err:
        text = str(err)[2:]  # drop the empty source prefix
        bad = text.split(":", 1)[0]  # every message starts with the key path
        for key, value in parsed:
            if bad == key or bad.startswith(key + ".") or key.startswith(bad + "."):
                raise ConfigError(f"--set {key}={value!r}: {text}") from None
        raise ConfigError(f"{source}: {text}") from None


def build_component(spec: Mapping[str, Any], registry: Registry, *args: Any, where: str = "", **extra: Any) -> Any:
    """Build a registered component from a resolved ``{name, **kwargs}`` mapping.

    ``args``/``extra`` are arguments the caller supplies (not from YAML). A ``TypeError`` or
    ``ValueError`` raised by the constructor becomes a ConfigError naming ``where``.
    """
    kwargs = {k: v for k, v in spec.items() if k != "name"}
    kwargs.update(extra)
    try:
        return registry.build(spec["name"], *args, **kwargs)
    except (TypeError, ValueError) as err:
        label = where or registry.kind
        raise ConfigError(f"{label} ({spec['name']}): {err}") from err


def dump_config(cfg: Mapping[str, Any], path: str | os.PathLike) -> None:
    """Write a resolved config as YAML (atomically: temporary file, then rename)."""
    atomic_write_text(path, yaml.safe_dump(_plain(cfg), sort_keys=False))


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value
