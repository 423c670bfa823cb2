"""Validation loss of a saved model: mean next-token cross-entropy under teacher forcing (seed 003's val_loss).

    val_loss = Σ_samples Σ_t CE(logits_t, label_{t+1}) / Σ_samples n_targets

over the supervised tokens of the first `limit` validation samples (answers, or all text with the phase's
`loss_on="all_text"`), token-weighted like the training loss, so it is the training loss's held-out twin.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["validation_loss"]


def validation_loss(
    model_dir: str | Path,
    val: str | Path,
    limit: int,
    batch_size: int,
    max_length: int,
    loss_on: str = "answers",
    image_root: str | Path | None = None,
) -> dict:
    """{"val_loss": token-weighted mean CE, "val_tokens": supervised targets, "val_samples", "val_loss_on",
    "visual_tokens_per_image": image tokens the model gives the LM per image or video frame (the x axis of the
    report's token-efficiency frontier)}.

    Raises:
        ExperimentError: the validation samples have no supervised token (nothing to measure).
    """
    import torch

    from tbi_train.data import Collator, load_conversations
    from tbi_train.experiments import ExperimentError
    from tbi_train.run.evaluate import load_any_vlm
    from tbi_train.train import count_targets, token_loss_sum

    vlm = load_any_vlm(model_dir)
    vlm.eval()
    dataset = load_conversations(val, image_root=image_root)
    samples = [dataset[i] for i in range(min(limit, len(dataset)))]
    collator = Collator(vlm.tokenizer, vlm.image_transform, vlm.tokens_per_image, loss_on,
                        max_length=max_length, image_token=vlm.config.tokenizer.image_pad_token)  # fmt: skip
    total, n_targets = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(samples), batch_size):
            batch = collator(samples[start : start + batch_size])
            logits = vlm(
                input_ids=batch["input_ids"],
                attention_mask=batch["attention_mask"],
                pixel_values=batch["pixel_values"],
                image_token_mask=batch["image_token_mask"],
                **{k: batch[k] for k in ("image_grid_thw",) if k in batch},
            )  # [B, L, V]
            total += float(token_loss_sum(logits, batch["labels"]))
            n_targets += count_targets(batch["labels"])
    if n_targets == 0:
        raise ExperimentError(
            f"{val}: the first {len(samples)} validation samples have no supervised token ({loss_on}); "
            "check that they have answers, or raise eval.limit."
        )
    return {"val_loss": total / n_targets, "val_tokens": n_targets, "val_samples": len(samples),
            "val_loss_on": loss_on, "visual_tokens_per_image": int(vlm.tokens_per_image)}  # fmt: skip
