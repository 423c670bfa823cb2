"""Tiny checkpoints for the tbi-merging tests, made on the fly (nothing downloaded)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def write_checkpoint(
    path: Path, tensors: dict[str, torch.Tensor], shards: int = 1, vocab: list[str] | None = None
):
    """A Hugging Face style directory: config.json, model.safetensors or N shards + index, tokenizer.json."""
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps({"model_type": "toy", "vocab_size": len(vocab or [])}))
    names = list(tensors)
    if shards == 1:
        save_file({n: tensors[n].contiguous() for n in names}, str(path / "model.safetensors"))
    else:
        weight_map = {}
        per = -(-len(names) // shards)
        for i in range(shards):
            shard = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
            part = names[i * per : (i + 1) * per]
            save_file({n: tensors[n].contiguous() for n in part}, str(path / shard))
            weight_map.update(dict.fromkeys(part, shard))
        index = {"metadata": {"total_size": 0}, "weight_map": weight_map}
        (path / "model.safetensors.index.json").write_text(json.dumps(index))
    if vocab is not None:
        tok = {
            "model": {
                "type": "WordLevel",
                "vocab": {t: i for i, t in enumerate(vocab)},
                "unk_token": vocab[0],
            },
            "added_tokens": [],
        }
        (path / "tokenizer.json").write_text(json.dumps(tok))
    return path


def toy_tensors(seed: int, base: dict[str, torch.Tensor] | None = None, dtype=torch.float32, noise=0.1):
    gen = torch.Generator().manual_seed(seed)
    shapes = {
        "embed_tokens.weight": (6, 4),
        "layers.0.w": (5, 7),
        "layers.0.b": (5,),
        "layers.1.w": (3, 3, 3),
        "lm_head.weight": (6, 4),
    }
    if base is None:
        out = {n: torch.randn(s, generator=gen).to(dtype) for n, s in shapes.items()}
        out["position_ids"] = torch.arange(8)
        return out
    return {
        n: (t + noise * torch.randn(t.shape, generator=gen).to(t.dtype))
        if t.is_floating_point()
        else t.clone()
        for n, t in base.items()
    }


@pytest.fixture
def toy(tmp_path):
    """base, en, ko toy checkpoints (2 shards each) and their tensors."""
    base = toy_tensors(0)
    en, ko = toy_tensors(1, base), toy_tensors(2, base)
    vocab = [f"t{i}" for i in range(6)]
    return {
        "base": write_checkpoint(tmp_path / "base", base, shards=2, vocab=vocab),
        "en": write_checkpoint(tmp_path / "en", en, shards=2, vocab=vocab),
        "ko": write_checkpoint(tmp_path / "ko", ko, shards=3, vocab=vocab),
        "tensors": {"base": base, "en": en, "ko": ko},
        "root": tmp_path,
    }


def tiny_qwen2_config():
    from transformers import Qwen2Config

    return Qwen2Config(
        vocab_size=128,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        tie_word_embeddings=False,
    )


@pytest.fixture(scope="session")
def qwen2(tmp_path_factory):
    """A tiny random Qwen2 base (bf16, sharded) and two perturbed fine-tunes, with a tokenizer."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast, Qwen2ForCausalLM

    root = tmp_path_factory.mktemp("qwen2")
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(tiny_qwen2_config()).to(torch.bfloat16)
    vocab = {f"w{i}": i for i in range(128)}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="w0"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="w0", pad_token="w1", eos_token="w2")
    paths = {}
    state = {k: v.clone() for k, v in model.state_dict().items()}
    for i, name in enumerate(("base", "en", "ko")):
        gen = torch.Generator().manual_seed(100 + i)
        if i:
            model.load_state_dict(
                {
                    k: (v.float() + 0.02 * torch.randn(v.shape, generator=gen)).to(v.dtype)
                    for k, v in state.items()
                }
            )
        paths[name] = root / name
        model.save_pretrained(paths[name], max_shard_size="20KB")
        tokenizer.save_pretrained(paths[name])
    model.load_state_dict(state)
    return paths


@pytest.fixture
def write_ckpt():
    """The :func:`write_checkpoint` helper (test modules cannot import conftest in importlib mode)."""
    return write_checkpoint


@pytest.fixture
def make_tensors():
    """The :func:`toy_tensors` helper."""
    return toy_tensors
