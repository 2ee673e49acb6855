"""Dataclasses <-> nested dicts (YAML) <-> CLI flags, with strict checking by dotted key.

Generic machinery behind distil.config: unknown keys, wrong types and out-of-range values are refused with one
line naming the key, the value and what would be valid.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import re
import types
import typing
from typing import Any, Literal, Union, get_args, get_origin

import yaml

from distil.errors import DistilError


class ConfigError(DistilError):
    """A configuration value is invalid; `key` is the dotted path once known."""

    def __init__(self, key: str, value: Any, valid: str):
        self.key, self.value, self.valid = key, value, valid
        super().__init__(f"config key '{key}': got {value!r}; expected {valid}")


def _type_name(tp: Any) -> str:
    origin = get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join("null" if a is type(None) else _type_name(a) for a in get_args(tp))
    if origin is list:
        return f"a list of {_type_name(get_args(tp)[0])}"
    return {int: "an int", float: "a number (e.g. 0.1 or 2e-5)", str: "a string", bool: "true/false"}.get(
        tp, getattr(tp, "__name__", str(tp))
    )


# Decimal or scientific notation: YAML 1.1 (PyYAML) reads `2e-5` and `1E+3` as strings, not numbers.
_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")


def _as_float(value: Any) -> float | None:
    """``value`` as a finite float (ints widen; numeric strings such as '2e-5' parse), else None."""
    if isinstance(value, str) and _NUMBER.fullmatch(value.strip()):
        value = float(value)
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against the annotation ``tp``; return it.

    Ints widen to floats, and a float field also takes a string in decimal or scientific notation ('2e-5', which
    YAML 1.1 leaves a string); nan and inf are refused. Int fields stay strict ('1e3' is refused). A string field
    takes an int as its digits (`labels: [0, 1]` names int labels).
    """
    origin = get_origin(tp)
    if origin in (Union, types.UnionType):
        return _coerce_union(value, tp, key)
    if origin is Literal:
        if value in get_args(tp):
            return value
        raise ConfigError(key, value, _type_name(tp))
    if origin is list:
        return _coerce_list(value, tp, key)
    if tp is dict or origin is dict:  # a free mapping (tune.space), checked by its owner
        if isinstance(value, dict):
            return value
        raise ConfigError(key, value, "a mapping of keys")
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, prefix=key)
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        number = _as_float(value)
        if number is not None:
            return number
    elif tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, int) and not isinstance(value, bool):
            return str(value)
    raise ConfigError(key, value, _type_name(tp))


def _coerce_union(value: Any, tp: Any, key: str) -> Any:
    """The first arm of ``tp`` that takes ``value``; when none does, `X | None` keeps X's own message."""
    args = get_args(tp)
    if value is None and type(None) in args:
        return None
    errors = []
    for arg in args:
        if arg is type(None):
            continue
        try:
            return _coerce(value, arg, key)
        except ConfigError as e:
            errors.append(e)
    if len(errors) == 1 and type(None) in args:
        raise ConfigError(errors[0].key, errors[0].value, f"null or {errors[0].valid}")
    raise ConfigError(key, value, _type_name(tp))


def _coerce_list(value: Any, tp: Any, key: str) -> list:
    item = get_args(tp)[0]
    if not isinstance(value, list):
        raise ConfigError(key, value, _type_name(tp))
    if dataclasses.is_dataclass(item):
        return [_coerce(v, item, f"{key}[{i}]") for i, v in enumerate(value)]
    if item is str and any(v is None or isinstance(v, bool) for v in value):
        # YAML 1.1 reads yes/no/on/off/true/false as booleans and null/NULL/~ as null: names must be quoted
        valid = "a list of strings (quote the names YAML reads as true/false or null: 'yes', 'no', 'NULL')"
        raise ConfigError(key, value, valid)
    try:
        return [_coerce(v, item, key) for v in value]
    except ConfigError:
        raise ConfigError(key, value, _type_name(tp)) from None


def from_dict(cls: type, data: Any, prefix: str = "") -> Any:
    """Build dataclass ``cls`` from a nested dict, refusing unknown keys and wrong types by dotted key."""
    where = prefix or "top level"
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise DistilError(f"config section '{where}': expected a mapping of keys, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        key = f"{prefix}.{unknown[0]}" if prefix else unknown[0]
        raise DistilError(f"config key '{key}' is unknown; valid keys in '{where}': {', '.join(fields)}")
    kwargs = {}
    for name, value in data.items():
        key = f"{prefix}.{name}" if prefix else name
        kwargs[name] = _coerce(value, hints[name], key)
    try:
        return cls(**kwargs)
    except ConfigError as e:
        key = f"{prefix}.{e.key}" if prefix else e.key
        raise ConfigError(key, e.value, e.valid) from None


def to_dict(obj: Any) -> dict:
    return dataclasses.asdict(obj)


def merge(base: dict, override: dict) -> dict:
    """Deep-merge ``override`` into a copy of ``base``."""
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


@functools.cache  # reading the field docstrings parses each class's source: once per process
def flag_specs(cls: type, prefix: str = "") -> tuple[tuple[str, Any, str], ...]:
    """(dotted key, annotation, help) for every leaf field: the CLI's flags are generated from these."""
    import ast
    import inspect

    docs: dict[str, str] = {}
    try:  # field docstrings (the string literal after each field) become --help text, as in litgpt
        body = ast.parse(inspect.getsource(cls)).body[0].body
        for node, nxt in zip(body, body[1:]):
            if isinstance(node, ast.AnnAssign) and isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant):
                docs[node.target.id] = " ".join(str(nxt.value.value).split())
    except (OSError, TypeError, IndexError):
        pass
    hints = typing.get_type_hints(cls)
    specs = []
    for f in dataclasses.fields(cls):
        key = f"{prefix}.{f.name}" if prefix else f.name
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            specs.extend(flag_specs(tp, key))
        else:
            specs.append((key, tp, docs.get(f.name, "")))
    return tuple(specs)


def parse_flag_value(key: str, raw: str, tp: Any) -> Any:
    """A CLI string as the YAML value it stands for (`3`, `0.5`, `true`, `[0, 2]`, `null`)."""
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError:
        value = raw
    if tp is str or (
        get_origin(tp) in (Union, types.UnionType) and str in get_args(tp) and not isinstance(value, list)
    ):
        if value is not None and not isinstance(value, str):
            value = raw
    return value


def set_dotted(data: dict, key: str, value: Any) -> None:
    node = data
    parts = key.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value
