"""LoRA/DoRA adapters (peft) on the LM, the vision tower and the projector, each with its own rank.

Adapters are injected in place (`peft.inject_adapter_in_model`), so the components keep their types
and the VLM's parameter names stay `lm.…`, `vision.…`, `projector.…`; adapter weights are the
parameters whose name contains `lora_` (DoRA's magnitude vector included).
"""

from __future__ import annotations

from pathlib import Path

from torch import nn

from tbi_train.config import LoraSpec, PeftConfig
from tbi_train.errors import TrainError

__all__ = ["attach_adapters", "is_adapter_param", "save_adapter"]


def is_adapter_param(name: str) -> bool:
    """Whether a parameter name belongs to a LoRA/DoRA adapter."""
    return "lora_" in name


def _lora_config(spec: LoraSpec):
    from peft import LoraConfig

    targets = spec.target_modules
    return LoraConfig(
        r=spec.r,
        lora_alpha=spec.alpha,
        lora_dropout=spec.dropout,
        target_modules="all-linear" if targets == ("all-linear",) else list(targets),
        use_dora=spec.use_dora,
        bias="none",
    )


def attach_adapters(components: dict[str, nn.Module], cfg: PeftConfig) -> None:
    """Inject an adapter into each component of `components` ("lm", "vision", "projector") that `cfg` enables.

    An adapter x ↦ W x + (alpha / r) B A x starts as the identity (B = 0), so attaching one early and
    training it in a later phase leaves the earlier phases' function unchanged.
    """
    from peft import inject_adapter_in_model

    for name, module in components.items():
        spec: LoraSpec = getattr(cfg, name)
        if not spec.enabled:
            continue
        try:
            inject_adapter_in_model(_lora_config(spec), module)
        except ValueError as exc:
            raise TrainError(
                f"model.peft.{name}.target_modules={list(spec.target_modules)} matched no layer of the {name}: {exc}. "
                "Name its linear layers (e.g. q_proj,v_proj) or use all-linear."
            ) from exc


def save_adapter(module: nn.Module, directory: str | Path, base_path: str | None, prefix: str = "") -> Path:
    """Write a peft adapter folder (adapter_config.json + adapter_model.safetensors) for one component.

    `prefix` is prepended to the keys ("base_model.model." makes the LM's folder loadable with
    `peft.PeftModel.from_pretrained(lm, directory)`).
    """
    from peft import get_peft_model_state_dict
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {prefix + k: v.detach().cpu().contiguous() for k, v in get_peft_model_state_dict(module).items()}
    save_file(state, str(directory / "adapter_model.safetensors"), metadata={"format": "pt"})
    config = module.peft_config["default"]
    config.base_model_name_or_path = base_path
    config.save_pretrained(str(directory))
    return directory
