"""Typed merge configuration (defaults from seed 000's ``dare_ties_config``) and its YAML/CLI spellings."""

from __future__ import annotations

import fnmatch
import math
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from tbi_merging.core import COMPAT_MODES, METHODS, SIGN_METHODS
from tbi_merging.errors import MergeError

UNSHARED_POLICIES = ("error", "take")


@dataclass(frozen=True)
class ModelSpec:
    """One fine-tuned model (a full Hugging Face checkpoint or a peft LoRA adapter directory)."""

    name: str
    """Short name (``en``, ``ko``): used in reports, per-component weights and the DARE seed."""
    path: Path
    """Checkpoint directory (``config.json`` + safetensors) or adapter directory (``adapter_config.json``)."""
    weight: float = 1.0
    """λ_i, the model's weight (seed 000: λ_en 0.6, λ_ko 0.4)."""


@dataclass(frozen=True)
class ComponentRule:
    """Options for the tensors whose names match ``pattern`` (first matching rule wins).

    A VLM's vision tower, projector and language model tolerate pruning differently, so density,
    drop rate, weights or the method can differ per component.
    """

    pattern: str
    """fnmatch glob on the tensor name, e.g. ``vision_tower.*`` or ``*.mlp.*``."""
    method: str | None = None
    """Merge method for these tensors; None = the global method. ``base`` keeps the base's tensor."""
    density: float | None = None
    """TIES kept fraction for these tensors; None = the global value."""
    drop_rate: float | None = None
    """DARE drop rate for these tensors; None = the global value."""
    weights: dict[str, float] | None = None
    """Per-model weights for these tensors (by model name); None = the models' weights."""

    def matches(self, name: str) -> bool:
        return fnmatch.fnmatchcase(name, self.pattern)


@dataclass
class MergeConfig:
    """A whole merge: inputs, method and options, unshared-tensor policy, output."""

    base: Path
    """Base checkpoint directory (θ₀); the output is sharded like it."""
    models: list[ModelSpec]
    """Fine-tuned models (full checkpoints or LoRA adapters of ``base``)."""
    out: Path
    """Output directory; refused if it exists unless ``overwrite``."""
    method: str = "dare_ties"
    """linear | task_arithmetic | ties | dare_linear | dare_ties (seed 000: DARE+TIES)."""
    drop_rate: float = 0.9
    """DARE drop probability p (seed 000 ``dare_drop_rate`` 0.9); mergekit's ``density`` is 1 − p."""
    rescale: bool = True
    """DARE rescale of the kept deltas (seed 000 ``dare_rescale``)."""
    sign: str = "mass"
    """TIES sign election: ``mass`` (sign of the summed deltas; seed 000) or ``count`` (sign majority)."""
    density: float | None = None
    """TIES kept fraction (top-|δ| per tensor and model); None = 0.2 for ``ties``, 1.0 for ``dare_ties``."""
    normalize: bool | None = True
    """Divide by the summed weights of the contributing models (seed 000); None = the method's default."""
    scale: float = 1.0
    """λ, global factor on the merged task vector."""
    compat: str = "paper"
    """Semantics: ``paper`` (default), ``mergekit`` or ``peft`` (README table)."""
    seed: int = 0
    """Seed of the DARE masks (hashed with tensor and model names)."""
    components: list[ComponentRule] = field(default_factory=list)
    """Per-component overrides by tensor-name pattern (first match wins)."""
    unshared: str = "error"
    """Tensors missing from a model or with a different shape: ``error`` or ``take`` (from ``take_from``)."""
    take_from: str | None = None
    """Model name whose tensor is used for unshared tensors when ``unshared == "take"``."""
    align_vocab: str | None = None
    """Model name whose tokenizer defines the output vocabulary; rows of vocabulary tensors are then
    matched by token string (shared tokens merged row by row, new tokens taken from that model)."""
    vocab_patterns: tuple[str, ...] = ("*embed_tokens.weight", "*lm_head.weight", "*wte.weight")
    """Globs of the tensors indexed by token id (aligned when ``align_vocab`` is set)."""
    config_from: str | None = None
    """Model whose config/tokenizer files are copied; None = the base (or ``align_vocab``'s model)."""
    check_finite: bool = True
    """Refuse NaN/Inf in any input tensor."""
    allow_dtype_mismatch: bool = False
    """Accept a model storing a tensor in another float dtype than the base (merged in float32)."""
    overwrite: bool = False
    """Replace an existing output directory (only once the new one is complete)."""
    adapter_rank: int | None = None
    """When every model is a LoRA adapter: write one merged adapter of this rank (truncated SVD of the
    merged ΔW) instead of a full model."""
    report_name: str = "merge_report.json"
    """File name of the merge report written inside the output directory."""
    threads: int | None = None
    """Threads splitting each chunk of the merge; None = ``OMP_NUM_THREADS`` when set, else the cores this
    process may use. The result does not depend on it."""

    def __post_init__(self) -> None:
        self.base = Path(self.base)
        self.out = Path(self.out)
        self.validate()

    def validate(self) -> None:
        """Raise :class:`MergeError` naming the first bad option and how to fix it."""
        if self.method not in METHODS:
            raise MergeError(f"method {self.method!r} is unknown; choose one of {', '.join(METHODS)}")
        if self.compat not in COMPAT_MODES:
            raise MergeError(f"compat {self.compat!r} is unknown; choose one of {', '.join(COMPAT_MODES)}")
        if self.sign not in SIGN_METHODS:
            raise MergeError(f"sign election {self.sign!r} is unknown; choose 'mass' or 'count'")
        if not 0.0 <= self.drop_rate < 1.0:
            raise MergeError(f"DARE drop rate {self.drop_rate} must be in [0, 1), e.g. --dare 0.9")
        if self.density is not None and not 0.0 <= self.density <= 1.0:
            raise MergeError(f"density {self.density} must be in [0, 1] (the kept fraction)")
        if not self.models:
            raise MergeError("no models to merge; give at least one --model NAME=PATH:WEIGHT")
        names = [m.name for m in self.models]
        if len(set(names)) != len(names):
            raise MergeError(f"model names must be unique, got {names}")
        for m in self.models:
            if not math.isfinite(m.weight):
                raise MergeError(f"weight of model {m.name!r} is {m.weight}; give a finite number")
        if self.unshared not in UNSHARED_POLICIES:
            raise MergeError(f"unshared policy {self.unshared!r} is unknown; choose 'error' or 'take'")
        if self.take_from is not None and self.unshared != "take":
            raise MergeError(
                f"--take-from {self.take_from} only applies with --unshared take; add it or drop --take-from"
            )
        if self.unshared == "take" and self.take_from not in names:
            raise MergeError(f"--unshared take needs --take-from one of {names}, got {self.take_from!r}")
        for opt in ("align_vocab", "config_from"):
            value = getattr(self, opt)
            if value is not None and value not in names:
                raise MergeError(f"{opt} {value!r} is not a model name; choose one of {names}")
        for rule in self.components:
            if rule.method is not None and rule.method not in (*METHODS, "base"):
                raise MergeError(f"component {rule.pattern!r}: method {rule.method!r} is unknown")
            if rule.weights and set(rule.weights) - set(names):
                raise MergeError(
                    f"component {rule.pattern!r}: weights for unknown models {set(rule.weights) - set(names)}"
                )
        if self.threads is not None and (not isinstance(self.threads, int) or self.threads < 1):
            raise MergeError(f"threads {self.threads!r} must be a positive integer, e.g. --threads 2")
        if self.adapter_rank is not None and self.adapter_rank < 1:
            raise MergeError(f"adapter rank {self.adapter_rank} must be a positive integer")

    def rule_for(self, tensor_name: str) -> ComponentRule | None:
        return next((r for r in self.components if r.matches(tensor_name)), None)

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "config") -> MergeConfig:
        """Build from the YAML form (keys as the fields; ``dare`` = ``drop_rate``, ``models`` a list of
        ``{name, path, weight}`` or ``NAME=PATH:WEIGHT`` strings, ``components`` a list of rule dicts)."""
        data = dict(data)
        if "dare" in data:
            data["drop_rate"] = data.pop("dare")
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise MergeError(f"{source}: unknown key(s) {sorted(unknown)}; valid keys: {sorted(known)}")
        for key in ("base", "models", "out"):
            if data.get(key) in (None, [], ""):
                raise MergeError(f"{source}: '{key}' is required")
        data["models"] = [
            parse_model_spec(m) if isinstance(m, str) else _model_from_dict(m, source) for m in data["models"]
        ]
        data["components"] = [_rule_from_dict(r, source) for r in data.get("components") or []]
        if "vocab_patterns" in data:
            data["vocab_patterns"] = tuple(data["vocab_patterns"])
        try:
            return cls(**data)
        except TypeError as exc:
            raise MergeError(f"{source}: {exc}") from exc

    @classmethod
    def from_yaml(cls, path: str | Path) -> MergeConfig:
        return cls.from_dict(read_yaml(path), source=str(path))

    def to_dict(self) -> dict[str, Any]:
        """The YAML form (round-trips through :meth:`from_dict`)."""
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "models":
                value = [{"name": m.name, "path": str(m.path), "weight": m.weight} for m in value]
            elif f.name == "components":
                value = [{k: v for k, v in vars(r).items() if v is not None} for r in value]
            elif isinstance(value, Path):
                value = str(value)
            elif isinstance(value, tuple):
                value = list(value)
            out[f.name] = value
        return out


def read_yaml(path: str | Path) -> dict[str, Any]:
    """The raw option mapping of a YAML merge config."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise MergeError(f"cannot read merge config {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise MergeError(f"merge config {path} must be a YAML mapping of options")
    if "dare" in data:
        data["drop_rate"] = data.pop("dare")
    return data


def _model_from_dict(m: Any, source: str) -> ModelSpec:
    if not isinstance(m, dict) or "name" not in m or "path" not in m:
        raise MergeError(f"{source}: each model needs 'name' and 'path' (and optional 'weight'), got {m!r}")
    weight = m.get("weight", 1.0)
    try:
        weight = float(weight)
    except (TypeError, ValueError) as exc:
        raise MergeError(f"{source}: weight {weight!r} of model {m['name']!r} is not a number") from exc
    return ModelSpec(name=str(m["name"]), path=Path(m["path"]), weight=weight)


def _rule_from_dict(r: Any, source: str) -> ComponentRule:
    if not isinstance(r, dict) or "pattern" not in r:
        raise MergeError(f"{source}: each component needs a 'pattern', got {r!r}")
    r = dict(r)
    if "dare" in r:
        r["drop_rate"] = r.pop("dare")
    try:
        return ComponentRule(**r)
    except TypeError as exc:
        raise MergeError(f"{source}: component {r.get('pattern')!r}: {exc}") from exc


def parse_model_spec(text: str) -> ModelSpec:
    """``NAME=PATH[:WEIGHT]`` → :class:`ModelSpec` (weight 1.0 when omitted)."""
    name, sep, rest = text.partition("=")
    if not sep or not name or not rest:
        raise MergeError(f"model {text!r} does not parse; write NAME=PATH:WEIGHT, e.g. en=/ckpt/en:0.6")
    path, weight = rest, 1.0
    head, colon, tail = rest.rpartition(":")
    if colon and "/" not in tail:
        try:
            weight = float(tail)
        except ValueError as exc:
            raise MergeError(
                f"model {text!r}: weight {tail!r} is not a number; write NAME=PATH:WEIGHT, e.g. en=/ckpt/en:0.6"
            ) from exc
        if not math.isfinite(weight):
            raise MergeError(f"model {text!r}: weight {tail!r} must be finite")
        path = head
    return ModelSpec(name=name, path=Path(path), weight=weight)


def parse_component(text: str) -> ComponentRule:
    """``PATTERN:key=value,...`` (keys: method, density, dare, weight.NAME) → :class:`ComponentRule`."""
    pattern, sep, opts = text.rpartition(":")
    if not sep or not pattern:
        raise MergeError(
            f"component {text!r} does not parse; write PATTERN:density=0.5,dare=0.8,weight.ko=0.3"
        )
    kwargs: dict[str, Any] = {}
    weights: dict[str, float] = {}
    for item in filter(None, opts.split(",")):
        key, eq, value = item.partition("=")
        if not eq:
            raise MergeError(f"component {text!r}: {item!r} is not key=value")
        try:
            if key == "method":
                kwargs["method"] = value
            elif key == "density":
                kwargs["density"] = float(value)
            elif key in ("dare", "drop_rate"):
                kwargs["drop_rate"] = float(value)
            elif key.startswith("weight."):
                weights[key.removeprefix("weight.")] = float(value)
            else:
                raise MergeError(
                    f"component {text!r}: unknown key {key!r} (method, density, dare, weight.NAME)"
                )
        except ValueError as exc:
            raise MergeError(f"component {text!r}: {value!r} is not a number") from exc
    return ComponentRule(pattern=pattern, weights=weights or None, **kwargs)
