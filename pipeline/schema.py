"""The building blocks of config schemas: :class:`Field`, :class:`Section`, :class:`Component`.

A schema validates a plain YAML mapping and fills in defaults. Every problem is a
:class:`~pipeline.errors.ConfigError` that carries the dotted key path as ``err.key``; the loader
(:mod:`pipeline.config`) adds the source (file and line, or the ``--set``) as attributes.

Components are registry-built objects (``{name: <registered name>, **kwargs}``) whose keyword
arguments are checked against the registered constructor's signature. A component whose
constructor takes other components (a compound loss and its terms) declares them with
``nested``, so they are validated at load time and built before the outer one; the component
module itself never imports the config machinery.

Example:
    >>> from pipeline.registry import Registry
    >>> from pipeline.errors import ConfigError
    >>> schema = Section({"epochs": Field(int, 10, minimum=1)})
    >>> schema.validate({}, "train")
    {'epochs': 10}
    >>> try:
    ...     schema.validate({"epochs": 0}, "train")
    ... except ConfigError as err:
    ...     print(err.key, "|", err.detail)
    train.epochs | must be >= 1, got 0
"""

from __future__ import annotations

import copy
import difflib
import inspect
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from pipeline.errors import ConfigError
from pipeline.registry import Registry

__all__ = ["Field", "Section", "Component", "REQUIRED", "join_key"]


class _Required:
    def __repr__(self) -> str:
        return "REQUIRED"


REQUIRED: Any = _Required()

_TYPE_NAMES = {int: "int", float: "float", bool: "bool", str: "str", list: "list", dict: "mapping"}


def join_key(where: str, key: Any) -> str:
    """``"a.b"`` from ``"a"`` and ``"b"``; the key alone at the top level."""
    return f"{where}.{key}" if where else str(key)


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


def _no_expression(value: Any, where: str) -> None:
    if isinstance(value, str) and value.startswith("$"):
        raise ConfigError(f"{value!r} looks like an expression; configs hold plain values only", key=where)


class Field:
    """One plain setting.

    Args:
        kind: ``int``, ``float``, ``bool``, ``str``, ``list`` or ``dict``.
        default: value when the key is absent; ``REQUIRED`` (the default) makes it mandatory.
        item: element type for ``list`` fields.
        length: exact list length, or a tuple of allowed lengths.
        choices: allowed values (a callable returning them is read at validation time, so a
            registry's names can be the choices).
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
        self._choices = choices if callable(choices) or choices is None else tuple(choices)
        self.minimum = minimum
        self.maximum = maximum
        self.nullable = nullable
        self.help = help

    @property
    def required(self) -> bool:
        return self.default is REQUIRED

    @property
    def choices(self) -> tuple[Any, ...] | None:
        return tuple(self._choices()) if callable(self._choices) else self._choices

    def _check_scalar(self, value: Any, kind: type, where: str) -> Any:
        if not _type_ok(value, kind):
            raise ConfigError(f"expected {_TYPE_NAMES[kind]}, got {_describe(value)}", key=where)
        _no_expression(value, where)
        if kind in (int, float):
            if self.minimum is not None and value < self.minimum:
                raise ConfigError(f"must be >= {self.minimum}, got {value!r}", key=where)
            if self.maximum is not None and value > self.maximum:
                raise ConfigError(f"must be <= {self.maximum}, got {value!r}", key=where)
            if kind is float:
                value = float(value)
        return value

    def _yaml_word(self, value: Any) -> Any:
        """YAML 1.1 reads ``off``/``no`` as false and ``on``/``yes`` as true: for a string field
        whose choices hold such a word, the boolean means that word (``--set train.amp=off``).

        Example:
            >>> Field(str, "auto", choices=("auto", "off")).validate(False, "train.amp")
            'off'
        """
        if self.kind is not str or not isinstance(value, bool) or self.choices is None:
            return value
        words = ("on", "yes", "true") if value else ("off", "no", "false")
        return next((w for w in words if w in self.choices), value)

    def validate(self, value: Any, where: str) -> Any:
        if value is None:
            if self.nullable:
                return None
            raise ConfigError("must not be null", key=where)
        if self.kind is list:
            if not _type_ok(value, list):
                raise ConfigError(f"expected list, got {_describe(value)}", key=where)
            if self.length is not None and len(value) not in self.length:
                want = " or ".join(str(n) for n in self.length)
                raise ConfigError(f"expected {want} items, got {len(value)}", key=where)
            if self.item is not None:
                value = [self._check_scalar(v, self.item, f"{where}[{i}]") for i, v in enumerate(value)]
            else:
                value = list(value)
        elif self.kind is dict:
            if not _type_ok(value, dict):
                raise ConfigError(f"expected mapping, got {_describe(value)}", key=where)
            value = dict(value)
        else:
            value = self._check_scalar(self._yaml_word(value), self.kind, where)
        choices = self.choices
        if choices is not None and value not in choices:
            close = difflib.get_close_matches(str(value), [str(c) for c in choices], n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(f"{value!r} is not one of {list(choices)}{hint}", key=where)
        return value

    def fill(self) -> Any:
        """The default, for an absent key (``REQUIRED`` raises in :meth:`Section.validate`)."""
        return copy.deepcopy(self.default)


class Section:
    """A mapping of named fields, sub-sections and components.

    Args:
        fields: the keys of the section and their schema.
        required: the section must be present.
        check: called with ``(validated section, key path)`` after every field passed, for rules
            that relate fields of this section; raises :class:`ConfigError`.
        help: one line for docs.
    """

    def __init__(
        self,
        fields: Mapping[str, Field | Section | Component],
        *,
        required: bool = False,
        check: Callable[[dict[str, Any], str], None] | None = None,
        help: str = "",
    ):
        self.fields = dict(fields)
        self.required = required
        self.check = check
        self.help = help

    def validate(self, value: Any, where: str) -> dict[str, Any]:
        if value is None:
            value = {}
        if not isinstance(value, Mapping):
            raise ConfigError(f"expected mapping, got {_describe(value)}", key=where or "config")
        out: dict[str, Any] = {}
        for key in value:
            if key not in self.fields:
                close = difflib.get_close_matches(str(key), list(self.fields), n=1)
                hint = f" (did you mean {join_key(where, close[0])!r}?)" if close else ""
                raise ConfigError(
                    f"unknown key{hint}; known keys here: {', '.join(self.fields)}", key=join_key(where, key)
                )
        for key, spec in self.fields.items():
            path = join_key(where, key)
            if key in value:
                out[key] = spec.validate(value[key], path)
            elif isinstance(spec, Field):
                if spec.required:
                    raise ConfigError("missing required key", key=path)
                out[key] = spec.fill()
            elif spec.required:
                raise ConfigError("missing required section", key=path)
            elif isinstance(spec, Section):
                out[key] = spec.validate({}, path)
            else:
                out[key] = spec.validate(spec.fill(), path)
        if self.check is not None:
            self.check(out, where)
        return out

    def child(self, key: str) -> Field | Section | Component | None:
        return self.fields.get(key)

    def fill(self) -> dict[str, Any]:
        return {}


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
        nested: per registered name, the constructor arguments that are themselves components
            (``{"compound": {"region": Component(LOSSES), ...}}``); they are validated here and
            built first by :func:`pipeline.config.build_component`.
        help: one line for docs.
    """

    def __init__(
        self,
        registry: Registry,
        *,
        default: Mapping[str, Any] | None = None,
        required: bool = False,
        skip: Iterable[str] = (),
        nested: Mapping[str, Mapping[str, Component]] | None = None,
        help: str = "",
    ) -> None:
        self.registry = registry
        self.default = dict(default) if default is not None else None
        self.required = required
        self.skip = frozenset(skip)
        self.nested = {name: dict(args) for name, args in (nested or {}).items()}
        self.help = help

    def fill(self) -> dict[str, Any] | None:
        return copy.deepcopy(self.default)

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

    def nested_of(self, name: str) -> dict[str, Component]:
        """The nested component arguments declared for ``name``."""
        return self.nested.get(name, {})

    def validate(self, value: Any, where: str) -> dict[str, Any] | None:
        if value is None:
            if self.required:
                raise ConfigError("missing required section", key=where)
            return None
        if isinstance(value, str):  # `loss: dice` is shorthand for `loss: {name: dice}`
            value = {"name": value}
        if not isinstance(value, Mapping):
            raise ConfigError(f"expected a mapping with a 'name', got {_describe(value)}", key=where)
        if "name" not in value:
            raise ConfigError(
                f"missing required key (one of: {', '.join(self.registry.names())})", key=join_key(where, "name")
            )
        name = value["name"]
        try:
            self.registry.get(name)
        except ValueError as err:
            raise ConfigError(str(err), key=join_key(where, "name")) from None
        params, var_kw = self.parameters(name)
        nested = self.nested_of(name)
        out: dict[str, Any] = {"name": name}
        for key, val in value.items():
            if key == "name":
                continue
            path = join_key(where, key)
            if key not in params and not var_kw:
                close = difflib.get_close_matches(str(key), list(params), n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise ConfigError(
                    f"{self.registry.kind} {name!r} has no argument {key!r}{hint}; "
                    f"it takes: {', '.join(params) or '(nothing)'}",
                    key=path,
                )
            _no_expression(val, path)
            if key in nested:
                out[key] = nested[key].validate(val, path)
                continue
            if key in params:
                _check_against_default(val, params[key].default, path)
            out[key] = list(val) if isinstance(val, tuple) else val
        for pname, p in params.items():
            if p.default is inspect.Parameter.empty and pname not in out:
                raise ConfigError(f"missing required key for {self.registry.kind} {name!r}", key=join_key(where, pname))
        return out


def _check_against_default(value: Any, default: Any, where: str) -> None:
    if default is inspect.Parameter.empty or default is None or value is None:
        return
    if isinstance(default, (list, tuple)):
        # sequences often also accept a scalar broadcast to every dimension
        if not isinstance(value, (list, tuple, int, float)) or isinstance(value, bool):
            raise ConfigError(f"expected list or number, got {_describe(value)}", key=where)
        return
    # an int default accepts any number: many float settings default to a literal 0 (SGD's momentum)
    kind = {bool: bool, int: float, float: float, str: str}.get(type(default))
    if kind is not None and not _type_ok(value, kind):
        expected = "number" if type(default) is int else _TYPE_NAMES[kind]
        raise ConfigError(f"expected {expected}, got {_describe(value)}", key=where)
