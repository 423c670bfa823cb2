"""tbi-mole: mixture-of-language-experts layers upcycled from fine-tuned checkpoints, with grouped dispatch."""

from tbi_mole.checkpoint import SafetensorsCheckpoint
from tbi_mole.collect import (
    anneal_language_loss,
    collect_aux_loss,
    mole_layers,
    router_stats,
    set_language_loss_weight,
)
from tbi_mole.config import LANGUAGES, MoLEConfig
from tbi_mole.dispatch import DispatchPlan, expert_capacity, plan_dispatch, run_experts
from tbi_mole.errors import MoLEError
from tbi_mole.language import classify_text, classify_token, language_labels, token_language_table
from tbi_mole.layer import MoLELayer
from tbi_mole.losses import language_loss, load_balancing_loss, router_z_loss
from tbi_mole.router import Router
from tbi_mole.stats import RouterStats
from tbi_mole.upcycle import detach_hooks, load_mole, upcycle

__version__ = "0.1.0"

__all__ = [
    "LANGUAGES",
    "DispatchPlan",
    "MoLEConfig",
    "MoLEError",
    "MoLELayer",
    "Router",
    "RouterStats",
    "SafetensorsCheckpoint",
    "anneal_language_loss",
    "classify_text",
    "classify_token",
    "collect_aux_loss",
    "detach_hooks",
    "expert_capacity",
    "language_labels",
    "language_loss",
    "load_balancing_loss",
    "load_mole",
    "mole_layers",
    "plan_dispatch",
    "router_stats",
    "router_z_loss",
    "run_experts",
    "set_language_loss_weight",
    "token_language_table",
    "upcycle",
]
