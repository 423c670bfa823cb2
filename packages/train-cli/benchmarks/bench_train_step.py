"""One optimizer step of the tiny preset's VLM (forward, backward, clip, AdamW), batch 8 x 64 tokens.

- `test_bench_tiny_train_step`: eager step time of the projector pre-training and LM-LoRA phases.
- `test_bench_compile_step_ratio`: the LM-LoRA step with and without `compile=true` (torch.compile of LM and
  tower). Times are process CPU seconds (`time.process_time`, minimum of 5 steps after one warm-up), since
  wall time is unreliable on a shared machine; the first compiled steps (tracing + inductor codegen) are
  reported separately as the compile time. By default the model is cut to one tower / LM layer so that CI's
  `--benchmark-disable` run stays short; TBI_BENCH_FULL=1 uses the full tiny preset (README figures).

Run with timing: pytest packages/train-cli/benchmarks/bench_train_step.py --benchmark-only -s
"""

import os
import time

import pytest
import torch

from tbi_train.config import apply_overrides, get_preset
from tbi_train.model import build_vlm
from tbi_train.model.compile import compile_vlm
from tbi_train.train import build_optimizer, set_trainable, token_loss_sum

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _tiny(cache_dir, overrides=()):
    """(config, VLM, batch, labels): the tiny preset and one batch of 8 x 64 tokens with one image each."""
    torch.manual_seed(0)
    cfg = apply_overrides(get_preset("tiny"), list(overrides))
    vlm = build_vlm(cfg.model, cache_dir=cache_dir, corpus=["빨간색 red 파란색 blue"])
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


def _step_fn(cfg, vlm, batch, labels, phase_index):
    """A closure running one optimizer step of phase `phase_index`; returns the loss."""
    phase = cfg.phases[phase_index]
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

    return step


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return _tiny(tmp_path_factory.mktemp("run"))


@pytest.mark.parametrize("phase_index", [0, 2], ids=["projector_pretrain", "lm_lora"])
def test_bench_tiny_train_step(benchmark, tiny, phase_index):
    step = _step_fn(*tiny, phase_index)
    assert torch.isfinite(torch.tensor(benchmark(step)))


def _cpu_seconds(fn) -> float:
    start = time.process_time()
    fn()
    return time.process_time() - start


def test_bench_compile_step_ratio(benchmark, tmp_path):
    overrides = ["model.peft.lm.dropout=0"]  # eager and compiled draw different dropout masks
    if os.environ.get("TBI_BENCH_FULL") != "1":
        overrides += ["model.lm.num_layers=1", "model.vision.num_layers=1"]
    cfg, vlm, batch, labels = _tiny(tmp_path, overrides)
    step = _step_fn(cfg, vlm, batch, labels, 2)  # LM LoRA + projector
    _cpu_seconds(step)  # warm-up
    eager = min(_cpu_seconds(step) for _ in range(5))
    assert compile_vlm(vlm) == ["lm", "vision"]
    compile_cpu = _cpu_seconds(step)  # first call: dynamo tracing + inductor codegen
    compile_cpu += _cpu_seconds(step)  # the backward/optimizer-shape recompiles settle on the second call
    compiled = min(_cpu_seconds(step) for _ in range(5))
    assert vlm.lm._compiled_call_impl is not None, "compilation fell back to eager"
    loss = benchmark(step)
    assert torch.isfinite(torch.tensor(loss))
    benchmark.extra_info.update(
        eager_step_cpu_s=eager,
        compiled_step_cpu_s=compiled,
        ratio=eager / compiled,
        compile_cpu_s=compile_cpu,
    )
    print(
        f"\ntiny step CPU time: eager {eager:.3f} s, compiled {compiled:.3f} s, "
        f"speed-up {eager / compiled:.2f}x; compile {compile_cpu:.1f} s CPU"
    )
