"""The fused Triton windowed 2D-RoPE attention against a naive float64 oracle written from the contract.

On a machine without a GPU the kernels run in Triton's interpreter; the variable must be set before the
kernel module is first imported (it decides at import whether the kernels are interpreted).
"""

import os

os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest
import torch
import triton

from tbi_vision_rope._triton_attention import (
    _LOG2E,
    _constexprs,
    _fwd_kernel,
    _window_bounds,
    triton_windowed_rope_attention,
)
from tbi_vision_rope.errors import VisionRopeError

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
GRIDS = ((5, 7), (8, 8), (3, 2))  # 105 tokens: two 64-row tiles, the boundary inside the 8x8 image


def pack(grids, window: int):
    """seq_id, pos_h, pos_w [T] int32 of images packed window-major (windows raster, tokens raster inside).

    W = 0 means one window per image; windows at the right/bottom edge are cut short.
    """
    seq, ph, pw = [], [], []
    for i, (h, w) in enumerate(grids):
        size = window or max(h, w)
        for r0 in range(0, h, size):
            for c0 in range(0, w, size):
                for r in range(r0, min(r0 + size, h)):
                    for c in range(c0, min(c0 + size, w)):
                        seq.append(i)
                        ph.append(r)
                        pw.append(c)
    return tuple(torch.tensor(x, dtype=torch.int32, device=DEVICE) for x in (seq, ph, pw))


def reference(q, k, v, seq_id, pos_h, pos_w, freq_h, freq_w, window, rope_layout, scale=None):
    """float64 attention straight from the contract: rotate, dense mask from seq_id/window, softmax."""
    d = q.shape[-1]
    q, k, v, freq_h, freq_w = (x.double() for x in (q, k, v, freq_h, freq_w))
    theta = pos_h.double()[:, None, None] * freq_h + pos_w.double()[:, None, None] * freq_w  # [T, H, D/2]
    cos, sin = theta.cos(), theta.sin()

    def rotate(x):  # [T, H, D]
        if rope_layout == "half":
            x1, x2 = x[..., : d // 2], x[..., d // 2 :]
        else:
            x1, x2 = x[..., 0::2], x[..., 1::2]
        y1, y2 = x1 * cos - x2 * sin, x2 * cos + x1 * sin
        if rope_layout == "half":
            return torch.cat([y1, y2], dim=-1)
        return torch.stack([y1, y2], dim=-1).flatten(-2)

    allowed = seq_id[:, None] == seq_id[None, :]  # [T, T]
    if window:
        wh, ww = pos_h // window, pos_w // window
        allowed = allowed & (wh[:, None] == wh[None, :]) & (ww[:, None] == ww[None, :])
    scores = torch.einsum("thd,uhd->htu", rotate(q), rotate(k)) * (scale if scale else d**-0.5)
    probs = scores.masked_fill(~allowed, float("-inf")).softmax(dim=-1)  # [H, T, T]
    return torch.einsum("htu,uhd->thd", probs, v)


def make_inputs(grids, window, heads, head_dim, dtype, seed=0, mixed=True):
    gen = torch.Generator().manual_seed(seed)
    seq_id, pos_h, pos_w = pack(grids, window)
    t = seq_id.numel()
    q, k, v = (torch.randn(t, heads, head_dim, generator=gen).to(DEVICE, dtype) for _ in range(3))
    half = head_dim // 2
    if mixed:  # learnable "mixed" RoPE: dense per-head frequencies for both axes
        freq_h = torch.rand(heads, half, generator=gen) * 0.6
        freq_w = torch.rand(heads, half, generator=gen) * 0.6
    else:  # axial: rows rotate the first half of the pairs, columns the second
        base = 100.0 ** (-torch.arange(half) / half)
        freq_h = torch.zeros(heads, half)
        freq_w = torch.zeros(heads, half)
        freq_h[:, : half // 2] = base[: half // 2]
        freq_w[:, half // 2 :] = base[half // 2 :]
    return q, k, v, seq_id, pos_h, pos_w, freq_h.to(DEVICE), freq_w.to(DEVICE)


def run_both(inputs, window, rope_layout, scale=None, freq_grad=True):
    """Kernel and oracle outputs and gradients (q, k, v, freq_h, freq_w) for one random upstream gradient."""
    q, k, v, seq_id, pos_h, pos_w, freq_h, freq_w = inputs
    leaves = [x.clone().requires_grad_() for x in (q, k, v)]
    freqs = [f.clone().requires_grad_(freq_grad) for f in (freq_h, freq_w)]
    out = triton_windowed_rope_attention(*leaves, seq_id, pos_h, pos_w, *freqs, window, rope_layout, scale)
    # bf16-representable, so that runs in different dtypes see exactly the same upstream gradient
    grad_out = torch.randn(out.shape, generator=torch.Generator().manual_seed(1)).bfloat16().to(out)
    wrt = leaves + (freqs if freq_grad else [])
    grads = torch.autograd.grad(out, wrt, grad_out)

    ref_leaves = [x.detach().double().requires_grad_() for x in (*leaves, *freqs)]
    ref_out = reference(*ref_leaves[:3], seq_id, pos_h, pos_w, *ref_leaves[3:], window, rope_layout, scale)
    ref_wrt = ref_leaves if freq_grad else ref_leaves[:3]
    ref_grads = torch.autograd.grad(ref_out, ref_wrt, grad_out.double())
    return out, grads, ref_out, ref_grads


def assert_all_close(out, grads, ref_out, ref_grads, tol):
    names = ["q", "k", "v", "freq_h", "freq_w"]
    torch.testing.assert_close(out.double(), ref_out, atol=tol, rtol=tol, msg=lambda m: f"out: {m}")
    for name, got, want in zip(names, grads, ref_grads):
        torch.testing.assert_close(got.double(), want, atol=tol, rtol=tol, msg=lambda m, n=name: f"d{n}: {m}")


@pytest.mark.parametrize(
    ("head_dim", "rope_layout", "window", "grids"),
    [
        (64, "half", 4, GRIDS),
        (72, "interleaved", 4, GRIDS),
        (80, "half", 0, GRIDS),
        (128, "interleaved", 3, GRIDS),
        (80, "interleaved", 4, ((3, 5),)),  # one sequence shorter than a block
    ],
)
def test_fp32_forward_and_gradients_match_float64_oracle(head_dim, rope_layout, window, grids):
    inputs = make_inputs(grids, window, heads=2, head_dim=head_dim, dtype=torch.float32)
    assert_all_close(*run_both(inputs, window, rope_layout), tol=1e-4)


def test_fp32_custom_scale_and_non_contiguous_inputs():
    q, k, v, *rest = make_inputs(GRIDS, 4, heads=3, head_dim=80, dtype=torch.float32, seed=3)
    q_strided = q.transpose(0, 1).contiguous().transpose(0, 1)  # same values, [T, H, D] with H-major strides
    assert not q_strided.is_contiguous()
    assert_all_close(*run_both((q_strided, k, v, *rest), 4, "half", scale=0.3), tol=1e-4)


def test_axial_rope_without_frequency_gradients():
    inputs = make_inputs(GRIDS, 4, heads=2, head_dim=64, dtype=torch.float32, mixed=False)
    out, grads, ref_out, ref_grads = run_both(inputs, 4, "half", freq_grad=False)
    assert len(grads) == 3
    assert_all_close(out, grads, ref_out, ref_grads, tol=1e-4)


@pytest.mark.parametrize(("head_dim", "rope_layout", "window"), [(80, "interleaved", 4), (128, "half", 0)])
def test_fp16_forward_and_gradients_match_float64_oracle(head_dim, rope_layout, window):
    inputs = make_inputs(GRIDS, window, heads=2, head_dim=head_dim, dtype=torch.float16)
    out, grads, ref_out, ref_grads = run_both(inputs, window, rope_layout)
    assert out.dtype == torch.float16 and all(g.dtype == torch.float16 for g in grads[:3])
    assert_all_close(out, grads, ref_out, ref_grads, tol=1e-2)


def test_bf16_inputs_load_and_cast_to_fp32():
    """bf16 tensors are read and converted exactly: the output is the fp32 output on the same values up to
    the final rounding to bf16 (the interpreter computes bf16 tiles in fp32). Gradients also see the
    bf16-rounded output (delta = rowsum(dO * O)), so they are held to bf16 precision against the oracle."""
    q, k, v, *rest = make_inputs(GRIDS, 4, heads=2, head_dim=72, dtype=torch.bfloat16, seed=5)
    out_bf16, grads_bf16, ref_out, ref_grads = run_both((q, k, v, *rest), 4, "interleaved")
    out_fp32, *_ = run_both((q.float(), k.float(), v.float(), *rest), 4, "interleaved")
    assert out_bf16.dtype == torch.bfloat16 and all(g.dtype == torch.bfloat16 for g in grads_bf16[:3])
    torch.testing.assert_close(out_bf16.float(), out_fp32, rtol=2.0**-7, atol=1e-5)  # one bf16 ulp
    assert_all_close(out_bf16, grads_bf16, ref_out, ref_grads, tol=2e-2)


def test_window_bounds_are_the_runs_of_equal_windows():
    for window in (0, 3, 4):
        seq_id, pos_h, pos_w = pack(GRIDS, window)
        start, end = _window_bounds(seq_id, pos_h, pos_w, window)
        wh, ww = (pos_h // window, pos_w // window) if window else (pos_h * 0, pos_w * 0)
        key = seq_id.long() * 10_000 + wh * 100 + ww
        idx = torch.arange(seq_id.numel(), device=DEVICE)
        for t in range(seq_id.numel()):
            members = idx[key == key[t]]
            assert (start[t].item(), end[t].item()) == (members.min().item(), members.max().item() + 1)
        assert start.dtype == end.dtype == torch.int32


def test_int64_positions_are_accepted():
    q, k, v, seq_id, pos_h, pos_w, freq_h, freq_w = make_inputs(((3, 5),), 4, 1, 64, torch.float32)
    out32 = triton_windowed_rope_attention(q, k, v, seq_id, pos_h, pos_w, freq_h, freq_w, 4, "half")
    out64 = triton_windowed_rope_attention(
        q, k, v, seq_id.long(), pos_h.long(), pos_w.long(), freq_h, freq_w, 4, "half"
    )
    torch.testing.assert_close(out32, out64, atol=0, rtol=0)


def _bad(**changes):
    q, k, v, seq_id, pos_h, pos_w, freq_h, freq_w = make_inputs(((3, 5),), 4, 2, 64, torch.float32)
    args = {"q": q, "k": k, "v": v, "seq_id": seq_id, "pos_h": pos_h, "pos_w": pos_w}
    args |= {"freq_h": freq_h, "freq_w": freq_w, "window": 4, "rope_layout": "half", "scale": None}
    return {**args, **{name: make(args) for name, make in changes.items()}}


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({x: (lambda a: torch.randn(15, 2, 96)) for x in "qkv"}, r"head dim 96 is not supported"),
        ({"q": lambda a: a["q"].double()}, r"float64"),
        ({"k": lambda a: a["k"][:-1]}, r"\(15, 2, 64\), \(14, 2, 64\)"),
        ({"v": lambda a: a["v"][0]}, r"v must be a \[T, H, D\] tensor, got \(2, 64\)"),
        ({"seq_id": lambda a: a["seq_id"][:-2]}, r"seq_id must be .*\(15,\), got \(13,\)"),
        ({"pos_w": lambda a: a["pos_w"].float()}, r"pos_w must be an integer tensor"),
        ({"freq_h": lambda a: a["freq_h"][:, :16]}, r"freq_h .*\(2, 32\), got \(2, 16\)"),
        ({"window": lambda a: -1}, r"window must be an int >= 0 .* got -1"),
        ({"window": lambda a: 2.0}, r"got 2\.0"),
        ({"rope_layout": lambda a: "rotate"}, r"rope_layout must be one of .*'rotate'"),
        ({"scale": lambda a: -0.5}, r"scale must be a positive"),
        ({"q": lambda a: a["q"][:0], "k": lambda a: a["k"][:0], "v": lambda a: a["v"][:0]}, r"at least one"),
    ],
)
def test_bad_input_raises_before_launch(changes, message):
    with pytest.raises(VisionRopeError, match=message):
        triton_windowed_rope_attention(**_bad(**changes))


@pytest.mark.parametrize(
    ("grids", "window", "head_dim", "rope_layout"),
    [
        (((16, 8),), 8, 80, "half"),  # two 8x8 windows (64 tokens each) in one 128-row tile
        (((8, 16),), 4, 64, "interleaved"),  # eight 4x4 windows in one 128-row tile
    ],
)
def test_forward_128_row_tile_packs_several_windows(grids, window, head_dim, rope_layout):
    """The BLOCK_M = 128 forward configuration (launched directly: the interpreter autotunes over one 64-row
    tile) holds all 128 tokens in a single query tile and still keeps every window to itself."""
    q, k, v, seq_id, pos_h, pos_w, freq_h, freq_w = make_inputs(
        grids, window, 2, head_dim, torch.float32, seed=7
    )
    t, h, _ = q.shape
    assert t == 128
    win_start, win_end = _window_bounds(seq_id, pos_h, pos_w, window)
    out = torch.empty_like(q)
    lse = torch.empty((t, h), dtype=torch.float32, device=DEVICE)
    scale = head_dim**-0.5
    grid = (triton.cdiv(t, 128), h)
    assert grid[0] == 1
    _fwd_kernel[grid](
        q, k, v, out, lse, seq_id, pos_h, pos_w, freq_h, freq_w, win_start, win_end, t, h, window,
        scale * _LOG2E, **_constexprs(q, window, rope_layout == "interleaved"), BLOCK_M=128, BLOCK_N=32,
    )  # fmt: skip
    want = reference(q, k, v, seq_id, pos_h, pos_w, freq_h, freq_w, window, rope_layout)
    torch.testing.assert_close(out.double(), want, atol=1e-4, rtol=1e-4)
