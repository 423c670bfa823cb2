"""windowed_rope_attention against a dense float64 reference; backends, packing, errors."""

import os
import sys
import types

import pytest
import torch

import tbi_vision_rope.attention as attention_module
from tbi_vision_rope import (
    Rope2D,
    RopeConfig,
    VisionRopeError,
    available_backends,
    build_layout,
    windowed_rope_attention,
)
from tbi_vision_rope.packing import pack_images


def _independent_ids(grids, num_prefix, window, joint_frames, layout):
    """(window mask [T, T], global mask [T, T], pos_h, pos_w) in window-major order, derived from the grids
    and the permutation only."""
    tokens = []
    for image, (t, h, w) in enumerate(grids):
        tokens += [(image, -1, 0, 0)] * num_prefix
        tokens += [(image, f, r, c) for f in range(t) for r in range(h) for c in range(w)]
    image, frame, row, col = torch.tensor([tokens[i] for i in layout.perm.tolist()]).unbind(1)

    def same(x):
        return x[:, None] == x[None, :]

    prefix = frame == -1
    window_allowed = same(image) & same(frame)
    if window:
        in_window = same(row // window) & same(col // window)
        window_allowed &= in_window | (prefix[:, None] & prefix[None, :])
    global_allowed = same(image)
    if not (joint_frames or num_prefix):
        global_allowed &= same(frame)
    return window_allowed, global_allowed, row, col


CASES = [
    # grids, window, num_prefix, joint_frames, heads, head_dim, rope kind, rope layout
    ([(1, 5, 7)], 3, 0, False, 2, 8, "axial", "half"),
    ([(1, 6, 6), (1, 3, 9), (2, 4, 5)], 4, 0, False, 3, 12, "mixed", "interleaved"),
    ([(1, 4, 6), (1, 2, 2)], 2, 1, False, 2, 10, "axial", "interleaved"),
    ([(3, 3, 4)], 2, 0, True, 1, 6, "mixed", "half"),
    ([(1, 9, 3)], 0, 1, False, 2, 8, "axial", "half"),
    # 272-token images: global layers take the long-segment SDPA path
    ([(1, 17, 16), (1, 16, 17)], 5, 0, False, 2, 8, "mixed", "half"),
]


@pytest.mark.parametrize("case", CASES, ids=[f"case{i}" for i in range(len(CASES))])
@pytest.mark.parametrize("global_attention", [False, True])
def test_sdpa_backend_matches_dense_reference_values_and_gradients(
    case, global_attention, rotate_naive, attention_naive
):
    grids, window, num_prefix, joint, heads, dim, kind, rope_layout = case
    torch.manual_seed(0)
    layout = build_layout(grids, window, num_prefix=num_prefix, joint_frames=joint)
    rope = Rope2D(heads, dim, RopeConfig(kind=kind, layout=rope_layout)).double()
    q, k, v = (
        torch.randn(layout.num_tokens, heads, dim, dtype=torch.float64, requires_grad=True) for _ in range(3)
    )
    out = windowed_rope_attention(q, k, v, layout, rope, global_attention=global_attention, backend="sdpa")

    window_allowed, global_allowed, pos_h, pos_w = _independent_ids(grids, num_prefix, window, joint, layout)
    allowed = global_allowed if (global_attention or not window) else window_allowed
    freqs = rope.frequencies()
    want = attention_naive(
        rotate_naive(q, pos_h, pos_w, *freqs, rope_layout),
        rotate_naive(k, pos_h, pos_w, *freqs, rope_layout),
        v,
        allowed,
    )
    torch.testing.assert_close(out, want, rtol=1e-10, atol=1e-10)

    grad = torch.randn_like(out)
    params = [q, k, v] + ([rope.freq_h, rope.freq_w] if kind == "mixed" else [])
    got_grads = torch.autograd.grad(out, params, grad)
    want_grads = torch.autograd.grad(want, params, grad)
    for got, exp in zip(got_grads, want_grads):
        torch.testing.assert_close(got, exp, rtol=1e-9, atol=1e-9)


def test_windowed_attention_actually_restricts_to_windows():
    torch.manual_seed(0)
    layout = build_layout([(1, 8, 8)], window=4)
    q, k, v = torch.randn(3, 64, 2, 8).unbind(0)
    local = windowed_rope_attention(q, k, v, layout, backend="sdpa")
    full = windowed_rope_attention(q, k, v, layout, global_attention=True, backend="sdpa")
    assert not torch.allclose(local, full, atol=1e-3)
    # changing a value in another window leaves the first window's outputs unchanged
    v2 = v.clone()
    v2[16:] += 1.0
    again = windowed_rope_attention(q, k, v2, layout, backend="sdpa")
    torch.testing.assert_close(again[:16], local[:16])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_sdpa_backend_low_precision_is_close_to_float64(dtype, contract_reference):
    torch.manual_seed(0)
    layout = build_layout([(1, 7, 9), (1, 4, 4)], window=4)
    rope = Rope2D(2, 16, RopeConfig(kind="mixed"))
    q, k, v = torch.randn(3, layout.num_tokens, 2, 16).unbind(0)
    out = windowed_rope_attention(q.to(dtype), k.to(dtype), v.to(dtype), layout, rope, backend="sdpa")
    assert out.dtype == dtype
    want = contract_reference(
        q, k, v, layout.window_seq_id, layout.pos_h, layout.pos_w, *rope.frequencies(), layout.window, "half"
    )
    tol = 1e-5 if dtype == torch.float32 else 5e-2
    torch.testing.assert_close(out.double(), want, rtol=tol, atol=tol)


def test_image_gives_same_result_alone_or_packed():
    torch.manual_seed(0)
    images = [torch.randn(3, 70, 42), torch.randn(3, 28, 98), torch.randn(3, 56, 56)]
    packed = pack_images(images, patch_size=14)
    assert packed.grid_thw.tolist() == [[1, 5, 3], [1, 2, 7], [1, 4, 4]]
    assert packed.patches.shape == (15 + 14 + 16, 3 * 14 * 14)
    proj = torch.nn.Linear(3 * 14 * 14, 3 * 2 * 16)
    rope = Rope2D(2, 16, RopeConfig(kind="mixed"))

    def run(p):
        layout = build_layout(p.grid_thw, window=2, cu_seqlens=p.cu_seqlens)
        qkv = layout.to_window_order(proj(p.patches)).view(-1, 3, 2, 16)  # [T, 3, H, D]
        local = windowed_rope_attention(*qkv.unbind(1), layout, rope, backend="sdpa")
        both = windowed_rope_attention(
            local, local, local, layout, rope, global_attention=True, backend="sdpa"
        )
        return layout.to_input_order(both)

    together = packed.split(run(packed))
    for image, packed_out in zip(images, together):
        alone = run(pack_images([image], patch_size=14))
        torch.testing.assert_close(packed_out, alone, rtol=1e-5, atol=1e-6)


def test_pack_images_patch_content_and_merge_order():
    image = torch.arange(2 * 4 * 8, dtype=torch.float32).view(2, 4, 8)
    raster = pack_images([image], patch_size=2)
    assert raster.grid_thw.tolist() == [[1, 2, 4]]
    # token 5 = row 1, column 1 -> pixels [2:4, 2:4] of both channels
    torch.testing.assert_close(raster.patches[5], image[:, 2:4, 2:4].reshape(-1))
    merged = pack_images([image], patch_size=2, merge_size=2)
    # merge-block major: tokens 0-3 are the top-left 2x2 block, token 4 is row 0, column 2
    torch.testing.assert_close(merged.patches[2], image[:, 2:4, 0:2].reshape(-1))
    torch.testing.assert_close(merged.patches[4], image[:, 0:2, 4:6].reshape(-1))
    cropped = pack_images([torch.randn(3, 33, 30)], patch_size=14, crop=True)
    assert cropped.grid_thw.tolist() == [[1, 2, 2]]
    video = pack_images([torch.randn(3, 3, 28, 14)], patch_size=14)
    assert video.grid_thw.tolist() == [[3, 2, 1]]


@pytest.mark.parametrize(
    ("images", "kwargs", "match"),
    [
        ([torch.randn(3, 10, 30)], {}, r"images\[0\] is 10x30 pixels, smaller than one patch of 14x14"),
        ([torch.randn(3, 30, 28)], {}, "not a multiple of 14.*pass crop=True"),
        ([torch.randn(3, 28, 28), torch.randn(1, 28, 28)], {}, r"images\[1\] has shape \(1, 28, 28\)"),
        ([], {}, "got no images"),
    ],
)
def test_pack_images_rejects_bad_images(images, kwargs, match):
    with pytest.raises(VisionRopeError, match=match):
        pack_images(images, patch_size=14, **kwargs)


def test_triton_backend_receives_the_contract_arguments(monkeypatch, contract_reference):
    calls = []

    def fake_kernel(q, k, v, seq_id, pos_h, pos_w, freq_h, freq_w, window, rope_layout, scale=None):
        calls.append((seq_id.dtype, pos_h.dtype, freq_h.shape, freq_h.dtype, window, rope_layout, scale))
        return contract_reference(
            q, k, v, seq_id, pos_h, pos_w, freq_h, freq_w, window, rope_layout, scale
        ).to(q.dtype)

    monkeypatch.setitem(
        sys.modules,
        "tbi_vision_rope._triton_attention",
        types.SimpleNamespace(triton_windowed_rope_attention=fake_kernel),
    )
    torch.manual_seed(0)
    layout = build_layout([(1, 5, 7), (2, 3, 3), (1, 4, 4)], window=2, num_prefix=0)
    rope = Rope2D(2, 64, RopeConfig(layout="interleaved"))
    q, k, v = torch.randn(3, layout.num_tokens, 2, 64).unbind(0)
    for global_attention in (False, True):
        got = windowed_rope_attention(
            q, k, v, layout, rope, global_attention=global_attention, backend="triton"
        )
        want = windowed_rope_attention(
            q, k, v, layout, rope, global_attention=global_attention, backend="sdpa"
        )
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert calls[0] == (torch.int32, torch.int32, (2, 32), torch.float32, 2, "interleaved", 0.125)
    assert calls[1][4] == 0
    # without rope the kernel gets zero frequencies, i.e. no rotation
    windowed_rope_attention(q, k, v, layout, None, backend="triton")
    assert calls[-1][2] == (2, 32)


def test_flash_backend_passes_window_and_image_cu_seqlens(monkeypatch, attention_naive):
    seen = []

    def fake_varlen(q, k, v, cu_q, cu_k, max_q, max_k, dropout_p=0.0, softmax_scale=None, causal=True):
        seen.append((cu_q.tolist(), max_q, causal))
        ids = torch.repeat_interleave(torch.arange(len(cu_q) - 1), (cu_q[1:] - cu_q[:-1]).long())
        return attention_naive(q, k, v, ids[:, None] == ids[None, :], softmax_scale).to(q.dtype)

    monkeypatch.setitem(sys.modules, "flash_attn", types.SimpleNamespace(flash_attn_varlen_func=fake_varlen))
    torch.manual_seed(0)
    layout = build_layout([(1, 5, 3), (1, 2, 2)], window=2)
    q, k, v = torch.randn(3, layout.num_tokens, 2, 8).unbind(0)
    for global_attention in (False, True):
        got = attention_module._flash(q, k, v, layout, global_attention, 8**-0.5)
        want = windowed_rope_attention(q, k, v, layout, global_attention=global_attention, backend="sdpa")
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    assert seen[0] == ([0, 4, 6, 10, 12, 14, 15, 19], 4, False)
    assert seen[1] == ([0, 15, 19], 15, False)


def test_auto_picks_sdpa_on_cpu():
    assert available_backends("cpu") == ["sdpa"]
    layout = build_layout([(1, 2, 2)], window=1)
    q = torch.randn(4, 1, 64)
    torch.testing.assert_close(
        windowed_rope_attention(q, q, q, layout), windowed_rope_attention(q, q, q, layout, backend="sdpa")
    )


@pytest.mark.parametrize(
    ("shape", "kwargs", "match"),
    [
        ((15, 2, 8), {}, r"q has 15 tokens but the layout describes 16 \(grid_thw=\[\(1, 4, 4\)\]"),
        ((16, 2, 8), {"rope": Rope2D(3, 8)}, "rope was built for 3 heads x 8 dims but q has 2 x 8"),
        ((16, 2, 96), {"backend": "triton"}, r"supports head dims \(64, 72, 80, 128\), got 96"),
        ((16, 2, 8), {"backend": "cuda-magic"}, "unknown backend 'cuda-magic'"),
        ((16, 2, 8), {"backend": "flash"}, "backend='flash' needs the flash-attn package and CUDA tensors"),
    ],
)
def test_bad_calls_raise_before_any_kernel(shape, kwargs, match):
    layout = build_layout([(1, 4, 4)], window=2)
    q = torch.randn(shape)
    with pytest.raises(VisionRopeError, match=match):
        windowed_rope_attention(q, q, q, layout, **kwargs)


def test_mismatched_qkv_shapes_raise():
    layout = build_layout([(1, 2, 2)])
    with pytest.raises(VisionRopeError, match=r"q \(4, 1, 8\), k \(4, 1, 8\), v \(4, 2, 8\)"):
        windowed_rope_attention(torch.randn(4, 1, 8), torch.randn(4, 1, 8), torch.randn(4, 2, 8), layout)


@pytest.mark.parametrize("table_heads", [0, 1, 2])
@pytest.mark.parametrize("interleaved", [False, True])
def test_small_window_path_gradcheck(table_heads, interleaved):
    """Finite differences for q, k, v and the cos/sin tables (per-head, shared, or no rotation at all)."""
    from tbi_vision_rope._small_windows import small_window_attention

    torch.manual_seed(0)
    length, count, heads, dim = 3, 4, 2, 4
    q, k, v = (
        torch.randn(count * length, heads, dim, dtype=torch.float64, requires_grad=True) for _ in range(3)
    )
    inputs = [q, k, v]
    if table_heads:
        angle = torch.randn(count * length, table_heads, dim // 2, dtype=torch.float64)
        cos, sin = angle.cos().requires_grad_(), angle.sin().requires_grad_()
        inputs += [cos, sin]

    def fn(*args):
        tables = args[3:] if table_heads else (None, None)
        return small_window_attention(*args[:3], *tables, interleaved, length, 0.7, chunk_rows=2 * length)

    assert torch.autograd.gradcheck(fn, tuple(inputs))


def _vma_flags(address: int) -> list[str]:
    """``VmFlags`` of the mapping of this process that contains ``address`` (from /proc/self/smaps)."""
    inside = False
    with open("/proc/self/smaps") as smaps:
        for line in smaps:
            head = line.split()[0]
            if "-" in head and not head.endswith(":"):
                start, stop = (int(x, 16) for x in head.split("-"))
                inside = start <= address < stop
            elif inside and head == "VmFlags:":
                return line.split()[1:]
    raise AssertionError(f"no mapping contains {address:#x}")


@pytest.mark.skipif(
    not sys.platform.startswith("linux") or not os.path.exists("/sys/kernel/mm/transparent_hugepage"),
    reason="transparent huge pages are a Linux kernel feature",
)
def test_token_sized_buffers_are_advised_to_use_huge_pages():
    """The fused node's token-sized outputs and gradients (here 32 MB) carry MADV_HUGEPAGE (``hg``) and hold
    what is written; small requests still get an ordinary buffer of the asked shape and dtype."""
    from tbi_vision_rope._small_windows import empty_tokens

    big = empty_tokens((1 << 20, 2, 4), torch.float32, torch.device("cpu"))  # 32 MB
    huge_page = 1 << 21
    inner = -(-big.data_ptr() // huge_page) * huge_page  # first whole 2 MB page of the buffer
    assert "hg" in _vma_flags(inner)
    big.fill_(3.0)
    assert big.sum().item() == 3.0 * big.numel()
    small = empty_tokens((1000, 2, 4), torch.float64, torch.device("cpu"))
    assert small.shape == (1000, 2, 4) and small.dtype == torch.float64


@pytest.mark.parametrize("interleaved", [False, True])
def test_small_window_path_uneven_chunks_and_repeated_backward(interleaved, attention_naive):
    """5 windows in chunks of 2 (the last one short): values and gradients against dense float64 attention
    over rotated q, k with a block-diagonal mask; a second backward through the kept rotations and softmax
    (``retain_graph``) gives the same gradients."""
    from tbi_vision_rope._small_windows import small_window_attention

    torch.manual_seed(2)
    length, count, heads, dim = 4, 5, 2, 6
    tokens = length * count
    q, k, v = (torch.randn(tokens, heads, dim, requires_grad=True) for _ in range(3))
    angle = torch.randn(tokens, 1, dim // 2)  # shared by the heads
    out = small_window_attention(
        q, k, v, angle.cos(), angle.sin(), interleaved, length, 0.6, chunk_rows=2 * length
    )
    grad = torch.randn_like(out)
    first = torch.autograd.grad(out, (q, k, v), grad, retain_graph=True)
    second = torch.autograd.grad(out, (q, k, v), grad)

    q64, k64, v64 = (x.detach().double().requires_grad_() for x in (q, k, v))
    a_idx = torch.arange(0, dim, 2) if interleaved else torch.arange(dim // 2)
    b_idx = a_idx + 1 if interleaved else a_idx + dim // 2
    c, s = angle.double().cos(), angle.double().sin()

    def rotate(x):
        rotated = x.clone()
        rotated[..., a_idx] = x[..., a_idx] * c - x[..., b_idx] * s
        rotated[..., b_idx] = x[..., a_idx] * s + x[..., b_idx] * c
        return rotated

    window = torch.arange(tokens) // length
    expected = attention_naive(rotate(q64), rotate(k64), v64, window[:, None] == window[None, :], 0.6)
    torch.testing.assert_close(out.double(), expected, rtol=1e-5, atol=1e-5)
    reference = torch.autograd.grad(expected, (q64, k64, v64), grad.double())
    for got, again, want in zip(first, second, reference):
        torch.testing.assert_close(got.double(), want, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(again, got, rtol=0, atol=0)
