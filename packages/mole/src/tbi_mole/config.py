"""Typed configuration of a MoLE layer; defaults are seed 000's `mole_config` (experiments D4 and F4)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

from tbi_mole.errors import MoLEError

LANGUAGES = ("ko", "en", "other")
"""Per-token language classes of the language-id helper, in label order (label 0 = "ko", 1 = "en", 2 = "other")."""


@dataclass
class MoLEConfig:
    """How a MoLE layer routes tokens to its experts and which auxiliary losses it returns.

    The experts themselves (their names and modules) are given to `MoLELayer` / `upcycle`, not here.
    """

    router_type: Literal["linear", "mlp"] = "mlp"
    """"linear": logits = W x. "mlp": logits = W2 GELU(W1 x) with W1 of width `router_hidden_dim` (seed: learned MLP)."""

    router_hidden_dim: int = 256
    """Hidden width of the MLP router (seed 000: 256). Ignored by the linear router."""

    router_temperature: float = 1.0
    """Router logits are divided by this before the softmax and before every router loss (seed 000: 1.0)."""

    top_k: int = 2
    """Routed experts per token, 1 or 2."""

    gate: Literal["renormalize", "softmax"] = "renormalize"
    """"renormalize": gate weights are the top-k probabilities divided by their sum (Mixtral), so they sum to 1 and
    identical experts reproduce the dense FFN exactly; with top_k=1 the gate is then exactly 1 and the router learns
    only from the auxiliary losses. "softmax": gate weights are the raw top-k probabilities (Switch Transformer),
    which lets the language-model loss reach a top-1 router but scales the FFN output by p at initialisation."""

    capacity_factor: float | None = 1.25
    """Training capacity factor (seed 000: 1.25): each routed expert takes at most
    capacity = ceil(top_k * tokens / num_routed_experts * capacity_factor) token assignments per forward; the
    assignments over capacity are dropped (they contribute nothing; the token keeps its residual). None = dropless."""

    eval_capacity_factor: float | None = None
    """Capacity factor in eval mode (`model.eval()`); None (the default) = dropless inference."""

    load_balancing_loss_weight: float = 0.01
    """Weight of the Switch/Mixtral load-balancing loss (seed 000: 0.01); 1.0 at perfect balance, see `losses`."""

    z_loss_weight: float = 0.0
    """Weight of the router z-loss mean(logsumexp(logits)^2) (ST-MoE); 0 disables it. ST-MoE used 1e-3."""

    language_loss_weight: float = 0.0
    """Initial weight of the router language-supervision cross-entropy (risk R4 warm start); 0 disables it.
    `anneal_language_loss` lowers the live weight of every layer towards 0 during training."""

    language_to_expert: dict[str, str] = field(
        default_factory=lambda: {"ko": "ko", "en": "en", "other": "shared"}
    )
    """Target routed expert of each language class for the language cross-entropy. Classes whose expert is not a
    routed expert of the layer (e.g. "shared" when the shared expert is always on) are not supervised."""

    track_stats: bool = True
    """Accumulate router statistics (tokens per expert, dropped fraction, entropy, language x expert table) for
    `router_stats`. Costs one host sync per layer and forward."""

    def __post_init__(self) -> None:
        if self.router_type not in ("linear", "mlp"):
            raise MoLEError(f"MoLEConfig.router_type={self.router_type!r}: use 'linear' or 'mlp'.")
        if self.router_type == "mlp" and self.router_hidden_dim < 1:
            raise MoLEError(
                f"MoLEConfig.router_hidden_dim={self.router_hidden_dim}: must be >= 1 for an MLP router."
            )
        if self.top_k not in (1, 2):
            raise MoLEError(f"MoLEConfig.top_k={self.top_k}: MoLE routes each token to 1 or 2 experts.")
        if self.gate not in ("renormalize", "softmax"):
            raise MoLEError(f"MoLEConfig.gate={self.gate!r}: use 'renormalize' or 'softmax'.")
        if not self.router_temperature > 0:
            raise MoLEError(f"MoLEConfig.router_temperature={self.router_temperature}: must be > 0.")
        for name in ("capacity_factor", "eval_capacity_factor"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise MoLEError(f"MoLEConfig.{name}={value}: must be > 0, or None for dropless routing.")
        for name in ("load_balancing_loss_weight", "z_loss_weight", "language_loss_weight"):
            if getattr(self, name) < 0:
                raise MoLEError(f"MoLEConfig.{name}={getattr(self, name)}: loss weights must be >= 0.")
        unknown = set(self.language_to_expert) - set(LANGUAGES)
        if unknown:
            raise MoLEError(
                f"MoLEConfig.language_to_expert has unknown language(s) {sorted(unknown)}; keys must be among {LANGUAGES}."
            )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict; `MoLEConfig.from_dict(c.to_dict()) == c`."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MoLEConfig:
        """Inverse of `to_dict`; unknown keys raise a `MoLEError` naming them."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - names
        if unknown:
            raise MoLEError(
                f"MoLE config has unknown field(s) {sorted(unknown)}; known fields: {sorted(names)}. "
                "Was it written by a newer tbi-mole?"
            )
        return cls(**data)
