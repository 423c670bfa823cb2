"""Resolve a run config: preset or file, then `key=value` overrides, then validation.

    resolve_config("tiny", overrides=["phases.2.lr.lm_lora=1e-3", "model.projector.name=c-abstractor"])

Override keys are dotted paths into the config (`phases.N.` indexes a phase); values are YAML scalars or
lists (`model.peft.lm.target_modules=[q_proj,v_proj]` or `q_proj,v_proj`). A config file (YAML/JSON) is a
nested mapping of the same keys, optionally starting from `preset: NAME`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from tbi_train.config.presets import get_preset, list_presets
from tbi_train.config.schema import COMPONENT_GROUPS, PhaseConfig, RunConfig
from tbi_train.config.typed import ConfigError, from_dict, suggest, to_dict

__all__ = [
    "apply_overrides",
    "load_config",
    "parse_override",
    "resolve_config",
    "save_config",
    "validate_config",
]


def parse_override(text: str) -> tuple[list[str], Any]:
    """'a.b.0.c=v' -> (['a', 'b', '0', 'c'], parsed v); the value is parsed as YAML."""
    if "=" not in text:
        raise ConfigError(f"override '{text}' has no '='; write it as key=value, e.g. phases.0.steps=10.")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"override '{text}' has an empty key; write it as key=value.")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key.split("."), value


def _set(tree: Any, path: list[str], value: Any, full: str) -> None:
    node = tree
    for depth, part in enumerate(path):
        last = depth == len(path) - 1
        here = ".".join(path[: depth + 1])
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise ConfigError(
                    f"override '{full}': '{here}' indexes a list of {len(node)} entries; use 0..{len(node) - 1}."
                )
            if last:
                node[int(part)] = value
            else:
                node = node[int(part)]
        elif isinstance(node, dict):
            if part not in node and not (last or _is_free_mapping(path[:depth])):
                prefix = ".".join(path[:depth]) + "." if depth else ""
                raise ConfigError(f"unknown key '{here}'.{suggest(part, node, prefix)}")
            if last:
                node[part] = value
            else:
                node = node.setdefault(part, {})
        else:
            raise ConfigError(f"override '{full}': '{'.'.join(path[:depth])}' is a value, not a section.")


def _is_free_mapping(path: list[str]) -> bool:
    """Mapping fields whose keys are free (projector options)."""
    return bool(path) and path[-1] == "options"


def _merge(base: Any, update: Any) -> Any:
    """Deep-merge mappings; lists and scalars in `update` replace those in `base`."""
    if isinstance(base, dict) and isinstance(update, dict):
        out = dict(base)
        for k, v in update.items():
            out[k] = _merge(base[k], v) if k in base and k != "phases" else v
        return out
    return update


def apply_overrides(cfg: RunConfig, overrides: Sequence[str]) -> RunConfig:
    """A new config with each `key=value` applied in order, validated."""
    tree = to_dict(cfg)
    for text in overrides:
        path, value = parse_override(text)
        _set(tree, path, value, text)
    return validate_config(from_dict(RunConfig, tree))


def _read(path: Path) -> dict:
    try:
        text = path.read_text(encoding="utf-8")
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (OSError, json.JSONDecodeError, yaml.YAMLError) as exc:
        raise ConfigError(f"cannot read config file {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path}: expected a mapping of keys at the top level.")
    return data


def load_config(path: str | Path) -> RunConfig:
    """A config file (YAML/JSON, optionally `preset: NAME` plus overriding keys) as a validated RunConfig."""
    path = Path(path)
    data = _read(path)
    preset = data.pop("preset", None)
    base = to_dict(get_preset(preset)) if preset else to_dict(RunConfig())
    if "phases" in data and isinstance(data["phases"], list):
        default = to_dict(PhaseConfig())
        data["phases"] = [_merge(default, p) if isinstance(p, dict) else p for p in data["phases"]]
    try:
        return validate_config(from_dict(RunConfig, _merge(base, data)))
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from exc


def save_config(cfg: RunConfig, path: str | Path) -> Path:
    """Write the resolved config as JSON (temp file, then rename); `load_config` reads it back."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(to_dict(cfg), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    tmp.replace(path)
    return path


def resolve_config(
    source: str | Path | None = None,
    preset: str | None = None,
    overrides: Sequence[str] = (),
    seed: int | None = None,
) -> RunConfig:
    """Preset name or config file (or `preset` alone), then `overrides`, then `seed`; validated and frozen."""
    if source is not None and Path(source).suffix in (".yaml", ".yml", ".json"):
        if not Path(source).is_file():
            raise ConfigError(
                f"config file {source} does not exist; pass a preset ({', '.join(list_presets())})."
            )
        cfg = load_config(source)
        if preset is not None:
            raise ConfigError(
                f"both a config file ({source}) and --preset {preset}; put `preset: {preset}` in the file."
            )
    else:
        name = str(source) if source is not None else preset
        if name is None:
            raise ConfigError(f"no config given; pass a preset ({', '.join(list_presets())}) or a YAML file.")
        if source is not None and preset is not None and preset != name:
            raise ConfigError(f"two presets given ('{source}' and --preset {preset}); pass one.")
        cfg = get_preset(name)
    if seed is not None:
        overrides = [*overrides, f"seed={seed}"]
    return apply_overrides(cfg, overrides) if overrides else validate_config(cfg)


def validate_config(cfg: RunConfig) -> RunConfig:
    """Check cross-field rules (names, required rates, step counts); return `cfg` unchanged when valid."""
    peft = cfg.model.peft
    for i, phase in enumerate(cfg.phases):
        key = f"phases.{i}"
        if not phase.trainable:
            raise ConfigError(
                f"{key}.trainable is empty; name at least one of {', '.join(COMPONENT_GROUPS)}."
            )
        for group in phase.trainable:
            if group not in COMPONENT_GROUPS:
                raise ConfigError(
                    f"{key}.trainable: unknown group '{group}'.{suggest(group, COMPONENT_GROUPS)}"
                )
            if getattr(phase.lr, group) is None:
                raise ConfigError(
                    f"{key} trains '{group}' but {key}.lr.{group} is not set; give it a learning rate."
                )
            if group.endswith("_lora") and not getattr(peft, group[: -len("_lora")]).enabled:
                comp = group[: -len("_lora")]
                raise ConfigError(
                    f"{key} trains '{group}' but model.peft.{comp}.enabled is false; enable the adapter."
                )
        if (phase.steps is None) == (phase.epochs is None):
            raise ConfigError(f"{key}: set exactly one of {key}.steps and {key}.epochs.")
        for name in ("steps", "epochs", "batch_size", "grad_accum"):
            value = getattr(phase, name)
            if value is not None and value <= 0:
                raise ConfigError(f"{key}.{name} must be positive, got {value}.")
        if phase.warmup_steps < 0:
            raise ConfigError(f"{key}.warmup_steps must be >= 0, got {phase.warmup_steps}.")
    names = [p.name for p in cfg.phases]
    if len(set(names)) != len(names):
        raise ConfigError(f"phase names must be unique (they name checkpoint folders), got {names}.")
    _validate_projector(cfg.model.projector.name)
    if not 0.0 <= cfg.data.max_bad_fraction <= 1.0:
        raise ConfigError(f"data.max_bad_fraction must be in [0, 1], got {cfg.data.max_bad_fraction}.")
    return cfg


def _validate_projector(name: str) -> None:
    from tbi_projectors import list_projectors

    known = list_projectors()
    if name not in known:
        raise ConfigError(f"model.projector.name: unknown projector '{name}'.{suggest(name, known)}")
