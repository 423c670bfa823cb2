"""Functions over every MoLE layer of a model: the summed aux loss, router statistics, language-loss annealing."""

from __future__ import annotations

import torch
from torch import nn

from tbi_mole.layer import MoLELayer
from tbi_mole.stats import RouterStats


def mole_layers(model: nn.Module) -> dict[str, MoLELayer]:
    """Qualified module name -> MoLE layer, in module order (a bare `MoLELayer` maps as "")."""
    return {name: module for name, module in model.named_modules() if isinstance(module, MoLELayer)}


def collect_aux_loss(model: nn.Module) -> torch.Tensor:
    """Σ over the model's MoLE layers of the weighted aux loss of their last forward (a 0-dim tensor; 0 if none).

    Each layer's term is w_lb · load_balancing + w_z · z + w_lang · language (`MoLELayer.aux_loss`).
    """
    losses = [layer.aux_loss for layer in mole_layers(model).values() if layer.aux_loss is not None]
    if not losses:
        return torch.zeros(())
    return torch.stack([loss.float() for loss in losses]).sum()


def router_stats(model: nn.Module, reset: bool = False) -> dict[str, RouterStats]:
    """Module name -> `RouterStats` accumulated by each MoLE layer since its last reset.

    Args:
        model: a model holding MoLE layers (or a MoLE layer).
        reset: start a new accumulation window after reading (once per logging interval).
    """
    return {name: layer.stats(reset=reset) for name, layer in mole_layers(model).items()}


def set_language_loss_weight(model: nn.Module, weight: float) -> None:
    """Set the live language-supervision weight of every MoLE layer (0 turns the loss off)."""
    for layer in mole_layers(model).values():
        layer.language_loss_weight = float(weight)


def anneal_language_loss(model: nn.Module, step: int, total_steps: int) -> float:
    """Linear anneal of the language-supervision weight to 0: w(step) = w0 · max(0, 1 − step / total_steps).

    w0 is each layer's `config.language_loss_weight`. Call once per optimiser step. Returns the factor
    max(0, 1 − step / total_steps) applied.
    """
    factor = max(0.0, 1.0 - step / total_steps) if total_steps > 0 else 0.0
    for layer in mole_layers(model).values():
        layer.language_loss_weight = layer.config.language_loss_weight * factor
    return factor
