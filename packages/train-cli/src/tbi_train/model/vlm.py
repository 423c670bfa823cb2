"""VLM = vision tower + projector + causal LM; image tokens spliced at the image-pad positions (LLaVA style).

features = vision(pixel_values)                     # [N_img, P, C] (a list of S of them with feature_layers)
tokens   = projector(features, grid).tokens         # [N_img, M, D]
embeds   = lm.embed(input_ids)                      # [B, L, D]
embeds[image_token_mask] = tokens.flatten(0, 1)     # masked_scatter, image-major then row-major
logits   = lm(inputs_embeds=embeds, attention_mask)  # [B, L, V]

With `model.projector.query_from_lm` (seed 003 foveated fine pass) the tokens above are the coarse pass;
the LM runs over the sequence up to the last instruction token and its final (normed) hidden state there,
[B, D], is the projector's `query=` for the fine tokens that replace them. With `model.lm.pyramid_drop`
the LM's decoder layers run one by one and image tokens are cut between stages (`PyramidDrop`).

The last instruction token is the last token of the first assistant header after the last image token
(the token before the first answer; at generation, the end of the prompt); without one, the last real token.
No answer token reaches the query or the drop ranking. Under an all-text loss (seed 003 stage 1) the prompt
tokens after the image are supervised too, and the fine image tokens, made from the whole instruction, can
carry some of it to them; answer-only losses are unaffected.
"""

from __future__ import annotations

import torch
from torch import nn

from tbi_train.config import ModelConfig
from tbi_train.errors import TrainError
from tbi_train.model.adapters import is_adapter_param
from tbi_train.model.image import ImageTransform
from tbi_train.model.pyramid_drop import PyramidDrop, check_lm
from tbi_train.model.vision import VisionTower

__all__ = ["VLM"]


class VLM(nn.Module):
    """A vision-language model built from three replaceable parts.

    Args:
        vision: the vision tower (patch features of one layer, or one per `feature_layers` entry).
        projector: a `tbi_projectors` projector mapping [N, P, C] to [N, M, D].
        lm: a transformers causal LM with hidden size D.
        tokenizer: the tokenizer, holding `image_pad_token`.
        config: the model config it was built from (saved with the weights).
        image_transform: PIL image -> [3, H, W] tensor for this tower.
    """

    def __init__(
        self,
        vision: VisionTower,
        projector: nn.Module,
        lm: nn.Module,
        tokenizer,
        config: ModelConfig,
        image_transform: ImageTransform,
    ):
        super().__init__()
        self.vision = vision
        self.projector = projector
        self.lm = lm
        self.tokenizer = tokenizer
        self.config = config
        self.image_transform = image_transform
        self.image_pad_id = tokenizer.convert_tokens_to_ids(config.tokenizer.image_pad_token)
        self.tokens_per_image = projector.num_output_tokens(grid=getattr(vision, "grids", vision.grid))
        self.pyramid_drop: PyramidDrop | None = None
        if config.lm.pyramid_drop:
            check_lm(lm)
            self.pyramid_drop = PyramidDrop(config.lm.pyramid_drop, lm.config.num_hidden_layers)
        self._header_ids: torch.Tensor | None = None  # rendered on first use: only the drop and query need it

    def encode_images(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """pixel_values [N_img, 3, H, W] -> LM-space image tokens [N_img, M, D]."""
        return self._project(self.vision(pixel_values))  # [N_img, M, D]

    def _project(self, features, query: torch.Tensor | None = None) -> torch.Tensor:
        """Tower features [N_img, P, C] (or S of them) -> tokens [N_img, M, D]; `query` [N_img, D]: fine pass."""
        extra = {} if query is None else {"query": query}
        return self.projector(features, grid=getattr(self.vision, "grids", self.vision.grid), **extra).tokens

    def embed(
        self,
        input_ids: torch.Tensor,
        pixel_values: torch.Tensor | None = None,
        image_token_mask: torch.Tensor | None = None,
        *,
        attention_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Text embeddings with the image-pad positions replaced by image tokens: [B, L, D]."""
        embeds, image_token_mask, n_slots = self._embed_text(input_ids, pixel_values, image_token_mask)
        if n_slots is None:
            return embeds
        features = self.vision(pixel_values.to(embeds.dtype))  # [N_img, P, C] or S x [N_img, P, C]
        tokens = self._project(features)  # [N_img, M, D]
        if tokens.shape[0] * tokens.shape[1] != n_slots:
            raise TrainError(
                f"batch has {n_slots} image-pad tokens but {tokens.shape[0]} images x {tokens.shape[1]} tokens = "
                f"{tokens.shape[0] * tokens.shape[1]}; the collator must expand each <image> to "
                f"{self.tokens_per_image} pad tokens."
            )
        spliced = _splice(embeds, image_token_mask, tokens)  # [B, L, D]
        if not self.config.projector.query_from_lm:
            return spliced
        query = self._lm_query(spliced, input_ids, attention_mask, image_token_mask)  # [B, D]
        owner = image_token_mask.nonzero()[:: tokens.shape[1], 0]  # [N_img] batch row of each image
        fine = self._project(features, query[owner])  # [N_img, M, D]
        return _splice(embeds, image_token_mask, fine)

    def _embed_text(
        self,
        input_ids: torch.Tensor,
        pixel_values: torch.Tensor | None,
        image_token_mask: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor, int | None]:
        """(text embeddings [B, L, D], image-pad mask [B, L], number of pad slots, or None when there are no
        images to splice). Pad tokens without pixel_values are an error."""
        embeds = self.lm.get_input_embeddings()(input_ids)  # [B, L, D]
        if image_token_mask is None:
            image_token_mask = input_ids == self.image_pad_id  # [B, L]
        n_slots = int(image_token_mask.sum())
        if pixel_values is None or pixel_values.shape[0] == 0:
            if n_slots:
                raise TrainError(f"batch has {n_slots} image-pad tokens but no pixel_values.")
            return embeds, image_token_mask, None
        return embeds, image_token_mask, n_slots

    def instruction_index(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        image_token_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """[B] the last instruction token: end of the first assistant header after the last image token, else
        the last real token. Nothing after it (no answer token) can influence what it sees."""
        length = input_ids.shape[1]
        idx = torch.arange(length, device=input_ids.device)
        real = (
            attention_mask.bool()
            if attention_mask is not None
            else torch.ones_like(input_ids, dtype=torch.bool)
        )
        if image_token_mask is None:
            image_token_mask = input_ids == self.image_pad_id
        last_real = torch.where(real, idx, -1).amax(dim=1)  # [B]
        last_image = torch.where(image_token_mask.bool(), idx, -1).amax(dim=1)  # [B]
        if self._header_ids is None:
            self._header_ids = _reply_header_ids(self.tokenizer)
        header = self._header_ids.to(input_ids.device)
        h = header.numel()
        if h == 0 or length < h:
            return last_real
        windows = input_ids.unfold(1, h, 1)  # [B, L - h + 1, h]
        starts = idx[: length - h + 1]
        match = (windows == header).all(dim=-1) & (
            starts.unsqueeze(0) > last_image.unsqueeze(1)
        )  # [B, L-h+1]
        match &= real[:, h - 1 :]
        first = match.long().argmax(dim=1)  # [B] first match (0 when none)
        return torch.where(match.any(dim=1), first + h - 1, last_real)

    def _lm_query(
        self,
        embeds: torch.Tensor,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None,
        image_token_mask: torch.Tensor,
    ) -> torch.Tensor:
        """The LM's final normed hidden state at the last instruction token, over the coarse-token sequence: [B, D]."""
        index = self.instruction_index(input_ids, attention_mask, image_token_mask)  # [B]
        cut = int(index.max()) + 1  # a causal LM's state at i only depends on tokens <= i
        mask = attention_mask[:, :cut] if attention_mask is not None else torch.ones_like(input_ids[:, :cut])
        out = self.lm(
            inputs_embeds=embeds[:, :cut],
            attention_mask=mask,
            position_ids=(mask.long().cumsum(-1) - 1).clamp(min=0),  # left or right padding alike
            output_hidden_states=True,
            use_cache=False,
            logits_to_keep=1,
        )
        hidden = out.hidden_states[-1]  # [B, cut, D] after the final norm
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), index]  # [B, D]

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        image_token_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Next-token logits [B, L, V] (position t predicts token t + 1).

        With PyramidDrop, positions of dropped image tokens carry zero logits (their labels are always masked).
        """
        embeds = self.embed(
            input_ids, pixel_values, image_token_mask, attention_mask=attention_mask
        )  # [B, L, D]
        if self.pyramid_drop is None:
            return self.lm(
                inputs_embeds=embeds, attention_mask=attention_mask, use_cache=False
            ).logits  # [B, L, V]
        if image_token_mask is None:
            image_token_mask = input_ids == self.image_pad_id  # [B, L]
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        query = self.instruction_index(input_ids, attention_mask, image_token_mask)  # [B]
        positions = torch.arange(input_ids.shape[1], device=input_ids.device).expand_as(input_ids)  # [B, L]
        return self.pyramid_drop.logits(self.lm, embeds, attention_mask, image_token_mask, query, positions)

    @torch.no_grad()
    def generate(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        image_grid_thw: torch.Tensor | None = None,
        **options,
    ) -> torch.Tensor:
        """New token ids [B, new] for left-padded prompts (transformers' `generate` options).

        Without PyramidDrop: the LM's own `generate` on the spliced embeddings. With it: greedy decoding with a
        KV cache whose layers keep different lengths (each caches the tokens it saw after the drops before
        it). This equals re-running the dropping forward over prompt + generated tokens, since the drops
        depend only on the prompt (the ranking query is the last prompt token and attention is causal).
        """
        from transformers import DynamicCache

        del image_grid_thw  # fixed-size images carry no grid
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        embeds = self.embed(input_ids, pixel_values, attention_mask=attention_mask)  # [B, L, D]
        if self.pyramid_drop is None:
            return self.lm.generate(inputs_embeds=embeds, attention_mask=attention_mask, **options)
        if options.get("do_sample") or (options.get("num_beams") or 1) > 1:
            raise TrainError(
                "model.lm.pyramid_drop generates greedily only; use do_sample=False, num_beams=1."
            )
        eos = options.get("eos_token_id", self.tokenizer.eos_token_id)
        pad = options.get("pad_token_id", self.tokenizer.pad_token_id)
        image = input_ids == self.image_pad_id  # [B, L]
        query = self.instruction_index(input_ids, attention_mask, image)  # [B]
        positions = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)  # [B, L] as transformers' generate
        cache = DynamicCache(config=self.lm.config)
        drop = self.pyramid_drop
        hidden, original, masks = drop.run(self.lm, embeds, attention_mask, image, query, positions, cache)
        last = (original == input_ids.shape[1] - 1).long().argmax(dim=1)  # [B] row of the prompt's last token
        state = hidden[torch.arange(hidden.shape[0], device=hidden.device), last]  # [B, D]
        position = positions[:, -1:]  # [B, 1]
        done = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
        max_new = int(options.get("max_new_tokens", 512))
        new: list[torch.Tensor] = []
        for _ in range(max_new):
            token = self.lm.get_output_embeddings()(state).argmax(dim=-1)  # [B]
            token = torch.where(done, torch.full_like(token, pad), token)
            new.append(token)
            done |= token == eos
            if bool(done.all()) or len(new) == max_new:
                break
            position = position + 1
            step = self.lm.get_input_embeddings()(token).unsqueeze(1)  # [B, 1, D]
            out, masks = drop.decode(self.lm, step, position, masks, cache)  # [B, 1, D]
            state = out[:, 0]
        return torch.stack(new, dim=1)  # [B, new]

    def component_modules(self) -> dict[str, nn.Module]:
        """The three parts by name (the names phases use in `trainable`)."""
        return {"vision": self.vision, "projector": self.projector, "lm": self.lm}

    def parameter_groups(self) -> dict[str, list[tuple[str, nn.Parameter]]]:
        """Parameters by group: "vision", "projector", "lm" (base weights) and their "*_lora" adapters.

        Tied weights (e.g. the LM's input and output embeddings) appear once.
        """
        groups: dict[str, list[tuple[str, nn.Parameter]]] = {}
        seen: set[int] = set()
        for comp, module in self.component_modules().items():
            for name, param in module.named_parameters():
                if id(param) in seen:
                    continue
                seen.add(id(param))
                group = f"{comp}_lora" if is_adapter_param(name) else comp
                groups.setdefault(group, []).append((f"{comp}.{name}", param))
        return groups


def _splice(embeds: torch.Tensor, image_token_mask: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """embeds [B, L, D] with image positions replaced by tokens [N_img, M, D] (image-major, row-major)."""
    mask = image_token_mask.unsqueeze(-1).expand_as(embeds)  # [B, L, D]
    return embeds.masked_scatter(mask, tokens.reshape(-1, tokens.shape[-1]).to(embeds.dtype))


def _reply_header_ids(tokenizer) -> torch.Tensor:
    """Token ids of the text that opens an assistant reply, as the Collator renders it (chat template or plain)."""
    from tbi_train.data.collator import PLAIN_ASSISTANT

    if getattr(tokenizer, "chat_template", None):
        turn = [{"role": "user", "content": "x"}]
        with_prompt = tokenizer.apply_chat_template(turn, tokenize=False, add_generation_prompt=True)
        without = tokenizer.apply_chat_template(turn, tokenize=False, add_generation_prompt=False)
        header = with_prompt[len(without) :] if with_prompt.startswith(without) else ""
    else:
        header = PLAIN_ASSISTANT
    ids = tokenizer(header, add_special_tokens=False)["input_ids"] if header else []
    return torch.tensor(ids, dtype=torch.long)
