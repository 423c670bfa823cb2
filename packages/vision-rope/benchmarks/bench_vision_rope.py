"""Forward+backward of one attention layer's core (16 heads, head dim 64) on square patch grids, 8x8 windows.

Compared on the same q, k, v and 2D-RoPE:
- ``windowed``: ``windowed_rope_attention`` (backend from TBI_VISION_ROPE_BENCH_BACKEND, default sdpa);
- ``dense``: RoPE + ``F.scaled_dot_product_attention`` over all tokens (global attention);
- ``qwen``: transformers' ``Qwen2_5_VLVisionAttention`` (sdpa implementation) on the same tokens and window
  ``cu_seqlens``, with its qkv/proj linears set to identity so that only the attention core is timed.

Sizes: TBI_VISION_ROPE_BENCH_GRIDS (comma-separated grid sides; default "16,32" so the CI run with
--benchmark-disable is quick; the README figures use "64,128"); dense runs only up to
TBI_VISION_ROPE_BENCH_DENSE_MAX (default 64). Device: TBI_VISION_ROPE_BENCH_DEVICE (e.g. cuda, with
TBI_VISION_ROPE_BENCH_BACKEND=triton or flash on a GPU).
"""

import os
import statistics
import time

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tbi_vision_rope import Rope2D, apply_rope, build_layout, windowed_rope_attention

HEADS, HEAD_DIM, WINDOW = 16, 64, 8
GRIDS = [int(g) for g in os.environ.get("TBI_VISION_ROPE_BENCH_GRIDS", "16,32").split(",")]
BACKEND = os.environ.get("TBI_VISION_ROPE_BENCH_BACKEND", "sdpa")
DEVICE = os.environ.get("TBI_VISION_ROPE_BENCH_DEVICE", "cpu")
# Dense global attention is quadratic: at 128x128 one CPU fwd+bwd takes minutes, so it is skipped above this.
DENSE_MAX_GRID = int(os.environ.get("TBI_VISION_ROPE_BENCH_DENSE_MAX", "64"))
GROWTH_ROUNDS = int(os.environ.get("TBI_VISION_ROPE_BENCH_GROWTH_ROUNDS", "15"))


def _inputs(grid):
    torch.manual_seed(0)
    layout = build_layout([(1, grid, grid)], WINDOW, device=DEVICE)
    rope = Rope2D(HEADS, HEAD_DIM).to(DEVICE)
    q, k, v = (
        torch.randn(layout.num_tokens, HEADS, HEAD_DIM, device=DEVICE, requires_grad=True) for _ in range(3)
    )
    return layout, rope, q, k, v


def _windowed(layout, rope, q, k, v):
    return windowed_rope_attention(q, k, v, layout, rope, backend=BACKEND)


def _dense(layout, rope, q, k, v):
    freqs = rope.frequencies()
    qr = apply_rope(q, layout.pos_h, layout.pos_w, *freqs)  # [T, H, D]
    kr = apply_rope(k, layout.pos_h, layout.pos_w, *freqs)  # [T, H, D]
    out = F.scaled_dot_product_attention(
        qr.transpose(0, 1)[None], kr.transpose(0, 1)[None], v.transpose(0, 1)[None]
    )
    return out[0].transpose(0, 1)  # [T, H, D]


def _qwen_core(layout, rope):
    from transformers.models.qwen2_5_vl.configuration_qwen2_5_vl import Qwen2_5_VLVisionConfig
    from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import Qwen2_5_VLVisionAttention

    config = Qwen2_5_VLVisionConfig(hidden_size=HEADS * HEAD_DIM, num_heads=HEADS)
    config._attn_implementation = "sdpa"
    attention = Qwen2_5_VLVisionAttention(config).to(DEVICE)
    attention.qkv, attention.proj = nn.Identity(), nn.Identity()
    freq_h, freq_w = rope.frequencies()
    angle = layout.pos_h[:, None].float() * freq_h[0] + layout.pos_w[:, None].float() * freq_w[0]  # [T, D/2]
    cos_sin = (torch.cat([angle.cos()] * 2, -1), torch.cat([angle.sin()] * 2, -1))  # [T, D] each

    def run(layout, rope, q, k, v):
        hidden = torch.cat([q, k, v], dim=1).reshape(q.shape[0], -1)  # [T, 3*H*D]
        out = attention(hidden, cu_seqlens=layout.cu_window_seqlens, position_embeddings=cos_sin)  # [T, H*D]
        return out.view_as(q)

    return run


CASES = [
    (impl, g)
    for g in GRIDS
    for impl in ("windowed", "dense", "qwen")
    if impl != "dense" or g <= DENSE_MAX_GRID
]


@pytest.mark.parametrize(("impl", "grid"), CASES)
def test_attention_fwd_bwd(benchmark, impl, grid):
    layout, rope, q, k, v = _inputs(grid)
    fn = {"windowed": _windowed, "dense": _dense}.get(impl) or _qwen_core(layout, rope)
    grad = torch.randn_like(q)
    benchmark.group = f"grid {grid}x{grid}"
    benchmark.extra_info.update(
        tokens=layout.num_tokens, impl=impl, backend=BACKEND if impl == "windowed" else impl
    )

    def step():
        q.grad = k.grad = v.grad = None
        fn(layout, rope, q, k, v).backward(grad)

    # dense is minutes per round at 64x64 on a loaded CPU; the others are cheap enough for more rounds
    benchmark.pedantic(step, rounds=2 if impl == "dense" else 5, iterations=1, warmup_rounds=2)
    # every implementation computes the same windowed function except dense (global) attention
    reference = _windowed(layout, rope, q, k, v)
    if impl == "qwen":
        torch.testing.assert_close(fn(layout, rope, q, k, v), reference, rtol=1e-4, atol=1e-4)
    assert q.grad is not None and torch.isfinite(q.grad).all()


@pytest.mark.skipif(len(GRIDS) < 2, reason="growth needs two grids in TBI_VISION_ROPE_BENCH_GRIDS")
def test_windowed_growth_interleaved(benchmark):
    """Growth of the windowed fwd+bwd from the smallest to the largest grid, the two steps timed alternately
    in one process so that the machine's drift hits both alike (separately measured minima scatter ±20%
    on a shared CPU). Prints and records (extra_info) the ratio of the medians and of the minima."""
    small, large = min(GRIDS), max(GRIDS)
    steps, grads = {}, {}
    for grid in (small, large):
        layout, rope, q, k, v = _inputs(grid)
        grad = torch.randn_like(q)

        def step(layout=layout, rope=rope, q=q, k=k, v=v, grad=grad):
            q.grad = k.grad = v.grad = None
            _windowed(layout, rope, q, k, v).backward(grad)
            return q

        steps[grid] = step
    rounds = 3 if benchmark.disabled else GROWTH_ROUNDS

    def measure():
        times = {grid: [] for grid in steps}
        for step in steps.values():  # warm-up: the allocator's and the caches' first-call costs
            step()
            step()
        for _ in range(rounds):
            for grid, step in steps.items():
                start = time.perf_counter()
                grads[grid] = step().grad
                times[grid].append(time.perf_counter() - start)
        return times

    times = benchmark.pedantic(measure, rounds=1, iterations=1)
    growth = {
        "growth_median": statistics.median(times[large]) / statistics.median(times[small]),
        "growth_min": min(times[large]) / min(times[small]),
    }
    benchmark.group = "growth"
    benchmark.extra_info.update(
        grids=[small, large], tokens_ratio=(large / small) ** 2, rounds=rounds, **growth
    )
    print(
        f"\nwindowed fwd+bwd {small}x{small} -> {large}x{large} ({(large / small) ** 2:.0f}x tokens), {rounds} "
        f"interleaved rounds: median {1e3 * statistics.median(times[small]):.0f} -> "
        f"{1e3 * statistics.median(times[large]):.0f} ms, growth {growth['growth_median']:.2f}x by the medians, "
        f"{growth['growth_min']:.2f}x by the minima"
    )
    assert all(len(t) == rounds for t in times.values())
    assert all(torch.isfinite(g).all() for g in grads.values())
