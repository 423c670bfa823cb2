"""Batched greedy generation with the seed's inference config (seed 000 section 5.3).

Each sample's conversation up to its last answer becomes the prompt, tokenised by the training Collator's
`encode_prompt` (same template, every `<image>` expanded to its frames' image-pad tokens); the answer is
the greedy continuation up to the end-of-turn token or `max_new_tokens`.
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
) -> list[str]:
    """Answers of `vlm` to `samples` (objects with id, images, conversations, meta), in input order.

    Prompts are left-padded into batches of `batch_size`; decoding is greedy, so results do not depend
    on the RNG. The model is put in eval mode and restored afterwards.
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
            chunk = samples[start : start + batch_size]
            prompts = [collator.encode_prompt(s.conversations, _media_frames(s)).input_ids for s in chunk]
            input_ids, attention_mask = _left_pad(prompts, collator.pad_token_id)  # [B, L], [B, L]
            input_ids, attention_mask = input_ids.to(device), attention_mask.to(device)
            images = [vlm.image_transform(img) for s in chunk for img in s.images]
            pixel_values = torch.stack(images).to(device) if images else None  # [N_img, 3, H, W]
            embeds = vlm.embed(input_ids, pixel_values)  # [B, L, D]
            out = vlm.lm.generate(
                inputs_embeds=embeds,
                attention_mask=attention_mask,
                max_new_tokens=max_new_tokens,
                do_sample=False,  # seed 000 5.3: temperature 0, no top-p/top-k, one beam, penalty 1.0
                num_beams=1,
                repetition_penalty=1.0,
                temperature=None,
                top_p=None,
                top_k=None,
                eos_token_id=tokenizer.eos_token_id,
                pad_token_id=collator.pad_token_id,
            )  # [B, new]: with inputs_embeds only the new tokens come back
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
