"""PyramidDrop inside the LM (seed 000 B3/E2/F*): the decoder layers run one by one and image tokens are cut
between them.

Stage s = 1..S ends after decoder layer l_s = round(s * L / (S + 1)) (a 32-layer LM with 3 stages: 8/16/24,
the paper's setting). There the image tokens are ranked by the head-averaged attention the last instruction
token pays them under layer l_s + 1's query/key projections (after RoPE), and the top

    keep_s = floor(N * prod_{i <= s} (1 - r_i))        N = the sample's image tokens before any drop

are kept in their original order; text is never dropped. With equal rates r this is PyramidDrop's
floor(N * lambda^s), lambda = 1 - r (what `tbi_projectors.PyramidDropHook` computes, and what the tests
compare against). Kept tokens keep their original RoPE positions. The ranking and cutting are
`tbi_projectors`' `decoder_query_key`, `last_instruction_attention` and `rank_and_drop`; this module only
drives them with per-stage rates, which the hook's single lambda cannot express.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from tbi_train.errors import TrainError

__all__ = ["PyramidDrop", "check_lm"]


class PyramidDrop:
    """Runs a Llama/Qwen-style causal LM layer by layer, dropping image tokens after each stage.

    Args:
        rates: drop rate r_s in [0, 1) of each stage (seed 000: 0.5, 0.3, 0.1).
        num_layers: the LM's decoder depth L (needs L > S so every stage ends before the last layer).

    Raises:
        TrainError: rates outside [0, 1), or more stages than the LM has layers to separate them.
    """

    def __init__(self, rates: tuple[float, ...], num_layers: int):
        bad = [r for r in rates if not 0.0 <= r < 1.0]
        if not rates or bad:
            raise TrainError(
                f"model.lm.pyramid_drop={list(rates)}: give one drop rate in [0, 1) per stage (seed 000: 0.5,0.3,0.1)."
            )
        stages = len(rates)
        self.layers = tuple(round(s * num_layers / (stages + 1)) for s in range(1, stages + 1))
        if len(set(self.layers)) != stages or self.layers[0] < 1 or self.layers[-1] >= num_layers:
            raise TrainError(
                f"model.lm.pyramid_drop has {stages} stages but the LM has {num_layers} decoder layers; "
                f"use at most {num_layers - 1} stages."
            )
        self.rates = tuple(float(r) for r in rates)
        self.keep_fractions = tuple(math.prod(1.0 - r for r in self.rates[: s + 1]) for s in range(stages))

    def keep_counts(self, num_image_tokens: torch.Tensor, stage: int) -> torch.Tensor:
        """floor(N * prod_{i <= s} (1 - r_i)) for stage s >= 1; N [B] -> [B]."""
        factor = self.keep_fractions[stage - 1]
        return torch.floor(num_image_tokens.double() * factor + 1e-9).long()

    def run(
        self,
        lm: nn.Module,
        embeds: torch.Tensor,
        attention_mask: torch.Tensor,
        image_mask: torch.Tensor,
        query_index: torch.Tensor,
        position_ids: torch.Tensor,
        cache=None,
    ) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
        """The LM's final (normed) hidden states of the kept tokens and their original positions.

        Args:
            lm: a transformers causal LM whose decoder (`get_decoder()`) has `layers`, `norm`, `rotary_emb`.
            embeds: [B, L, D] input embeddings (image tokens spliced in).
            attention_mask: [B, L] 1 for real tokens.
            image_mask: [B, L] bool, image-token positions.
            query_index: [B] the last instruction token (text) whose attention ranks the image tokens.
            position_ids: [B, L] RoPE positions.
            cache: a transformers `DynamicCache` to fill for `decode` (each layer caches the tokens it saw).

        Returns:
            hidden [B, L', D] after the final norm (zero rows on padding), positions [B, L'] index of each
            row in the input sequence (-1 on padding), and the key mask [B, L_i] each layer attended over.
        """
        from tbi_projectors import (
            decoder_query_key,
            gather_positions,
            last_instruction_attention,
            rank_and_drop,
        )

        decoder = lm.get_decoder()
        layers = decoder.layers
        b, length, _ = embeds.shape
        hidden = embeds  # [B, L, D]
        mask = attention_mask.bool()  # [B, L]
        image = image_mask.bool() & mask  # [B, L]
        query = query_index.long()  # [B]
        positions = position_ids  # [B, L]
        original = torch.arange(length, device=embeds.device).expand(b, length)  # [B, L]
        n_image = image.sum(dim=1)  # [B]
        rope = decoder.rotary_emb(hidden, positions)  # (cos, sin) [B, L, d]
        attn_mask = self._mask(mask, hidden.dtype, lm.config)
        _set_routing(lm, mask)
        cached = {} if cache is None else {"past_key_values": cache, "use_cache": True}
        layer_masks = []
        stage = 0
        for i, layer in enumerate(layers):
            layer_masks.append(mask)
            hidden = layer(
                hidden, attention_mask=attn_mask, position_ids=positions, position_embeddings=rope, **cached
            )
            if stage < len(self.layers) and i + 1 == self.layers[stage]:
                stage += 1
                with torch.no_grad():  # the ranking picks indices; no gradient flows through it
                    q, k = decoder_query_key(layers[i + 1], hidden, rope)  # [B, H, L, d], [B, H_kv, L, d]
                    scores = last_instruction_attention(q, k, query, mask)  # [B, L]
                keep = self.keep_counts(n_image, stage)  # [B]
                res = rank_and_drop(hidden, scores, image, keep, mask)
                hidden = res.hidden_states  # [B, L', D]
                query = (res.positions == query.view(-1, 1)).long().argmax(dim=1)  # [B]
                mask, image = res.attention_mask.bool(), res.image_mask  # [B, L']
                positions = gather_positions(positions, res.positions, 0)  # [B, L']
                original = gather_positions(original, res.positions, -1)  # [B, L']
                rope = decoder.rotary_emb(hidden, positions)
                attn_mask = self._mask(mask, hidden.dtype, lm.config)
                _set_routing(lm, mask)
        hidden = decoder.norm(hidden)  # [B, L', D]
        return hidden, original, layer_masks

    def decode(
        self,
        lm: nn.Module,
        embeds: torch.Tensor,
        position_ids: torch.Tensor,
        layer_masks: list[torch.Tensor],
        cache,
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """One generated token through every layer against that layer's cache (filled by `run`).

        The token is text, so nothing is dropped: each layer attends over the tokens it kept plus the new
        ones, which is what a full forward over prompt + generated tokens computes (the drops depend only on
        the prompt). embeds [B, 1, D], position_ids [B, 1] -> final normed hidden [B, 1, D], updated masks.
        """
        decoder = lm.get_decoder()
        rope = decoder.rotary_emb(embeds, position_ids)
        masks = [torch.cat([m, torch.ones_like(m[:, :1])], dim=1) for m in layer_masks]  # [B, L_i + 1]
        _set_routing(lm, torch.ones_like(masks[0][:, :1]))
        hidden = embeds  # [B, 1, D]
        for layer, keys in zip(decoder.layers, masks):
            attn_mask = self._mask(keys, hidden.dtype, lm.config, last_only=True)  # [B, 1, 1, L_i + 1]
            hidden = layer(
                hidden,
                attention_mask=attn_mask,
                position_ids=position_ids,
                position_embeddings=rope,
                past_key_values=cache,
                use_cache=True,
            )
        return decoder.norm(hidden), masks

    def logits(
        self,
        lm: nn.Module,
        embeds: torch.Tensor,
        attention_mask: torch.Tensor,
        image_mask: torch.Tensor,
        query_index: torch.Tensor,
        position_ids: torch.Tensor,
    ) -> torch.Tensor:
        """Next-token logits [B, L, V] at the input positions; dropped (image) positions get zero logits."""
        hidden, original, _ = self.run(lm, embeds, attention_mask, image_mask, query_index, position_ids)
        logits = lm.get_output_embeddings()(hidden)  # [B, L', V]
        b, length = embeds.shape[:2]
        # Padding rows (position -1) land in a spare last slot that is cut off.
        index = original.masked_fill(original < 0, length).unsqueeze(-1).expand_as(logits)  # [B, L', V]
        out = logits.new_zeros(b, length + 1, logits.shape[-1])  # [B, L + 1, V]
        return out.scatter(1, index, logits)[:, :length]  # [B, L, V]

    @staticmethod
    def _mask(mask: torch.Tensor, dtype: torch.dtype, config, last_only: bool = False) -> torch.Tensor:
        """[B, 1, L, L] causal padding mask ([B, 1, 1, L]: the last query only): bool for sdpa, additive for eager.

        Key j is visible to query i iff j <= i and j is real; every row also sees itself, so padding rows
        (whose outputs nothing reads) never have an empty softmax.
        """
        if last_only:  # the newest token is real and last: it sees every real key
            allowed = mask.bool().unsqueeze(1)  # [B, 1, L]
        else:
            length = mask.shape[1]
            idx = torch.arange(length, device=mask.device)
            allowed = (idx.view(1, -1) <= idx.view(-1, 1)).unsqueeze(0) & mask.bool().unsqueeze(
                1
            )  # [B, L, L]
            allowed = allowed | torch.eye(length, dtype=torch.bool, device=mask.device)
        impl = getattr(config, "_attn_implementation", "sdpa")
        if impl == "sdpa":
            return allowed.unsqueeze(1)
        if impl == "eager":
            zero = torch.zeros((), dtype=dtype, device=mask.device)
            return torch.where(allowed, zero, torch.finfo(dtype).min).unsqueeze(1)
        raise TrainError(
            f"model.lm.pyramid_drop runs the decoder layers itself with a 4-D mask, which attention "
            f"implementation {impl!r} does not take; load the LM with attn_implementation='sdpa' or 'eager'."
        )


def check_lm(lm: nn.Module) -> None:
    """Raise a TrainError unless `lm` is a Llama/Qwen-style LM the layer loop can drive."""
    decoder = lm.get_decoder() if hasattr(lm, "get_decoder") else None
    needed = ("layers", "norm", "rotary_emb")
    if decoder is None or not all(hasattr(decoder, n) for n in needed):
        raise TrainError(
            f"model.lm.pyramid_drop needs a Llama/Qwen-style LM (decoder with layers, norm, rotary_emb); "
            f"{type(lm).__name__} is not one: turn pyramid_drop off for this LM."
        )
    types = set(getattr(lm.config, "layer_types", None) or ["full_attention"])
    if types != {"full_attention"}:
        raise TrainError(
            f"model.lm.pyramid_drop supports full-attention LMs only; this LM has layer types {sorted(types)}."
        )


def _set_routing(lm: nn.Module, mask: torch.Tensor) -> None:
    """MoLE layers (tbi_mole) read their padding mask from a context the LM's forward hook normally sets;
    the layer loop bypasses that forward, so it sets the current (shortened) mask itself."""
    for module in lm.modules():
        if hasattr(module, "set_routing_context"):
            module.set_routing_context(mask, None)
