"""One optimizer step of the tiny preset's VLM (forward, backward, clip, AdamW), batch 8 x 64 tokens.

Run with timing: pytest packages/train-cli/benchmarks/bench_train_step.py --benchmark-only
"""

import os

import pytest
import torch

from tbi_train.config import PhaseConfig, get_preset
from tbi_train.model import build_vlm
from tbi_train.train import build_optimizer, set_trainable, token_loss_sum

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    torch.manual_seed(0)
    cfg = get_preset("tiny")
    vlm = build_vlm(cfg.model, cache_dir=tmp_path_factory.mktemp("run"), corpus=["빨간색 red 파란색 blue"])
    m = vlm.tokens_per_image
    ids = torch.randint(10, len(vlm.tokenizer), (8, 64))
    ids[:, 4 : 4 + m] = vlm.image_pad_id  # one image per sample
    labels = ids.clone()
    labels[:, : 4 + m + 20] = -100  # answer-only loss on the last 20 tokens
    batch = {
        "input_ids": ids,
        "attention_mask": torch.ones_like(ids),
        "pixel_values": torch.randn(8, 3, 64, 64),
    }
    return cfg, vlm, batch, labels


@pytest.mark.parametrize("phase_index", [0, 2], ids=["projector_pretrain", "lm_lora"])
def test_bench_tiny_train_step(benchmark, tiny, phase_index):
    cfg, vlm, batch, labels = tiny
    phase: PhaseConfig = cfg.phases[phase_index]
    groups = vlm.parameter_groups()
    set_trainable(groups, phase)
    opt = build_optimizer(groups, phase, cfg.optim)
    vlm.train()

    def step():
        logits = vlm(**batch)  # [8, 64, V]
        loss = token_loss_sum(logits, labels) / int((labels[:, 1:] != -100).sum())
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for p in vlm.parameters() if p.requires_grad], 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.item()

    assert torch.isfinite(torch.tensor(benchmark(step)))
