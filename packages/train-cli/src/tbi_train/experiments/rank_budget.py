"""Seed 002's budget helper: LoRA ranks per component that meet a fixed total parameter budget for any ratio.

A LoRA adapter of rank r on a linear layer W: R^in -> R^out adds r * (in + out) parameters (A is r x in,
B is out x r), so a component's adapter costs r * c with c = sum of (in + out) over its adapted layers.
For a ratio a_v : a_p : a_l and a budget N, the continuous solution is r_i = k * a_i with
k = N / sum_i(a_i * c_i); ranks are rounded to integers >= 1 and the resulting counts are reported.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from tbi_train.config import RunConfig
from tbi_train.experiments.registry import ExperimentError

__all__ = ["COMPONENTS", "RankAllocation", "allocate_ranks", "lora_costs", "rank_budget"]

COMPONENTS = ("vision", "projector", "lm")
"""Order of a ratio vision:projector:language."""


@dataclass(frozen=True)
class RankAllocation:
    """Ranks meeting a budget, with the parameter counts they give."""

    ratio: tuple[float, float, float]
    ranks: dict[str, int]
    params: dict[str, int]
    """Adapter parameters per component at these ranks."""
    budget: int
    """Target total."""

    @property
    def total(self) -> int:
        return sum(self.params.values())

    @property
    def deviation(self) -> float:
        """(total - budget) / budget."""
        return (self.total - self.budget) / self.budget


def allocate_ranks(ratio: tuple[float, float, float], costs: dict[str, int], budget: int) -> RankAllocation:
    """Ranks r_i = round(k a_i) (>= 1) with k = budget / sum(a_i c_i); see the module docstring."""
    if len(ratio) != 3 or any(a <= 0 for a in ratio):
        raise ExperimentError(f"rank ratio {ratio}: give three positive numbers vision:projector:language.")
    if budget <= 0:
        raise ExperimentError(f"parameter budget {budget} must be positive.")
    weights = dict(zip(COMPONENTS, ratio))
    k = budget / sum(weights[c] * costs[c] for c in COMPONENTS)
    ranks = {c: max(1, round(k * weights[c])) for c in COMPONENTS}
    params = {c: ranks[c] * costs[c] for c in COMPONENTS}
    return RankAllocation(tuple(ratio), ranks, params, budget)


def lora_costs(cfg: RunConfig) -> dict[str, int]:
    """sum(in + out) over the layers each component's adapter targets (built on the meta device, no weights)."""
    from tbi_projectors import build_projector
    from tbi_train.model.lm import build_lm
    from tbi_train.model.vision import build_vision_tower

    if cfg.model.vision.path is not None or cfg.model.lm.path is not None:
        raise ExperimentError(
            "rank budgets are computed from random-init model configs; for checkpoints pass the costs to "
            "allocate_ranks (sum of in+out features over the adapted linear layers)."
        )
    with torch.device("meta"):
        vision = build_vision_tower(cfg.model.vision)
        lm = build_lm(cfg.model.lm, vocab_size=cfg.model.tokenizer.vocab_size)
        projector = build_projector(
            cfg.model.projector.name,
            input_dim=vision.hidden_size,
            output_dim=lm.config.hidden_size,
            **dict(cfg.model.projector.options),
        )
    modules = {"vision": vision.model, "projector": projector, "lm": lm}
    costs = {}
    for name, module in modules.items():
        targets = getattr(cfg.model.peft, name).target_modules
        costs[name] = sum(
            layer.in_features + layer.out_features
            for full, layer in module.named_modules()
            if isinstance(layer, nn.Linear)
            and full != "lm_head"
            and (targets == ("all-linear",) or full.rsplit(".", 1)[-1] in targets)
        )
        if costs[name] == 0:
            raise ExperimentError(
                f"model.peft.{name}.target_modules={list(targets)} matches no linear layer of the {name}."
            )
    return costs


def rank_budget(cfg: RunConfig, ratio: tuple[float, float, float], base_rank: int = 8) -> RankAllocation:
    """Ranks for `ratio` at the budget of rank `base_rank` on every component (seed 002: rank-8 equivalent)."""
    costs = lora_costs(cfg)
    return allocate_ranks(ratio, costs, base_rank * sum(costs.values()))
