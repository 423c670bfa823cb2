"""The MoLE layer: a router over N expert FFNs (plus an optional always-on shared expert) with grouped dispatch."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from tbi_mole.config import LANGUAGES, MoLEConfig
from tbi_mole.dispatch import expert_capacity, plan_dispatch, run_experts
from tbi_mole.errors import MoLEError
from tbi_mole.losses import language_loss, load_balancing_loss, router_z_loss
from tbi_mole.router import Router
from tbi_mole.stats import RouterStats, _StatsAccumulator


def _infer_hidden_size(module: nn.Module) -> int | None:
    for sub in module.modules():
        if isinstance(sub, nn.Linear):
            return sub.in_features
    return None


class MoLELayer(nn.Module):
    """Mixture of language experts in place of one FFN.

        z = router(x) / τ                          [T, E]   (τ inside the router)
        p = softmax(z);  (w, i) = top_k(p)         [T, k]
        w ← w / Σ_s w_s                            (gate="renormalize"; "softmax" keeps w = p_i)
        y_t = Σ_{s kept} w_{t,s} · expert_{i_{t,s}}(x_t)  [+ shared(x_t) when a shared expert is given]

    Experts are the unchanged FFN modules of any Hugging Face MLP shape (SwiGLU gate/up/down, InternLM2
    w1/w2/w3, GPT fc1/fc2, ...): anything mapping [n, D] -> [n, D]. Dispatch (see `tbi_mole.dispatch`) sorts the
    assignments by expert and calls each expert once on a contiguous block. Assignments over the capacity
    (`config.capacity_factor` in training, `config.eval_capacity_factor` in eval, None = dropless) contribute
    nothing, so a token whose every assignment was dropped leaves the layer as 0 and the decoder's residual carries it.

    The forward returns only y (so it drops into a decoder layer as `mlp`); it leaves behind
    `aux_loss` (the weighted sum below, to add to the training loss), `aux_losses` (the unweighted parts) and
    router statistics (`stats()`):

        aux = w_lb · load_balancing_loss + w_z · router_z_loss + w_lang · language_loss

    Args:
        experts: name -> FFN module, in router order (e.g. {"ko": ..., "en": ..., "shared": ...}).
        config: routing and loss settings; None = `MoLEConfig()` (seed 000 defaults).
        shared_expert: an FFN always applied and added to the routed output (not routed, no gate).
        router: a module mapping x [T, D] to logits [T, E]; None builds a `Router` from `config`.
        hidden_size: D, needed to build the router when the experts contain no `nn.Linear` to read it from.
    Raises:
        MoLEError: no experts, a bad expert name, top_k above the number of experts, or no way to know D.
    """

    def __init__(
        self,
        experts: Mapping[str, nn.Module],
        config: MoLEConfig | None = None,
        *,
        shared_expert: nn.Module | None = None,
        router: nn.Module | None = None,
        hidden_size: int | None = None,
    ) -> None:
        super().__init__()
        self.config = config if config is not None else MoLEConfig()
        if not experts:
            raise MoLEError(
                "MoLELayer needs at least one routed expert; pass experts={'ko': ffn, 'en': ffn, ...}."
            )
        for name in experts:
            if not name or "." in name or name == "shared_expert":
                raise MoLEError(
                    f"expert name {name!r} cannot be a module name; use a non-empty name without '.', "
                    "other than 'shared_expert'."
                )
        if self.config.top_k > len(experts):
            raise MoLEError(
                f"MoLEConfig.top_k={self.config.top_k} but only {len(experts)} routed expert(s) "
                f"{list(experts)}; lower top_k or add experts."
            )
        self.experts = nn.ModuleDict(dict(experts))
        self.shared_expert = shared_expert
        if router is None:
            hidden_size = hidden_size or _infer_hidden_size(next(iter(experts.values())))
            if hidden_size is None:
                raise MoLEError(
                    "cannot read the hidden size from the experts (no nn.Linear inside); pass hidden_size=D."
                )
            router = Router(
                hidden_size,
                len(experts),
                self.config.router_type,
                self.config.router_hidden_dim,
                self.config.router_temperature,
            )
        self.router = router
        self.language_loss_weight = self.config.language_loss_weight
        names = list(experts)
        # Languages whose target expert is not routed here (e.g. an always-on shared expert) stay unsupervised.
        target = [
            names.index(expert) if (expert := self.config.language_to_expert.get(lang)) in names else -100
            for lang in LANGUAGES
        ]
        self.register_buffer("_language_target", torch.tensor(target, dtype=torch.long), persistent=False)
        self._stats = _StatsAccumulator(names)
        self._context: dict[str, torch.Tensor | None] = {}
        self.aux_loss: torch.Tensor | None = None
        self.aux_losses: dict[str, torch.Tensor] = {}

    @property
    def expert_names(self) -> list[str]:
        """Routed experts in router order."""
        return list(self.experts)

    def freeze_experts(self, names: list[str] | tuple[str, ...], frozen: bool = True) -> None:
        """Set requires_grad=False (or back to True) on the named experts ("shared_expert" = the always-on one)."""
        for name in names:
            if name == "shared_expert" and self.shared_expert is not None:
                module = self.shared_expert
            elif name in self.experts:
                module = self.experts[name]
            else:
                raise MoLEError(f"no expert {name!r} to freeze; this layer has {self.expert_names}.")
            for param in module.parameters():
                param.requires_grad_(not frozen)

    def set_routing_context(
        self, token_mask: torch.Tensor | None = None, language_labels: torch.Tensor | None = None
    ) -> None:
        """Padding mask [B, L] and language labels [B, L] for the next forward calls that are given none.

        A decoder calls its MLP with the hidden states only; `upcycle`'s model hook replaces this context before
        every model forward. It is kept after the forward so that activation checkpointing, which re-runs the
        forward during backward, recomputes exactly the same losses. A mask longer than the sequence (generation
        with a KV cache) is aligned on its last L positions. The mask and labels only change the losses and
        statistics, never the output.
        """
        self._context = {"token_mask": token_mask, "language_labels": language_labels}

    def clear_routing_context(self) -> None:
        """Forget what `set_routing_context` set."""
        self._context = {}

    def stats(self, reset: bool = False) -> RouterStats:
        """Router statistics accumulated since the last reset (see `RouterStats`)."""
        out = self._stats.read()
        if reset:
            self._stats.reset()
        return out

    def reset_stats(self) -> None:
        """Drop the accumulated router statistics."""
        self._stats.reset()

    def _per_token(self, value: torch.Tensor | None, shape: torch.Size, what: str) -> torch.Tensor | None:
        """Align a [B, L]-like tensor with the hidden states' leading dims `shape`, flattened to [T]."""
        if value is None:
            return None
        if value.shape == shape or value.numel() == shape.numel():
            return value.reshape(-1)
        if len(shape) == 2 and value.dim() == 2 and value.shape[0] == shape[0] and value.shape[1] > shape[1]:
            return value[:, -shape[1] :].reshape(-1)
        raise MoLEError(
            f"{what} of shape {tuple(value.shape)} does not match the hidden states' tokens {tuple(shape)}; "
            "pass one entry per token (the model's attention_mask / labels of the same batch)."
        )

    def forward(
        self,
        hidden_states: torch.Tensor,
        token_mask: torch.Tensor | None = None,
        language_labels: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """hidden_states [..., D] -> [..., D].

        Args:
            hidden_states: x, any leading dims (usually [B, L, D]).
            token_mask: [...] True/1 for real tokens; padding is left out of the losses and statistics.
            language_labels: [...] 0 ko / 1 en / 2 other / −100 none, for language supervision and statistics.
        """
        lead_shape = hidden_states.shape[:-1]
        if token_mask is None:
            token_mask = self._context.get("token_mask")
        if language_labels is None:
            language_labels = self._context.get("language_labels")
        mask = self._per_token(token_mask, lead_shape, "token_mask")
        mask = None if mask is None else mask.to(device=hidden_states.device, dtype=torch.bool)  # [T]
        labels = self._per_token(language_labels, lead_shape, "language_labels")
        labels = None if labels is None else labels.to(hidden_states.device, torch.long)  # [T]

        x = hidden_states.reshape(-1, hidden_states.shape[-1])  # [T, D]
        logits = self.router(x).float()  # [T, E]
        if logits.shape != (x.shape[0], len(self.experts)):
            raise MoLEError(
                f"router returned logits of shape {tuple(logits.shape)}; expected {(x.shape[0], len(self.experts))} "
                f"(tokens x routed experts {self.expert_names})."
            )
        probs = logits.softmax(dim=-1)  # [T, E]
        gate, expert_index = probs.topk(self.config.top_k, dim=-1)  # [T, k], [T, k]
        if self.config.gate == "renormalize":
            gate = gate / gate.sum(dim=-1, keepdim=True)  # [T, k]
        factor = self.config.capacity_factor if self.training else self.config.eval_capacity_factor
        capacity = expert_capacity(x.shape[0], len(self.experts), self.config.top_k, factor)
        plan = plan_dispatch(expert_index, gate, len(self.experts), capacity)
        out = run_experts(x, plan, list(self.experts.values()))  # [T, D]
        if self.shared_expert is not None:
            out = out + self.shared_expert(x)  # [T, D]

        self._compute_losses(logits, expert_index, mask, labels)
        # Activation checkpointing re-runs this forward inside backward; those tokens were already counted.
        recomputing = torch._C._current_graph_task_id() != -1
        if self.config.track_stats and not recomputing:
            self._stats.update(probs.detach(), expert_index, plan.kept, mask, labels)
        return out.reshape(hidden_states.shape)  # [..., D]

    def _compute_losses(
        self,
        logits: torch.Tensor,
        expert_index: torch.Tensor,
        mask: torch.Tensor | None,
        labels: torch.Tensor | None,
    ) -> None:
        cfg = self.config
        parts = {"load_balancing": load_balancing_loss(logits, expert_index, mask)}
        total = cfg.load_balancing_loss_weight * parts["load_balancing"]
        if cfg.z_loss_weight > 0:
            parts["z"] = router_z_loss(logits, mask)
            total = total + cfg.z_loss_weight * parts["z"]
        if labels is not None and self.language_loss_weight > 0:
            known = labels >= 0
            target = torch.where(known, self._language_target[labels.clamp(min=0)], -100)  # [T]
            parts["language"] = language_loss(logits, target, mask)
            total = total + self.language_loss_weight * parts["language"]
        self.aux_losses = parts
        self.aux_loss = total

    def extra_repr(self) -> str:
        shared = ", shared_expert always on" if self.shared_expert is not None else ""
        return f"experts={self.expert_names}, top_k={self.config.top_k}, gate={self.config.gate}{shared}"
