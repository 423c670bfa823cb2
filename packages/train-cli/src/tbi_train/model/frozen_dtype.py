"""Frozen parts in bf16: the base weights no phase of a run trains are stored in bf16, halving their memory.

Rule: a component's base weights ("vision", "projector" or "lm") are cast only when *no* phase of the run
trains that group, so nothing trained later starts from bf16-rounded values (seed 000's three phases: the
LM base under LoRA; the tower too when no phase trains it). Adapters and every trained part stay fp32
masters. Each component's floating inputs are cast to its own dtype by a forward pre-hook, so a bf16 LM
takes an fp32 projector's tokens (and vice versa) on the CPU as on a GPU; peft's LoRA layers already run
their fp32 adapter on the bf16 base layer's input and return the base dtype.

    saved = cast_frozen_parts(vlm, frozen_groups(cfg.phases), torch.bfloat16)   # bytes freed
    = 2 * sum(p.numel() for the cast parameters)                                  # fp32 (4 B) -> bf16 (2 B)
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import torch
from torch import nn

from tbi_train.errors import TrainError

__all__ = [
    "cast_frozen_parts",
    "frozen_dtype_for",
    "frozen_groups",
    "parameter_bytes",
    "restore_saved_dtypes",
]

_BASES = ("vision", "projector", "lm")


def frozen_groups(phases: Iterable) -> tuple[str, ...]:
    """Component base groups that no phase trains (adapters are never cast), in component order."""
    trained = {group for phase in phases for group in phase.trainable}
    return tuple(g for g in _BASES if g not in trained)


def frozen_dtype_for(frozen_dtype: str, precision: str) -> torch.dtype | None:
    """model.frozen_dtype + run precision -> the dtype to store frozen parts in (None: leave them fp32).

    "auto" is bf16 when the run trains in bf16 (precision "bf16", or "auto" on a GPU with bf16), else fp32.
    """
    if frozen_dtype == "bf16":
        return torch.bfloat16
    if frozen_dtype == "fp32":
        return None
    if frozen_dtype != "auto":
        raise TrainError(f"model.frozen_dtype={frozen_dtype!r}; use auto, bf16 or fp32.")
    gpu_bf16 = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    return torch.bfloat16 if precision == "bf16" or (precision == "auto" and gpu_bf16) else None


def parameter_bytes(module: nn.Module) -> int:
    """Bytes held by `module`'s parameters (tied parameters once)."""
    return sum(p.numel() * p.element_size() for p in module.parameters())


def cast_frozen_parts(vlm: nn.Module, groups: Iterable[str], dtype: torch.dtype = torch.bfloat16) -> int:
    """Store the base weights of `groups` in `dtype` in place and install input casts; return bytes freed.

    Parameters keep their identity (tied weights stay tied, optimizers built later see the same objects).
    Calling it again with the same groups changes nothing.
    """
    groups = tuple(groups)
    unknown = [g for g in groups if g not in _BASES]
    if unknown:
        raise TrainError(f"cannot cast {unknown} to {dtype}: only component bases {_BASES} can be stored so.")
    before = parameter_bytes(vlm)
    params = vlm.parameter_groups()
    for group in groups:
        for _, param in params.get(group, []):
            if param.is_floating_point() and param.dtype != dtype:
                param.data = param.data.to(dtype)
    if groups:
        _install_input_casts(vlm, {g: dtype for g in groups})
    return before - parameter_bytes(vlm)


def restore_saved_dtypes(vlm: nn.Module, weights: str | Path) -> tuple[str, ...]:
    """Before loading `weights` (a saved VLM's safetensors): cast the components stored in bf16 back to bf16,
    so a reloaded model computes exactly as the trained one did; returns the groups cast."""
    from safetensors import safe_open

    with safe_open(str(weights), framework="pt") as f:
        stored = {key: f.get_slice(key).get_dtype() for key in f.keys()}  # noqa: SIM118 (safe_open is not iterable)
    groups = []
    for group, named in vlm.parameter_groups().items():
        dtypes = {stored.get(name) for name, _ in named} - {None}
        if group in _BASES and dtypes == {"BF16"}:
            groups.append(group)
    cast_frozen_parts(vlm, groups, torch.bfloat16)
    return tuple(groups)


def _install_input_casts(vlm: nn.Module, cast: dict[str, torch.dtype]) -> None:
    """Every component casts its floating inputs to its own dtype (bf16 when cast, else fp32)."""
    for name, module in vlm.component_modules().items():
        dtype = cast.get(name, torch.float32)
        if getattr(module, "_tbi_input_dtype", None) is None:
            module.register_forward_pre_hook(_cast_inputs, with_kwargs=True)
        module._tbi_input_dtype = dtype


def _cast_inputs(module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    dtype = module._tbi_input_dtype
    return _to(args, dtype), {k: _to(v, dtype) for k, v in kwargs.items()}


def _to(value, dtype: torch.dtype):
    if isinstance(value, torch.Tensor):
        return value.to(dtype) if value.is_floating_point() else value
    if isinstance(value, list | tuple):
        return type(value)(_to(v, dtype) for v in value)
    return value
