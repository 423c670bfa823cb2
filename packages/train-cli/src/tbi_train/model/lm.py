"""The causal LM: any local AutoModelForCausalLM checkpoint, or a random Qwen2-like LM (tiny preset)."""

from __future__ import annotations

from pathlib import Path

from torch import nn

from tbi_train.config import LMConfig
from tbi_train.errors import TrainError

__all__ = ["build_lm"]


def build_lm(cfg: LMConfig, vocab_size: int) -> nn.Module:
    """The LM with at least `vocab_size` embedding rows (grown when the tokenizer gained special tokens)."""
    if cfg.path is None:
        from transformers import Qwen2Config, Qwen2ForCausalLM

        config = Qwen2Config(
            vocab_size=vocab_size,
            hidden_size=cfg.hidden_size,
            intermediate_size=cfg.intermediate_size,
            num_hidden_layers=cfg.num_layers,
            num_attention_heads=cfg.num_heads,
            num_key_value_heads=cfg.num_kv_heads,
            max_position_embeddings=cfg.max_position_embeddings,
            initializer_range=cfg.initializer_range,
            tie_word_embeddings=True,
        )
        lm = Qwen2ForCausalLM(config)
    else:
        from transformers import AutoModelForCausalLM

        if not Path(cfg.path).is_dir():
            raise TrainError(f"model.lm.path={cfg.path} is not a folder; point it at a local checkpoint.")
        try:
            lm = AutoModelForCausalLM.from_pretrained(
                cfg.path, local_files_only=True, trust_remote_code=cfg.trust_remote_code
            )
        except ValueError as exc:
            if "trust_remote_code" in str(exc) and not cfg.trust_remote_code:
                raise TrainError(
                    f"{cfg.path} ships its own model code; if you trust it, pass --trust-remote-code "
                    "(or model.lm.trust_remote_code=true)."
                ) from exc
            raise
        if lm.get_input_embeddings().num_embeddings < vocab_size:
            lm.resize_token_embeddings(vocab_size)
    if cfg.gradient_checkpointing:
        lm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return lm
