"""Step time of the tiny preset's VLM with and without `compile=true` (torch.compile of LM and tower), CPU.

One optimizer step (forward, backward, clip, AdamW) of the LM-LoRA phase, batch 8 x 64 tokens. Times are
process CPU seconds (`time.process_time`, minimum of 5 steps after one warm-up), since wall time is
unreliable on a shared machine; the first compiled step (tracing + inductor codegen) is reported
separately as the compile time. Default: the tiny preset cut to one tower / LM layer, so CI's
`--benchmark-disable` run stays short; TBI_BENCH_FULL=1 benchmarks the full tiny preset (README figures).

Run: TBI_BENCH_FULL=1 pytest packages/train-cli/benchmarks/bench_compile.py --benchmark-only -s
"""

import os
import time

import torch

from tbi_train.config import apply_overrides, get_preset
from tbi_train.model import build_vlm
from tbi_train.model.compile import compile_vlm
from tbi_train.train import build_optimizer, set_trainable, token_loss_sum

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _setup(tmp_path):
    torch.manual_seed(0)
    full = os.environ.get("TBI_BENCH_FULL") == "1"
    overrides = ["model.peft.lm.dropout=0"]
    if not full:
        overrides += ["model.lm.num_layers=1", "model.vision.num_layers=1"]
    cfg = apply_overrides(get_preset("tiny"), overrides)
    vlm = build_vlm(cfg.model, cache_dir=tmp_path, corpus=["빨간색 red 파란색 blue"])
    m = vlm.tokens_per_image
    ids = torch.randint(10, len(vlm.tokenizer), (8, 64))
    ids[:, 4 : 4 + m] = vlm.image_pad_id
    labels = ids.clone()
    labels[:, : 4 + m + 20] = -100
    batch = {
        "input_ids": ids,
        "attention_mask": torch.ones_like(ids),
        "pixel_values": torch.randn(8, 3, 64, 64),
    }
    phase = cfg.phases[2]  # LM LoRA + projector
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

    return vlm, step


def _cpu_seconds(fn) -> float:
    start = time.process_time()
    fn()
    return time.process_time() - start


def test_bench_compile_step_ratio(benchmark, tmp_path):
    vlm, step = _setup(tmp_path)
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
