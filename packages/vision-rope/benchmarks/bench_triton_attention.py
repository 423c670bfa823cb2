"""Fused Triton windowed 2D-RoPE attention vs PyTorch SDPA, forward + backward of one attention layer.

On CUDA: 16 heads x head dim 64 on 64x64 and 128x128 patch grids with 8x8 windows, timing the Triton
kernel against dense global SDPA (all tokens) and SDPA with the window mask (same result, dense cost).
Without a GPU the CUDA cases skip (there is nothing to time) and a tiny interpreter call runs instead.

Also a script (``python packages/vision-rope/benchmarks/bench_triton_attention.py``) printing the README
tables: per-configuration registers/shared memory/spills from ahead-of-time compilation for sm_80 and
sm_90, and the roofline estimate for InternViT-6B.
"""

import os

os.environ.setdefault("TRITON_INTERPRET", "0" if __name__ == "__main__" else "1")

import argparse

import pytest
import torch
import torch.nn.functional as F

from tbi_vision_rope._triton_attention import compile_resource_usage, triton_windowed_rope_attention

HEADS, HEAD_DIM, WINDOW = 16, 64, 8
CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not CUDA, reason="times CUDA kernels; this machine has no GPU")


def window_major(grid: int, window: int, device) -> tuple[torch.Tensor, ...]:
    """seq_id, pos_h, pos_w [T] int32 of one grid x grid image in window-major order (benchmark setup)."""
    idx = torch.arange(grid * grid, device=device)
    row, col = idx // grid, idx % grid
    windows_per_row = -(-grid // window)
    order = torch.argsort((row // window * windows_per_row + col // window) * grid * grid + idx)
    row, col = row[order], col[order]
    return torch.zeros_like(row, dtype=torch.int32), row.int(), col.int()


def make_layer(grid: int, dtype, device, heads=HEADS, head_dim=HEAD_DIM):
    seq_id, pos_h, pos_w = window_major(grid, WINDOW, device)
    t = seq_id.numel()
    q, k, v = (
        torch.randn(t, heads, head_dim, device=device, dtype=dtype, requires_grad=True) for _ in range(3)
    )
    freq = 1.0 / 10000.0 ** (torch.arange(head_dim // 2, device=device) / (head_dim // 2))
    freq_h = freq.expand(heads, -1).clone().requires_grad_()
    freq_w = freq.flip(0).expand(heads, -1).clone().requires_grad_()
    return q, k, v, seq_id, pos_h, pos_w, freq_h, freq_w


def run_triton(layer):
    q, k, v, seq_id, pos_h, pos_w, freq_h, freq_w = layer
    out = triton_windowed_rope_attention(q, k, v, seq_id, pos_h, pos_w, freq_h, freq_w, WINDOW, "half")
    out.sum().backward()
    return out


def run_sdpa(layer, masked: bool):
    q, k, v, _, pos_h, pos_w, _, _ = layer
    mask = None
    if masked:  # same windows, dense [T, T] mask: what attention costs without the kernel's tile skipping
        wid = (pos_h // WINDOW) * 10_000 + pos_w // WINDOW
        mask = wid[:, None] == wid[None, :]
    out = F.scaled_dot_product_attention(
        q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1), attn_mask=mask
    )
    out.sum().backward()
    return out


def _timed(benchmark, fn):
    def call():
        fn()
        torch.cuda.synchronize()

    benchmark.pedantic(call, rounds=10, warmup_rounds=2)


@needs_cuda
@pytest.mark.parametrize("grid", [64, 128])
@pytest.mark.parametrize("impl", ["triton", "sdpa_dense_global", "sdpa_window_mask"])
def test_cuda_forward_backward(benchmark, grid, impl):
    layer = make_layer(grid, torch.bfloat16, "cuda")
    fn = {
        "triton": lambda: run_triton(layer),
        "sdpa_dense_global": lambda: run_sdpa(layer, masked=False),
        "sdpa_window_mask": lambda: run_sdpa(layer, masked=True),
    }[impl]
    benchmark.group = f"grid {grid}x{grid}, window {WINDOW}"
    _timed(benchmark, fn)


@pytest.mark.skipif(CUDA, reason="the CUDA cases time the kernel on this machine")
def test_cpu_interpreter_forward_backward(benchmark):
    """Tiny call through Triton's interpreter: one 10x10 image (windows cut at the edge), 2 heads."""
    layer = make_layer(10, torch.float32, "cpu", heads=2, head_dim=HEAD_DIM)
    out = benchmark.pedantic(lambda: run_triton(layer), rounds=1, iterations=1)
    q, k, v, _, pos_h, pos_w, *_ = layer
    assert out.shape == q.shape and torch.isfinite(out).all()
    assert all(x.grad is not None and torch.isfinite(x.grad).all() for x in (q, k, v, *layer[-2:]))
    # Tokens of different windows never mix: a window's output ignores changes to other windows' values.
    first = (pos_h // WINDOW == 0) & (pos_w // WINDOW == 0)
    v2 = v.detach().clone()
    v2[~first] += 1.0
    with torch.no_grad():
        out2 = triton_windowed_rope_attention(q, k, v2, *layer[3:6], *layer[6:], WINDOW, "half")
    torch.testing.assert_close(out2[first], out.detach()[first])


# --------------------------------------------------------------------------------------------------
# README tables (script)
# --------------------------------------------------------------------------------------------------


def resource_table(archs=(80, 90), head_dims=(64, 80, 128)) -> str:
    """Markdown table of registers, shared memory and spills per kernel configuration (bf16)."""
    lines = [
        "| arch | kernel | D | BLOCK_M x BLOCK_N | warps | stages | registers | shared (KiB) | spills (st/ld B) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in compile_resource_usage(archs=archs, head_dims=head_dims):
        tile = f"{r.block_m} x {r.block_n}" if r.block_n else f"{r.block_m} rows"
        lines.append(
            f"| sm_{r.arch} | {r.kernel} | {r.head_dim} | {tile} | {r.num_warps} | {r.num_stages} | "
            f"{r.registers} | {r.shared_bytes / 1024:.1f} | {r.spill_stores}/{r.spill_loads} |"
        )
    return "\n".join(lines)


def roofline_table(peak_tflops=989.0, bandwidth_tbs=3.35, window=8, block=(64, 64)) -> str:
    """InternViT-6B attention (45 layers: 41 windowed 8x8 + 4 global, 25 heads x 128) per layer call, bf16.

    FLOPs: forward 4 T K D_model (QK^T and PV over K keys per query), backward 2.5x forward (FA2).
    Bytes: forward reads q, k, v and writes out (4 tensors of T x D_model x 2 B) plus the log-sum-exp;
    backward reads q, k, v, out, dout and writes dq, dk, dv (8 tensors). With windows each K/V tile is read
    by about one query tile; dense attention is taken as ideally L2-cached (its best case). Time per layer =
    max(FLOPs / peak, bytes / bandwidth), H100 SXM dense bf16 peak by default.
    """
    d_model, layers, n_global = 3200, 45, 4
    rows = [
        "| image | tokens T | dense FLOPs/layer (fwd) | window FLOPs/layer (fwd, tiles) | bytes/layer (fwd) "
        "| dense ms/layer (fwd+bwd) | window ms/layer (fwd+bwd) | per-layer speed-up | 45-layer attention speed-up |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for side in (448, 1792):
        t = (side // 14) ** 2
        dense_flops = 4 * t * t * d_model
        keys_per_query = max(block[1], window * window)  # whole key tiles of the query tile's windows
        win_flops = 4 * t * keys_per_query * d_model
        bytes_fwd = 4 * t * d_model * 2 + t * 25 * 4
        bytes_total = 12 * t * d_model * 2 + 3 * t * 25 * 4

        def ms(flops, nbytes):
            return max(3.5 * flops / (peak_tflops * 1e12), nbytes / (bandwidth_tbs * 1e12)) * 1e3

        dense_ms, win_ms = ms(dense_flops, bytes_total), ms(win_flops, bytes_total)
        total = layers * dense_ms / ((layers - n_global) * win_ms + n_global * dense_ms)
        rows.append(
            f"| {side}² | {t} | {dense_flops / 1e9:.1f} G | {win_flops / 1e9:.2f} G | {bytes_fwd / 1e6:.1f} MB "
            f"| {dense_ms:.3f} | {win_ms:.3f} | {dense_ms / win_ms:.1f}x | {total:.1f}x |"
        )
    return "\n".join(rows)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--skip-compile", action="store_true", help="only print the roofline table")
    args = parser.parse_args()
    print(roofline_table())
    if not args.skip_compile:
        print()
        print(resource_table())
