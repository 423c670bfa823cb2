"""The learned router: hidden states to temperature-scaled expert logits."""

from __future__ import annotations

import torch
from torch import nn


class Router(nn.Module):
    """Token router  z = f(x) / τ.

    f is either linear, f(x) = W x with W ∈ R^{E×D}, or a small MLP, f(x) = W2 GELU(W1 x + b1) with
    W1 ∈ R^{H×D}, W2 ∈ R^{E×H} (H = `hidden_dim`, 256 in seed 000). τ is the router temperature.
    The router is created in float32 and casts its input to its own dtype, so it stays float32 inside a bf16 model
    unless the whole model is cast afterwards (Switch Transformer's selective precision: the softmax over experts
    is where bf16 rounding flips routing decisions). The returned logits are always float32.

    Args:
        hidden_size: D, the model width.
        num_experts: E, the number of routed experts.
        router_type: "linear" or "mlp".
        hidden_dim: H, width of the MLP router.
        temperature: τ > 0.
    """

    def __init__(
        self,
        hidden_size: int,
        num_experts: int,
        router_type: str = "mlp",
        hidden_dim: int = 256,
        temperature: float = 1.0,
    ) -> None:
        super().__init__()
        self.temperature = temperature
        if router_type == "linear":
            self.proj = nn.Linear(hidden_size, num_experts, bias=False)
        else:
            self.proj = nn.Sequential(
                nn.Linear(hidden_size, hidden_dim), nn.GELU(), nn.Linear(hidden_dim, num_experts, bias=False)
            )
        self.float()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [T, D] (any dtype) -> logits [T, E] float32, already divided by the temperature."""
        dtype = next(self.parameters()).dtype
        return self.proj(x.to(dtype)).float() / self.temperature  # [T, E]
