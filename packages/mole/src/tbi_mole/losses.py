"""Router losses: Switch/Mixtral load balancing, ST-MoE z-loss and the language-supervision cross-entropy.

All three take the temperature-scaled router logits z [T, E] of T tokens over E routed experts and an optional
token mask m [T] (True = a real token, False = padding). Masked tokens count nowhere; with no real token the
losses are an exact 0 that still depends on z (so `backward()` works on any batch).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _mask(logits: torch.Tensor, token_mask: torch.Tensor | None) -> torch.Tensor:
    if token_mask is None:
        return torch.ones(logits.shape[0], dtype=torch.float32, device=logits.device)
    return token_mask.reshape(-1).to(device=logits.device, dtype=torch.float32)  # [T]


def load_balancing_loss(
    logits: torch.Tensor, expert_index: torch.Tensor, token_mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Switch Transformer / Mixtral load-balancing loss, normalised so perfect balance gives 1.

        p_t   = softmax(z_t)                                  router probabilities of token t, [E]
        P_e   = Σ_t m_t p_{t,e} / Σ_t m_t                     mean probability given to expert e
        f_e   = Σ_t m_t Σ_{s<k} 1[i_{t,s} = e] / (k Σ_t m_t)  fraction of the k·T routed assignments sent to e
        loss  = E · Σ_e f_e · P_e

    f is counted before any capacity drop (what the router asked for) and carries no gradient; the gradient
    flows through P. Values: 1 at perfect balance (f_e = P_e = 1/E), E when every token goes to one expert with
    probability 1. Top-k normalisation: f is divided by k, so the value does not grow with k; Hugging Face's
    Mixtral `load_balancing_loss_func` does not divide by k and returns k times this value.

    Args:
        logits: z [T, E] router logits (after the temperature).
        expert_index: i [T, k] the routed experts of each token.
        token_mask: m [T] or any shape with T elements; None = all tokens real.
    Returns:
        A float32 scalar.
    """
    num_experts = logits.shape[-1]
    top_k = expert_index.shape[-1]
    m = _mask(logits, token_mask)  # [T]
    denom = m.sum().clamp(min=1.0)
    probs = logits.float().softmax(dim=-1)  # [T, E]
    prob_per_expert = (probs * m[:, None]).sum(dim=0) / denom  # [E]
    with torch.no_grad():
        assignment_weight = m[:, None].expand(-1, top_k).reshape(-1)  # [T*k]
        counts = torch.zeros(num_experts, dtype=torch.float32, device=logits.device)
        counts.index_add_(0, expert_index.reshape(-1), assignment_weight)  # [E]
        fraction_per_expert = counts / (denom * top_k)  # [E]
    return num_experts * (fraction_per_expert * prob_per_expert).sum()


def router_z_loss(logits: torch.Tensor, token_mask: torch.Tensor | None = None) -> torch.Tensor:
    """ST-MoE router z-loss: Σ_t m_t (log Σ_e exp z_{t,e})² / Σ_t m_t; keeps the router logits small."""
    m = _mask(logits, token_mask)  # [T]
    lse = torch.logsumexp(logits.float(), dim=-1)  # [T]
    return (lse.square() * m).sum() / m.sum().clamp(min=1.0)


def language_loss(
    logits: torch.Tensor, target_expert: torch.Tensor, token_mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Language supervision of the router: cross-entropy of softmax(z_t) against a target expert per token.

        loss = Σ_t v_t · (−log softmax(z_t)[y_t]) / Σ_t v_t,   v_t = m_t · 1[y_t ≠ −100]

    Args:
        logits: z [T, E].
        target_expert: y [T] long, the expert index each token should go to, −100 where unsupervised.
        token_mask: m [T]; None = all tokens real.
    """
    m = _mask(logits, token_mask)  # [T]
    target = target_expert.reshape(-1).to(logits.device)
    valid = (target != -100) & (m > 0)  # [T]
    per_token = F.cross_entropy(logits.float(), target.clamp(min=0), reduction="none")  # [T]
    weight = valid.to(per_token.dtype)
    return (per_token * weight).sum() / weight.sum().clamp(min=1.0)
