"""Batched greedy generation with the seed's inference config (seed 000 section 5.3).

Each sample's conversation up to its last answer becomes the prompt, tokenised by the training Collator's
`encode_prompt` (same template, every `<image>` expanded to its frames' image-pad tokens); the answer is
the greedy continuation up to the end-of-turn token or `max_new_tokens`.

Samples go through the Collator's `prepare` first (a split InternVL sees its tiles, Qwen2.5-VL its vision
markers), as in training. A model with its own `generate` (Qwen2.5-VL's `NativeResolutionVLM`, whose image
tokens need 3-D M-RoPE positions) decodes itself; any other decodes through its LM with spliced embeddings.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = ["generate"]


@torch.no_grad()
def generate(
    vlm,
    samples: Sequence,
    max_new_tokens: int = 512,
    batch_size: int = 8,
    mode: str | None = None,
) -> list[str]:
    """Answers of `vlm` to `samples` (objects with id, images, conversations, meta), in input order.

    Prompts are left-padded into batches of `batch_size`; decoding is greedy, so results do not depend
    on the RNG. The model is put in eval mode and restored afterwards. `mode`: a foveated model's evaluation
    mode (`tbi_train.eval.modes`: coarse, coarse_fine, autoregressive); None: the model's own generation.
    """
    from tbi_train.data import Collator

    tokenizer = vlm.tokenizer
    collator = Collator(
        tokenizer, vlm.image_transform, vlm.tokens_per_image, image_token=vlm.config.tokenizer.image_pad_token
    )
    was_training = vlm.training
    vlm.eval()
    device = next(vlm.parameters()).device
    answers: list[str] = []
    try:
        for start in range(0, len(samples), batch_size):
            chunk = [collator.prepare(s) for s in samples[start : start + batch_size]]
            pixels = [collator.transform_images(s.images) for s in chunk]
            prompts = [
                collator.encode_prompt(
                    s.conversations, _media_frames(s), collator.media_tokens(p, _media_frames(s))
                ).input_ids
                for s, p in zip(chunk, pixels)
            ]
            input_ids, attention_mask = _left_pad(prompts, collator.pad_token_id)  # [B, L], [B, L]
            input_ids, attention_mask = input_ids.to(device), attention_mask.to(device)
            flat = [p for row in pixels for p in row]
            images = {k: v.to(device) for k, v in collator.pixel_inputs(flat).items()} if flat else {}
            pixel_values = images.get("pixel_values")  # [N_img, 3, H, W] or packed [sum P_i, D_patch]
            options = dict(
                max_new_tokens=max_new_tokens,
                do_sample=False,  # seed 000 5.3: temperature 0, no top-p/top-k, one beam, penalty 1.0
                num_beams=1,
                repetition_penalty=1.0,
                temperature=None,
                top_p=None,
                top_k=None,
                eos_token_id=tokenizer.eos_token_id,
                pad_token_id=collator.pad_token_id,
            )
            if mode is not None:
                from tbi_train.eval.modes import generate_in_mode

                out = generate_in_mode(vlm, mode, input_ids, attention_mask, pixel_values, **options)
            elif callable(getattr(vlm, "generate", None)):
                grid = images.get("image_grid_thw")  # [N_img, 3]
                out = vlm.generate(input_ids, attention_mask, pixel_values, grid, **options)  # [B, new]
            else:
                embeds = vlm.embed(input_ids, pixel_values)  # [B, L, D]
                # [B, new]: with inputs_embeds only the new tokens come back
                out = vlm.lm.generate(inputs_embeds=embeds, attention_mask=attention_mask, **options)
            answers.extend(t.strip() for t in tokenizer.batch_decode(out, skip_special_tokens=True))
    finally:
        vlm.train(was_training)
    return answers


def _media_frames(sample) -> list[int]:
    return list(sample.meta.get("media_frames", [1] * len(sample.images)))


def _left_pad(rows: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-aligned ids [B, L] and attention mask [B, L], so every prompt ends where generation starts."""
    length = max(len(r) for r in rows)
    ids = torch.full((len(rows), length), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), length), dtype=torch.long)
    for b, row in enumerate(rows):
        ids[b, length - len(row) :] = torch.tensor(row, dtype=torch.long)
        mask[b, length - len(row) :] = 1
    return ids, mask
