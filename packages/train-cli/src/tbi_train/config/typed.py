"""Dict <-> typed config conversion with key-naming, suggestion-giving errors, and the stable hash.

`to_dict` turns a frozen config into plain JSON-able data; `from_dict` builds the typed config back,
coercing strings from the command line (`"1e-4"`, `"true"`, `"q_proj,v_proj"`) to the field's type and
rejecting unknown keys with the nearest valid one (difflib).
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import types
import typing
from typing import Any

from tbi_train.errors import TrainError

__all__ = ["ConfigError", "config_hash", "from_dict", "suggest", "to_dict"]


class ConfigError(TrainError):
    """A config key, value or combination is invalid; the message names the key and the fix."""


def suggest(word: str, choices: typing.Iterable[str], prefix: str = "") -> str:
    """' Did you mean PREFIX+X?' for the closest choice, or the list of valid choices when none is close."""
    choices = sorted(choices)
    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.5)
    if close:
        return f" Did you mean '{prefix}{close[0]}'?"
    return f" Valid choices: {', '.join(prefix + c for c in choices)}."


def _is_mapping_field(tp: Any) -> bool:
    """tuple[tuple[str, Any], ...]: a frozen mapping stored as sorted pairs (e.g. projector options)."""
    if typing.get_origin(tp) is not tuple:
        return False
    args = typing.get_args(tp)
    return len(args) == 2 and args[1] is Ellipsis and typing.get_origin(args[0]) is tuple


def to_dict(cfg: Any) -> Any:
    """Plain data of a config: dataclasses -> dicts, tuples -> lists, pair-tuples of mapping fields -> dicts."""
    if dataclasses.is_dataclass(cfg):
        hints = typing.get_type_hints(type(cfg))
        out = {}
        for f in dataclasses.fields(cfg):
            value = getattr(cfg, f.name)
            if _is_mapping_field(hints[f.name]):
                out[f.name] = {k: to_dict(v) for k, v in value}
            else:
                out[f.name] = to_dict(value)
        return out
    if isinstance(cfg, tuple | list):
        return [to_dict(v) for v in cfg]
    return cfg


def config_hash(cfg: Any, length: int = 16) -> str:
    """Stable hex digest of a config: sha256 of its canonical JSON (sorted keys), independent of the process."""
    blob = json.dumps(to_dict(cfg), sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:length]


def from_dict(cls: type, data: Any, key: str = "") -> Any:
    """Build dataclass `cls` from `data` (a dict; missing keys take defaults), validating every key and type."""
    where = key or "config"
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping of fields, got {data!r}.")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for name, value in data.items():
        full = f"{key}.{name}" if key else str(name)
        if name not in names:
            raise ConfigError(f"unknown key '{full}'.{suggest(str(name), names, f'{key}.' if key else '')}")
        kwargs[name] = _coerce(value, hints[name], full)
    return cls(**kwargs)


def _coerce(value: Any, tp: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, key)
    if origin in (typing.Union, types.UnionType):
        is_none = value is None or (isinstance(value, str) and value.lower() in ("none", "null"))
        if is_none and type(None) in args:
            return None
        non_none = [a for a in args if a is not type(None)]
        errors = []
        for option in non_none:
            try:
                return _coerce(value, option, key)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{key}: {value!r} fits none of {tp}.")
    if origin is typing.Literal:
        if value in args:
            return value
        raise ConfigError(f"{key}: invalid value {value!r}.{suggest(str(value), [str(a) for a in args])}")
    if _is_mapping_field(tp):
        if isinstance(value, dict):
            return tuple(sorted((str(k), _freeze(v)) for k, v in value.items()))
        raise ConfigError(f"{key}: expected a mapping like {{name: value}}, got {value!r}.")
    if origin is tuple:
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{key}: expected a list, got {value!r}.")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0], f"{key}.{i}") for i, v in enumerate(value))
        if len(value) != len(args):
            raise ConfigError(f"{key}: expected {len(args)} values, got {len(value)} ({value!r}).")
        return tuple(_coerce(v, a, f"{key}.{i}") for i, (v, a) in enumerate(zip(value, args)))
    if tp is Any:
        return _freeze(value)
    return _coerce_scalar(value, tp, key)


def _coerce_scalar(value: Any, tp: Any, key: str) -> Any:
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
            return value.lower() in ("true", "yes", "1")
        raise ConfigError(f"{key}: expected true or false, got {value!r}.")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                pass
        raise ConfigError(f"{key}: expected an integer, got {value!r}.")
    if tp is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{key}: expected a number, got {value!r}.")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{key}: expected a string, got {value!r}.")
    raise ConfigError(f"{key}: unsupported field type {tp}.")


def _freeze(value: Any) -> Any:
    """Lists -> tuples (recursively) so free-form option values stay hashable."""
    if isinstance(value, list | tuple):
        return tuple(_freeze(v) for v in value)
    if isinstance(value, dict):
        return tuple(sorted((str(k), _freeze(v)) for k, v in value.items()))
    return value
