"""The causal LM: any local AutoModelForCausalLM checkpoint, or a random Qwen2-like LM (tiny preset).

With `quantize="nf4"` (seed 004 QLoRA) the LM's linear layers load as bitsandbytes 4-bit NormalFloat
(`BitsAndBytesConfig(load_in_4bit, nf4, double quant, compute dtype)`), then peft's
`prepare_model_for_kbit_training` freezes the base and keeps norms/embeddings in float32; only adapters train.
A random-init LM is written to a temporary folder and reloaded quantised, so both paths quantise alike.
"""

from __future__ import annotations

from pathlib import Path

from torch import nn

from tbi_train.config import LMConfig
from tbi_train.errors import TrainError

__all__ = ["build_lm", "check_quantization"]


def build_lm(cfg: LMConfig, vocab_size: int) -> nn.Module:
    """The LM with at least `vocab_size` embedding rows (grown when the tokenizer gained special tokens)."""
    if cfg.quantize == "nf4":
        return _quantized_lm(cfg, vocab_size)
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


def _device() -> str:
    """Where a quantised LM lives: this process's GPU under a launcher, else the CPU."""
    import os

    import torch

    return f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}" if torch.cuda.is_available() else "cpu"


def check_quantization(cfg) -> None:
    """Refuse a `model.lm.quantize` run that cannot work here, before anything is built (a RunConfig).

    Checks that bitsandbytes imports and quantises a tensor to NF4 on this process's device, and that no
    phase trains the 4-bit base weights (`lm`; train `lm_lora`).
    """
    if cfg.model.lm.quantize == "none":
        return
    for phase in cfg.phases:
        if "lm" in phase.trainable:
            raise TrainError(
                f"phase {phase.name} trains 'lm', but model.lm.quantize={cfg.model.lm.quantize} keeps the LM's "
                "base weights in 4 bits, which cannot train; train 'lm_lora' (QLoRA) or set model.lm.quantize=none."
            )
    _check_bitsandbytes(cfg.model.lm)


def _check_bitsandbytes(cfg: LMConfig) -> None:
    import importlib.util

    import torch

    device = _device()
    fix = "install it with `pip install 'tbi-train[qlora]'` (bitsandbytes>=0.46 quantises on CUDA and x86-64 CPUs)"
    if importlib.util.find_spec("bitsandbytes") is None:
        raise TrainError(
            f"model.lm.quantize={cfg.quantize} needs bitsandbytes, which is not installed; {fix}, "
            "or set model.lm.quantize=none."
        )
    try:
        from bitsandbytes.functional import dequantize_4bit, quantize_4bit

        probe = torch.linspace(-1, 1, 64, device=device)
        packed, state = quantize_4bit(probe, quant_type="nf4", compress_statistics=True)
        error = float((dequantize_4bit(packed, state) - probe).abs().max())
    except Exception as exc:  # bitsandbytes raises many kinds for a device without a backend
        raise TrainError(
            f"model.lm.quantize={cfg.quantize}: bitsandbytes cannot quantise to NF4 on device {device} "
            f"({type(exc).__name__}: {exc}); use a CUDA GPU or an x86-64 CPU with bitsandbytes>=0.46 ({fix}), "
            "or set model.lm.quantize=none."
        ) from exc
    if not error < 0.2:  # NF4 of a ramp in [-1, 1]: the largest gap between its 16 levels is about 0.28
        raise TrainError(
            f"model.lm.quantize={cfg.quantize}: bitsandbytes' NF4 round trip on {device} is off by {error:.3f}; "
            "this bitsandbytes build does not quantise correctly here. Set model.lm.quantize=none."
        )


def _quantized_lm(cfg: LMConfig, vocab_size: int) -> nn.Module:
    """The LM loaded in NF4 with double quantisation and prepared for k-bit training (module docstring)."""
    import tempfile

    import torch
    from peft import prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    _check_bitsandbytes(cfg)
    device = _device()
    bf16 = device.startswith("cuda") and torch.cuda.is_bf16_supported()
    quant = BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.bfloat16 if bf16 else torch.float32,
    )
    with tempfile.TemporaryDirectory(prefix="tbi-nf4-") as tmp:
        source = cfg.path
        if source is None:
            from dataclasses import replace

            build_lm(replace(cfg, quantize="none", gradient_checkpointing=False), vocab_size).save_pretrained(
                tmp
            )
            source = tmp
        elif not Path(source).is_dir():
            raise TrainError(f"model.lm.path={cfg.path} is not a folder; point it at a local checkpoint.")
        lm = AutoModelForCausalLM.from_pretrained(
            source, quantization_config=quant, device_map={"": device}, local_files_only=True,
            trust_remote_code=cfg.trust_remote_code,
        )  # fmt: skip
    if lm.get_input_embeddings().num_embeddings < vocab_size:
        lm.resize_token_embeddings(vocab_size)
    from bitsandbytes.nn import Linear4bit

    for module in lm.modules():
        if isinstance(module, Linear4bit):
            module.register_load_state_dict_pre_hook(_load_quant_state)
            # bitsandbytes' AVX512-BF16 CPU path repacks a layer on its first eval forward into a layout that
            # cannot train (evaluation between phases would break the next phase) and whose save is lossy.
            module.support_avx512bf16_for_cpu = False
    return prepare_model_for_kbit_training(
        lm,
        use_gradient_checkpointing=cfg.gradient_checkpointing,
        gradient_checkpointing_kwargs={"use_reentrant": False},
    )


def _load_quant_state(module, state_dict, prefix, *_) -> None:
    """Let a saved 4-bit layer load: its packed weight copies in as usual; the quantisation statistics that
    bitsandbytes saves beside it (`weight.absmax`, `weight.quant_map`, ...) become the weight's quant_state."""
    from bitsandbytes.functional import QuantState

    stem = prefix + "weight."
    stats = {k[len(stem) :]: state_dict.pop(k) for k in [k for k in state_dict if k.startswith(stem)]}
    if stats:
        module.weight.quant_state = QuantState.from_dict(stats, device=module.weight.device)
