"""Per-phase freezing, AdamW parameter groups with per-component rates, and the warmup + decay schedule."""

from __future__ import annotations

import torch
from torch import nn

from tbi_train.config import OptimConfig, PhaseConfig

__all__ = ["build_optimizer", "build_scheduler", "set_trainable"]


def set_trainable(groups: dict[str, list[tuple[str, nn.Parameter]]], phase: PhaseConfig) -> int:
    """requires_grad = (group in phase.trainable) for every parameter; returns the trainable count."""
    count = 0
    for group, params in groups.items():
        train = group in phase.trainable
        for _, p in params:
            p.requires_grad_(train)
            count += p.numel() if train else 0
    return count


def build_optimizer(
    groups: dict[str, list[tuple[str, nn.Parameter]]], phase: PhaseConfig, optim: OptimConfig
) -> torch.optim.AdamW:
    """AdamW over the phase's trainable groups, two param groups per component (decay / no decay).

    Matrices decay by `optim.weight_decay`; biases, norms and other vectors do not (the usual
    exclusion, as in LLaVA and InternVL). Each param group carries `name` ("projector", "lm_lora/no_decay").
    """
    param_groups = []
    for group in phase.trainable:
        lr = getattr(phase.lr, group)
        params = groups.get(group, [])
        decay = [p for _, p in params if p.ndim >= 2]
        no_decay = [p for _, p in params if p.ndim < 2]
        if decay:
            param_groups.append(
                {"params": decay, "lr": lr, "weight_decay": optim.weight_decay, "name": group}
            )
        if no_decay:
            param_groups.append(
                {"params": no_decay, "lr": lr, "weight_decay": 0.0, "name": f"{group}/no_decay"}
            )
    return torch.optim.AdamW(param_groups, betas=optim.betas, eps=optim.eps)


def build_scheduler(
    optimizer: torch.optim.Optimizer, total_steps: int, phase: PhaseConfig, optim: OptimConfig
) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warmup then cosine decay to `min_lr_ratio` x peak (transformers' schedules), or constant.

    At optimizer step s (0-based), with w = warmup, T = total, r = min_lr_ratio:
        s < w:  lr = peak * s / w
        s >= w: lr = peak * (r + (1 - r) * 0.5 * (1 + cos(pi * (s - w) / (T - w))))   (cosine)
    A LambdaLR whose state is the step count, so it resumes exactly.
    """
    from transformers import get_constant_schedule_with_warmup, get_cosine_with_min_lr_schedule_with_warmup

    if optim.schedule == "constant":
        return get_constant_schedule_with_warmup(optimizer, phase.warmup_steps)
    return get_cosine_with_min_lr_schedule_with_warmup(
        optimizer, phase.warmup_steps, total_steps, min_lr_rate=optim.min_lr_ratio
    )
