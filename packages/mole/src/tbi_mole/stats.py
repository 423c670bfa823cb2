"""Router statistics of a MoLE layer, accumulated over forwards until read, for logging."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from tbi_mole.config import LANGUAGES


@dataclass
class RouterStats:
    """What one MoLE layer's router did since the last reset, over real (non-padding) tokens.

    Attributes:
        expert_names: the routed experts, in router order.
        num_tokens: real tokens routed.
        tokens_per_expert: routed assignments per expert (top-k: each token counts once per chosen expert),
            counted before capacity drops.
        dropped_fraction: dropped assignments / all assignments (0 when dropless).
        entropy: mean router entropy −Σ_e p_e ln p_e in nats (ln E = uniform, 0 = one-hot).
        language_confusion: counts [language][expert] of each labelled token's top-1 expert; rows follow
            `LANGUAGES` ("ko", "en", "other"). All zero when no token carried a language label.
    """

    expert_names: list[str]
    num_tokens: int
    tokens_per_expert: list[int]
    dropped_fraction: float
    entropy: float
    language_confusion: list[list[int]]

    def to_dict(self, prefix: str = "") -> dict[str, float]:
        """Flat scalars for a logger: {prefix + "tokens/ko": ..., prefix + "confusion/ko->en": ..., ...}."""
        out: dict[str, float] = {
            f"{prefix}num_tokens": float(self.num_tokens),
            f"{prefix}dropped_fraction": self.dropped_fraction,
            f"{prefix}entropy": self.entropy,
        }
        for name, count in zip(self.expert_names, self.tokens_per_expert):
            out[f"{prefix}tokens/{name}"] = float(count)
        for language, row in zip(LANGUAGES, self.language_confusion):
            for name, count in zip(self.expert_names, row):
                out[f"{prefix}confusion/{language}->{name}"] = float(count)
        return out


class _StatsAccumulator:
    """Running sums behind `RouterStats`; kept on the routing device so updating them needs no host sync."""

    def __init__(self, expert_names: list[str]) -> None:
        self.expert_names = list(expert_names)
        self._sums: dict[str, torch.Tensor] | None = None

    def reset(self) -> None:
        self._sums = None

    @torch.no_grad()
    def update(
        self,
        probs: torch.Tensor,
        expert_index: torch.Tensor,
        kept: torch.Tensor,
        token_mask: torch.Tensor | None,
        language: torch.Tensor | None,
    ) -> None:
        """probs [T, E], expert_index [T, k], kept [T, k], token_mask [T] or None, language [T] (−100 = none)."""
        num_experts = probs.shape[-1]
        device = probs.device
        valid = (
            torch.ones(probs.shape[0], dtype=torch.bool, device=device) if token_mask is None else token_mask
        )
        if self._sums is None:
            self._sums = {
                "tokens": torch.zeros((), dtype=torch.float64, device=device),
                "per_expert": torch.zeros(num_experts, dtype=torch.float64, device=device),
                "dropped": torch.zeros((), dtype=torch.float64, device=device),
                "entropy": torch.zeros((), dtype=torch.float64, device=device),
                "confusion": torch.zeros(len(LANGUAGES) * num_experts, dtype=torch.float64, device=device),
            }
        sums = self._sums
        weight = valid.to(torch.float64)  # [T]
        top_k = expert_index.shape[-1]
        sums["tokens"] += weight.sum()
        sums["per_expert"].index_add_(
            0, expert_index.reshape(-1), weight[:, None].expand(-1, top_k).reshape(-1)
        )
        sums["dropped"] += ((~kept).to(torch.float64) * weight[:, None]).sum()
        entropy = -(probs * torch.log(probs.clamp(min=1e-30))).sum(dim=-1)  # [T]
        sums["entropy"] += (entropy.double() * weight).sum()
        if language is not None:
            labelled = valid & (language >= 0)  # [T]
            cell = language.clamp(min=0) * num_experts + expert_index[:, 0]  # [T]
            sums["confusion"].index_add_(0, cell, labelled.to(torch.float64))

    def read(self) -> RouterStats:
        num_experts = len(self.expert_names)
        if self._sums is None:
            return RouterStats(
                self.expert_names, 0, [0] * num_experts, 0.0, 0.0, [[0] * num_experts for _ in LANGUAGES]
            )
        sums = {key: value.cpu() for key, value in self._sums.items()}
        tokens = int(sums["tokens"])
        assignments = float(sums["per_expert"].sum())
        confusion = sums["confusion"].reshape(len(LANGUAGES), num_experts).long().tolist()
        return RouterStats(
            expert_names=self.expert_names,
            num_tokens=tokens,
            tokens_per_expert=sums["per_expert"].long().tolist(),
            dropped_fraction=float(sums["dropped"]) / assignments if assignments else 0.0,
            entropy=float(sums["entropy"]) / tokens if tokens else 0.0,
            language_confusion=confusion,
        )
