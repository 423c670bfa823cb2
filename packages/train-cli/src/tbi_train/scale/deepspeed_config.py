"""DeepSpeed JSON from the run config: batch, accumulation, bf16, clipping, ZeRO stage, optimizer, scheduler.

    deepspeed_config(cfg, phase_index=2, world_size=2, zero_stage=2, offload_optimizer=True)

train_batch_size = micro-batch x accumulation x processes (DeepSpeed checks this identity). The `optimizer`
and `scheduler` sections describe the phase's AdamW (per-component rates are param groups, so the section
carries the largest one) and its warmup + cosine, for tools that read the JSON; `tbi train` itself hands
DeepSpeed the phase's torch AdamW and schedule and leaves those two sections out (`runtime_deepspeed_config`).
"""

from __future__ import annotations

import json
from pathlib import Path

from tbi_train.config import PhaseConfig, RunConfig
from tbi_train.errors import TrainError

__all__ = ["deepspeed_config", "runtime_deepspeed_config", "write_deepspeed_config"]

_BATCH_KEYS = ("train_micro_batch_size_per_gpu", "gradient_accumulation_steps", "train_batch_size")


def _bf16(cfg: RunConfig) -> bool:
    import torch

    if cfg.precision == "bf16":
        return True
    return cfg.precision == "auto" and torch.cuda.is_available() and torch.cuda.is_bf16_supported()


def _total_steps(phase: PhaseConfig) -> int:
    return phase.steps if phase.steps is not None else 0


def deepspeed_config(
    cfg: RunConfig,
    phase_index: int = 0,
    world_size: int = 1,
    zero_stage: int = 2,
    offload_optimizer: bool = False,
) -> dict:
    """The DeepSpeed JSON of one phase of `cfg` (a dict), optimizer and scheduler sections included."""
    if not 0 <= phase_index < len(cfg.phases):
        raise TrainError(f"phase {phase_index} does not exist; the config has {len(cfg.phases)} phases.")
    if zero_stage not in (0, 1, 2, 3):
        raise TrainError(f"ZeRO stage {zero_stage} does not exist; use 0, 1, 2 or 3.")
    if offload_optimizer and zero_stage < 2:
        raise TrainError(f"optimizer offload needs ZeRO-2 or ZeRO-3, not ZeRO-{zero_stage}.")
    phase = cfg.phases[phase_index]
    rates = [getattr(phase.lr, g) for g in phase.trainable if getattr(phase.lr, g) is not None]
    zero: dict = {"stage": zero_stage, "overlap_comm": zero_stage > 0, "contiguous_gradients": True}
    if offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": True}
    if zero_stage == 3:
        zero["stage3_gather_16bit_weights_on_model_save"] = True
    o = cfg.optim
    scheduler = {
        "type": "WarmupCosineLR" if o.schedule == "cosine" else "WarmupLR",
        "params": {"warmup_num_steps": phase.warmup_steps, "warmup_type": "linear"},
    }
    if o.schedule == "cosine":
        scheduler["params"].update(
            {"total_num_steps": _total_steps(phase), "warmup_min_ratio": 0.0, "cos_min_ratio": o.min_lr_ratio}
        )
    else:
        scheduler["params"].update({"warmup_min_lr": 0.0, "warmup_max_lr": max(rates, default=0.0)})
    return {
        "train_micro_batch_size_per_gpu": phase.batch_size,
        "gradient_accumulation_steps": phase.grad_accum,
        "train_batch_size": phase.batch_size * phase.grad_accum * world_size,
        "gradient_clipping": o.max_grad_norm,
        "bf16": {"enabled": _bf16(cfg)},
        "zero_optimization": zero,
        "optimizer": {
            "type": "AdamW",
            "params": {
                "lr": max(rates, default=0.0),
                "betas": list(o.betas),
                "eps": o.eps,
                "weight_decay": o.weight_decay,
            },
        },
        "scheduler": scheduler,
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }


def write_deepspeed_config(config: dict, path: str | Path) -> Path:
    """Write a DeepSpeed JSON (temp file, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(config, indent=2) + "\n")
    tmp.replace(path)
    return path


def runtime_deepspeed_config(cfg: RunConfig, phase: PhaseConfig, engine, world_size: int) -> dict:
    """What `tbi train` passes to deepspeed.initialize: the generated JSON merged with the user's file.

    The user file may set any DeepSpeed key (ZeRO details, offload, communication); batch keys must agree
    with the phase, and optimizer/scheduler belong to the run config (per-component rates, seed schedule).
    """
    index = cfg.phases.index(phase)
    config = deepspeed_config(cfg, index, world_size, engine.zero_stage, engine.offload_optimizer)
    if engine.deepspeed_config is not None:
        path = Path(engine.deepspeed_config)
        try:
            user = json.loads(path.read_text())
        except FileNotFoundError as exc:
            raise TrainError(f"{path}: no such DeepSpeed config; pass an existing JSON file.") from exc
        except json.JSONDecodeError as exc:
            raise TrainError(f"{path}: not valid JSON ({exc}).") from exc
        for key in _BATCH_KEYS:
            if key in user and user[key] not in ("auto", config[key]):
                raise TrainError(
                    f"{path}: {key}={user[key]} but phase {phase.name} needs {config[key]} "
                    f"(batch_size={phase.batch_size}, grad_accum={phase.grad_accum}, {world_size} processes); "
                    f'remove the key or set it to "auto".'
                )
        for key in ("optimizer", "scheduler"):
            if key in user:
                raise TrainError(
                    f"{path}: '{key}' is set by the run config (optim.*, phases.N.lr.*, warmup_steps); "
                    f"remove the '{key}' section."
                )
        merged = {**config, **{k: v for k, v in user.items() if k not in _BATCH_KEYS}}
        if isinstance(user.get("zero_optimization"), dict):
            merged["zero_optimization"] = {**config["zero_optimization"], **user["zero_optimization"]}
        config = merged
    config = {k: v for k, v in config.items() if k not in ("optimizer", "scheduler")}
    if config["zero_optimization"].get("offload_optimizer"):
        # The phase's torch AdamW steps the offloaded fp32 partitions (DeepSpeed would insist on its CPUAdam).
        config["zero_force_ds_cpu_optimizer"] = False
    return config
