"""Typed configuration: build dataclasses from plain mappings, validated on load.

Every section of an experiment YAML is a dataclass. `parse_dataclass` walks the mapping, rejects
unknown keys (naming the dotted key and the allowed ones), checks each value against the field's
type annotation, and finally calls the dataclass's optional `validate()` so cross-field rules live
next to the fields they constrain. `apply_overrides` implements `--set a.b.c=value`.

This module has no knowledge of raylift's sections, so `preprocessing/` and `models/` can declare
their own config dataclasses without importing the CLI.
"""
from __future__ import annotations

import dataclasses
import re
import types
import typing
from typing import Any, Literal, Mapping, Union

import yaml


class ConfigError(ValueError):
    """A configuration value or key is wrong; the message names it and what was expected."""


def _join(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        return " | ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is not None:
        args = ", ".join(_type_name(a) for a in typing.get_args(tp))
        return f"{getattr(origin, '__name__', str(origin))}[{args}]"
    if tp is type(None):
        return "null"
    return getattr(tp, "__name__", str(tp))


def coerce(tp: Any, value: Any, where: str) -> Any:
    """Check `value` against annotation `tp` (converting lists/ints where lossless)."""
    if tp is Any:
        return value
    origin = typing.get_origin(tp)
    if origin is Literal:
        if value not in typing.get_args(tp):
            raise ConfigError(f"{where}: got {value!r}, expected one of {_type_name(tp)}")
        return value
    if origin in (Union, types.UnionType):
        errors = []
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return coerce(arg, value, where)
            except ConfigError as e:
                errors.append(str(e))
        if len(errors) == 1:  # Optional[X]: X's own error names the key inside (e.g. tune.search)
            raise ConfigError(errors[0])
        raise ConfigError(f"{where}: got {value!r}, expected {_type_name(tp)}")
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: got {value!r}, expected a list ({_type_name(tp)})")
        args = typing.get_args(tp)
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(args) != len(value):
                raise ConfigError(f"{where}: expected {len(args)} items, got {len(value)}")
            return tuple(coerce(a, v, f"{where}[{i}]") for i, (a, v) in enumerate(zip(args, value)))
        item = args[0] if args else Any
        items = [coerce(item, v, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: got {value!r}, expected a mapping")
        kt, vt = typing.get_args(tp) or (Any, Any)
        return {coerce(kt, k, where): coerce(vt, v, _join(where, str(k))) for k, v in value.items()}
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        return parse_dataclass(tp, value, where)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: got {value!r}, expected true or false")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: got {value!r}, expected an integer")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: got {value!r}, expected a number")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: got {value!r}, expected a string")
        return value
    if isinstance(tp, type) and not isinstance(value, tp):
        raise ConfigError(f"{where}: got {value!r}, expected {_type_name(tp)}")
    return value


def parse_dataclass(cls: type, data: Any, where: str = "") -> Any:
    """Build dataclass `cls` from mapping `data`; unknown keys and wrong types raise ConfigError.

    A field may carry `metadata={"parse": fn}` where `fn(value, where)` builds its value (used for
    polymorphic sections such as `model`, whose dataclass depends on `model.name`).
    """
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where or 'config'}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = [k for k in data if k not in fields]
    if unknown:
        raise ConfigError(
            f"unknown key '{_join(where, str(unknown[0]))}' (expected one of: {', '.join(fields)})"
        )
    kwargs = {}
    for name, value in data.items():
        field = fields[name]
        parser = field.metadata.get("parse")
        key = _join(where, name)
        kwargs[name] = parser(value, key) if parser else coerce(hints[name], value, key)
    for name, field in fields.items():
        if name in kwargs:
            continue
        parser = field.metadata.get("parse")
        if parser and field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
            kwargs[name] = parser({}, _join(where, name))
    missing = [
        n for n, f in fields.items()
        if n not in kwargs and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        raise ConfigError(f"missing required key '{_join(where, missing[0])}'")
    obj = cls(**kwargs)
    validate = getattr(obj, "validate", None)
    if callable(validate):
        try:
            validate()
        except ConfigError:
            raise
        except ValueError as e:
            raise ConfigError(f"{where or 'config'}: {e}") from None
    return obj


def to_dict(obj: Any) -> Any:
    """Dataclass tree -> plain YAML/JSON-ready data (tuples become lists)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {str(k): to_dict(v) for k, v in obj.items()}
    return obj


def parse_override(text: str) -> tuple[list[str], Any]:
    """'train.lr=1e-4' -> (['train', 'lr'], 0.0001). Values are parsed as YAML scalars/lists."""
    if "=" not in text:
        raise ConfigError(f"--set {text!r}: expected KEY=VALUE, e.g. train.epochs=5")
    key, raw = text.split("=", 1)
    parts = key.strip().split(".")
    if not all(parts):
        raise ConfigError(f"--set {text!r}: malformed key {key!r}")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as e:
        raise ConfigError(yaml_error_line(f"--set {text!r}", e, with_line=False)) from None
    # YAML 1.1 reads "1e-4" as a string; users mean a number.
    if isinstance(value, str):
        try:
            value = float(value) if any(c in value.lower() for c in ".e") and value.strip() else value
        except ValueError:
            pass
    return parts, value


def set_dotted(raw: dict, key: str, value: Any) -> None:
    """Set `raw[a][b][c] = value` for key 'a.b.c', creating sections; in place."""
    parts = key.split(".")
    node = raw
    for i, part in enumerate(parts[:-1]):
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"'{key}': '{'.'.join(parts[: i + 1])}' is not a section")
        node = child
    node[parts[-1]] = value


def apply_values(raw: dict, values: Mapping[str, Any]) -> dict:
    """Deep copy of `raw` with each dotted key of `values` set (typed values, e.g. from Tune)."""
    import copy

    out = copy.deepcopy(raw)
    for key, value in values.items():
        set_dotted(out, key, value)
    return out


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    """Apply dotted `KEY=VALUE` overrides to a raw config mapping (a deep copy is returned)."""
    values = {}
    for text in overrides:
        parts, value = parse_override(text)
        values[".".join(parts)] = value
    try:
        return apply_values(raw, values)
    except ConfigError as e:
        raise ConfigError(f"--set: {e}") from None


# PyYAML spells the standard tags `tag:yaml.org,2002:x`; a config writes them `!!x`.
_YAML_STANDARD_TAG = "tag:yaml.org,2002:"
_TAG_IN_PROBLEM = re.compile(r"constructor for the tag '([^']*)'")


def yaml_error_line(where: str, e: yaml.YAMLError, with_line: bool = True) -> str:
    """PyYAML's error as one line: `where`, the line number, and what is wrong. PyYAML's own
    message spans several lines (an excerpt of the file with a caret). A tag that needs a Python
    constructor (`!!python/object:...`, which `safe_load` refuses) is named, with the rule."""
    mark = getattr(e, "problem_mark", None)
    at = f"{where}, line {mark.line + 1}" if with_line and mark is not None else where
    problem = getattr(e, "problem", None) or str(e).splitlines()[0]
    tag = _TAG_IN_PROBLEM.search(problem)
    if tag:
        name = tag.group(1).replace(_YAML_STANDARD_TAG, "!!", 1)
        return (f"{at}: the tag {name} is not allowed: raylift configs are plain YAML (mappings, lists, "
                "strings, numbers, true/false, null)")
    context = getattr(e, "context", None)
    return f"{at}: not valid YAML: {f'{context}: ' if context else ''}{problem}"


def load_yaml(path: str) -> dict:
    """Read a YAML mapping; errors name the file. An empty file (or one of comments only) is
    refused: it is not a config, and running every default on it would write a whole pipeline."""
    from pathlib import Path

    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(yaml_error_line(path, e)) from None
    if data is None:
        raise ConfigError(f"{path}: no settings (the file is empty or all comments); expected a YAML mapping "
                          "of settings (key: value lines)")
    if not isinstance(data, dict):
        kind = {list: "a list", str: "a string", bool: "true/false", int: "a number", float: "a number"}
        raise ConfigError(f"{path}: expected a YAML mapping of settings (key: value lines) at the top level, "
                          f"got {kind.get(type(data), type(data).__name__)}")
    return data
