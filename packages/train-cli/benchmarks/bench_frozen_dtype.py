"""model.frozen_dtype=bf16: parameter memory and one LoRA-phase optimizer step, frozen LM in fp32 vs bf16.

Default size: the tiny preset. TBI_BENCH_FULL=1: a SmolLM2-135M-shaped LM (576 wide, 30 layers, 9/3 heads,
MLP 1536, 49152 vocabulary) and a 12-layer 384-wide SigLIP-like tower at 224 px / patch 16, both random.
Run with timing: TBI_BENCH_FULL=1 pytest packages/train-cli/benchmarks/bench_frozen_dtype.py --benchmark-only -s
"""

import dataclasses
import os

import pytest
import torch

from tbi_train.config import get_preset
from tbi_train.model import build_vlm
from tbi_train.model.frozen_dtype import cast_frozen_parts, frozen_groups, parameter_bytes
from tbi_train.train import build_optimizer, set_trainable, token_loss_sum

os.environ.setdefault("HF_HUB_OFFLINE", "1")
FULL = os.environ.get("TBI_BENCH_FULL") == "1"


def _cfg():
    cfg = get_preset("tiny")
    if not FULL:
        return cfg
    model = cfg.model
    lm = dataclasses.replace(model.lm, hidden_size=576, num_layers=30, num_heads=9, num_kv_heads=3,
                             intermediate_size=1536, initializer_range=0.02)  # fmt: skip
    vision = dataclasses.replace(model.vision, hidden_size=384, num_layers=12, num_heads=6, intermediate_size=1536,
                                 image_size=224, patch_size=16)  # fmt: skip
    tokenizer = dataclasses.replace(model.tokenizer, vocab_size=49152)
    return dataclasses.replace(
        cfg, model=dataclasses.replace(model, lm=lm, vision=vision, tokenizer=tokenizer)
    )


@pytest.fixture(scope="module", params=["fp32", "bf16"])
def setup(request, tmp_path_factory):
    torch.manual_seed(0)
    cfg = _cfg()
    vlm = build_vlm(cfg.model, cache_dir=tmp_path_factory.mktemp("run"), corpus=["빨간색 red 파란색 blue"])
    # a trained BPE stops at the corpus' merges: grow the embeddings to the configured vocabulary
    vocab = cfg.model.tokenizer.vocab_size if FULL else len(vlm.tokenizer)
    if vocab > vlm.lm.get_input_embeddings().num_embeddings:
        vlm.lm.resize_token_embeddings(vocab)
    before = parameter_bytes(vlm)
    lm_numel = sum(p.numel() for _, p in vlm.parameter_groups()["lm"])
    if request.param == "bf16":
        freed = cast_frozen_parts(vlm, frozen_groups(cfg.phases), torch.bfloat16)
        assert freed == 2 * lm_numel
    print(
        f"\n{request.param}: parameters {before / 2**20:.1f} MiB -> {parameter_bytes(vlm) / 2**20:.1f} MiB "
        f"(frozen LM {lm_numel / 1e6:.1f} M parameters)"
    )
    m = vlm.tokens_per_image
    ids = torch.randint(10, len(vlm.tokenizer), (4, m + 40))
    ids[:, 4 : 4 + m] = vlm.image_pad_id
    labels = ids.clone()
    labels[:, : 4 + m + 20] = -100
    side = vlm.vision.image_size
    batch = {
        "input_ids": ids,
        "attention_mask": torch.ones_like(ids),
        "pixel_values": torch.randn(4, 3, side, side),
    }
    return cfg, vlm, batch, labels


def test_bench_lora_step_frozen_lm(benchmark, setup):
    cfg, vlm, batch, labels = setup
    phase = cfg.phases[2]  # lm_lora: the LM base is frozen in every phase of the preset
    groups = vlm.parameter_groups()
    set_trainable(groups, phase)
    opt = build_optimizer(groups, phase, cfg.optim)
    vlm.train()

    def step():
        logits = vlm(**batch)  # [4, L, V]
        loss = token_loss_sum(logits, labels) / int((labels[:, 1:] != -100).sum())
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.item()

    assert torch.isfinite(torch.tensor(benchmark(step)))
