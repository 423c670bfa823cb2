"""``pyramid-drop``: multi-scale features with per-scale attention-ranked token dropping (seed 000 B3).

Seed 000's ``pyramid_drop_config``: drop rates ``[0.5, 0.3, 0.1]`` for scales L1 (layer 8), L2 (16),
L3 (24), "attention_based" (drop low-attention tokens), ``training_only=False`` (also at inference).
The in-language-model PyramidDrop of Xing et al. (CVPR 2025) is ``PyramidDropHook`` in ``pyramid_drop_lm``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from ._layers import Mlp, softmax_dtype
from .base import Projector
from .config import ProjectorConfig
from .errors import ProjectorError
from .output import ProjectorOutput


@dataclass
class PyramidDropConfig(ProjectorConfig):
    """Options of ``pyramid-drop`` (defaults: seed 000 ``pyramid_drop_config``)."""

    num_scales: int = 3
    """Feature maps from the encoder (seed 000: layers 8/16/24)."""
    input_dims: tuple[int, ...] = ()
    """Channels per scale; empty = all ``input_dim``."""
    drop_rates: tuple[float, ...] = (0.5, 0.3, 0.1)
    """Fraction of each scale's tokens dropped (seed 000: aggressive at L1, minimal at L3)."""
    score_dim: int = 256
    """Width of the learned attention scorer of each scale."""
    mlp_depth: int = 2
    """Linear layers of each scale's projection C_s → D (2 = mlp2x_gelu)."""
    training_only: bool = False
    """Drop only in training mode and keep every token in eval mode (seed 000: False, drop in both)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if len(self.drop_rates) != self.num_scales or any(not 0.0 <= r < 1.0 for r in self.drop_rates):
            raise ProjectorError(
                f"pyramid-drop: drop_rates {list(self.drop_rates)} must give one rate in [0, 1) per scale "
                f"(num_scales={self.num_scales})"
            )
        if self.input_dims and len(self.input_dims) != self.num_scales:
            raise ProjectorError(
                f"pyramid-drop: input_dims needs {self.num_scales} entries, got {self.input_dims}"
            )

    def scale_dims(self) -> list[int]:
        return list(self.input_dims) if self.input_dims else [self.input_dim] * self.num_scales


def keep_count(num_tokens: int, drop_rate: float) -> int:
    """Tokens kept from ``num_tokens`` at ``drop_rate``: ``max(1, N − ⌊N·r⌋)``."""
    return max(1, num_tokens - math.floor(num_tokens * drop_rate))


def top_tokens_in_order(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Indices ``[B, k]`` of the ``k`` highest scores of each row, sorted by position (order preserved)."""
    return scores.topk(k, dim=1).indices.sort(dim=1).values


class PyramidDropProjector(Projector):
    """For each scale s: score tokens, keep the top ``N_s − ⌊N_s·r_s⌋`` in their original order, project.

    Score of token i of scale s (its attention mass under a learned query): ``a_i = softmax_i(q_sᵀ W_s
    LN(x_i) / √d)`` (or the ``scores=`` given to ``forward``, e.g. the encoder's CLS attention). Kept tokens
    are multiplied by ``1 + N·a_i − stop_grad(N·a_i)`` (value 1, so outputs are unchanged) which gives the
    scorer a gradient through the projection. Then ``token = MLP_s(x_i) + e_s`` with a learned scale
    embedding ``e_s`` and the scales are concatenated: ``[B, Σ_s k_s, D]``.

    ``out.kept_indices`` index the concatenation of the scales' tokens (scale s occupies
    ``[Σ_{s'<s} N_{s'}, Σ_{s'≤s} N_{s'})``; for video, frame t adds ``t·Σ_s N_s``). ``out.attention`` is the
    attention mass of every input token, ``[B, Σ_s N_s]``.

    Parameters: ``Σ_s (2C_s + C_s·d + MLP(C_s → D)) + S·d + S·D``.
    """

    name = "pyramid-drop"
    config_class = PyramidDropConfig
    multi_scale = True
    needs_grid = False
    extra_inputs = ("scores",)

    def _build(self) -> None:
        c = self.config
        dims = c.scale_dims()
        self.norms = nn.ModuleList(nn.LayerNorm(d) for d in dims)
        self.score_keys = nn.ModuleList(nn.Linear(d, c.score_dim, bias=False) for d in dims)
        self.score_queries = nn.Parameter(torch.randn(c.num_scales, c.score_dim) * 0.02)
        self.projs = nn.ModuleList(Mlp(d, c.output_dim, c.output_dim, depth=c.mlp_depth) for d in dims)
        self.scale_emb = nn.Parameter(torch.zeros(c.num_scales, c.output_dim))

    def _input_dims(self) -> list[int]:
        return self.config.scale_dims()

    def _num_scales(self) -> int:
        return self.config.num_scales

    def _check_grid_arg(self, grid):
        # Token sets need no layout; grids are still validated against N when given.
        if grid is None:
            return [None] * self.config.num_scales
        return super()._check_grid_arg(grid)

    def _dropping(self) -> bool:
        return self.training or not self.config.training_only

    def score(self, xs: list[torch.Tensor]) -> list[torch.Tensor]:
        """Attention mass ``[B, N_s]`` (rows sum to 1) of every token of every scale under the learned queries."""
        out = []
        for s, x in enumerate(xs):
            keys = self.score_keys[s](self.norms[s](x))  # [B, N_s, d]
            logits = (keys @ self.score_queries[s].to(keys.dtype)).to(softmax_dtype(x.dtype))  # [B, N_s]
            logits = logits / math.sqrt(keys.shape[-1])
            out.append(logits.softmax(dim=-1))
        return out

    def _forward_frame(self, xs: list[torch.Tensor], grids, scores=None, **kwargs) -> ProjectorOutput:
        if scores is None:
            masses = self.score(xs)
        else:
            masses = self._external_scores(scores, xs)
        tokens, kept, offset = [], [], 0
        for s, (x, mass) in enumerate(zip(xs, masses)):
            n = x.shape[1]
            k = keep_count(n, self.config.drop_rates[s]) if self._dropping() else n
            idx = top_tokens_in_order(mass, k)  # [B, k]
            picked = x.gather(1, idx.unsqueeze(-1).expand(-1, -1, x.shape[-1]))  # [B, k, C_s]
            m = mass.gather(1, idx) * n  # [B, k]
            gate = (1.0 + m - m.detach()).to(x.dtype).unsqueeze(-1)
            tokens.append(self.projs[s](picked * gate) + self.scale_emb[s].to(x.dtype))  # [B, k, D]
            kept.append(idx + offset)
            offset += n
        return ProjectorOutput(
            tokens=torch.cat(tokens, dim=1),  # [B, Σk_s, D]
            kept_indices=torch.cat(kept, dim=1),  # [B, Σk_s]
            attention=torch.cat(masses, dim=1),  # [B, ΣN_s]
        )

    def _external_scores(self, scores, xs: list[torch.Tensor]) -> list[torch.Tensor]:
        if not isinstance(scores, (list, tuple)) or len(scores) != len(xs):
            raise ProjectorError(
                f"pyramid-drop: scores= must be a list of {len(xs)} tensors [B, N_s], one per scale"
            )
        out = []
        for s, (sc, x) in enumerate(zip(scores, xs)):
            if not isinstance(sc, torch.Tensor) or sc.numel() != x.shape[0] * x.shape[1]:
                raise ProjectorError(
                    f"pyramid-drop: scores[{s}] must be a tensor of B·N_s = {x.shape[0] * x.shape[1]} entries "
                    "([B, N_s], or [B, T, N_s] for video)"
                )
            out.append(sc.reshape(x.shape[0], -1).to(softmax_dtype(sc.dtype)))
        return out

    def _project(self, x, grid, scores=None, **kwargs) -> ProjectorOutput:
        if scores is not None:
            # Scores come per frame like the features: [B, T, N_s] → [B*T, N_s].
            scores = [sc.reshape(-1, sc.shape[-1]) for sc in scores]
        return super()._project(x, grid, scores=scores, **kwargs)

    def _tokens_per_frame(self, grids) -> int:
        if grids[0] is None:
            raise ProjectorError("pyramid-drop: pass grid=[(h, w)] * num_scales to count output tokens")
        if not self._dropping():
            return sum(g[0] * g[1] for g in grids)
        return sum(keep_count(g[0] * g[1], r) for g, r in zip(grids, self.config.drop_rates))

    @classmethod
    def count_parameters(cls, config: PyramidDropConfig) -> int:
        c = config
        total = c.num_scales * c.score_dim + c.num_scales * c.output_dim
        for d in c.scale_dims():
            total += 2 * d + d * c.score_dim + Mlp.count(d, c.output_dim, c.output_dim, c.mlp_depth)
        return total
