"""2D-RoPE frequencies and rotation against naive float64 formulas."""

import math

import pytest
import torch

from tbi_vision_rope import Rope2D, RopeConfig, VisionRopeError, apply_rope


def test_axial_frequencies_match_qwen2_vl_formula_for_head_dim_80():
    rope = Rope2D(num_heads=3, head_dim=80)
    freq_h, freq_w = rope.frequencies()
    inv_freq = 1.0 / (10000 ** (torch.arange(0, 40, 2, dtype=torch.float64) / 40))  # Qwen2-VL, 20 freqs
    assert freq_h.shape == freq_w.shape == (3, 40)
    torch.testing.assert_close(freq_h[:, :20].double(), inv_freq.expand(3, -1), rtol=1e-6, atol=0)
    torch.testing.assert_close(freq_w[:, 20:].double(), inv_freq.expand(3, -1), rtol=1e-6, atol=0)
    assert not freq_h[:, 20:].any() and not freq_w[:, :20].any()


def test_axial_seed_dims_split_head_dim_128_into_64_and_64():
    rope = Rope2D(2, 128, RopeConfig(dim_h=64, dim_w=64))
    freq_h, freq_w = rope.frequencies()
    assert (freq_h[0] != 0).sum() == 32 and (freq_w[0] != 0).sum() == 32
    assert math.isclose(float(freq_h[0, 1]), 10000 ** (-2 / 64), rel_tol=1e-6)


def test_partial_rotation_leaves_unused_pairs_unrotated():
    rope = Rope2D(1, 16, RopeConfig(dim_h=4, dim_w=4))
    freq_h, freq_w = rope.frequencies()
    assert freq_h[0, :2].all() and freq_w[0, 2:4].all() and not (freq_h[0, 4:].any() or freq_w[0, 4:].any())


@pytest.mark.parametrize("layout", ["half", "interleaved"])
@pytest.mark.parametrize("kind", ["axial", "mixed"])
def test_apply_rope_matches_naive_pair_rotation(layout, kind, rotate_naive):
    torch.manual_seed(0)
    rope = Rope2D(3, 10, RopeConfig(kind=kind, layout=layout, seed=3))
    x = torch.randn(7, 3, 10)
    pos_h, pos_w = torch.randint(0, 9, (7,)), torch.randint(0, 13, (7,))
    got = apply_rope(x, pos_h, pos_w, *rope.frequencies(), layout)
    want = rotate_naive(x, pos_h, pos_w, *rope.frequencies(), layout)
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", ["axial", "mixed"])
def test_rotated_dot_product_depends_only_on_relative_position(kind):
    torch.manual_seed(1)
    rope = Rope2D(2, 12, RopeConfig(kind=kind))
    q, k = torch.randn(2, 1, 2, 12).double().unbind(0)
    freqs = [f.double() for f in rope.frequencies()]

    def score(qh, qw, kh, kw):
        qr = apply_rope(q, torch.tensor([qh]), torch.tensor([qw]), *freqs)
        kr = apply_rope(k, torch.tensor([kh]), torch.tensor([kw]), *freqs)
        return (qr * kr).sum(-1)

    torch.testing.assert_close(score(3, 5, 1, 2), score(10, 9, 8, 6))
    assert not torch.allclose(score(3, 5, 1, 2), score(3, 5, 2, 1))


def test_mixed_frequencies_are_learnable_dense_and_per_head():
    rope = Rope2D(4, 16, RopeConfig(kind="mixed"))
    assert {n for n, p in rope.named_parameters() if p.requires_grad} == {"freq_h", "freq_w"}
    freq_h, freq_w = rope.frequencies()
    assert freq_h.shape == (4, 8) and freq_h.all() and freq_w.all()
    assert not torch.allclose(freq_h[0], freq_h[1])
    # each head's (freq_h, freq_w) magnitude is the RoPE-Mixed base^(-2i/P) ladder
    magnitude = torch.sqrt(freq_h**2 + freq_w**2)
    ladder = 10.0 ** (-torch.arange(4, dtype=torch.float32) * 2 / 8)
    torch.testing.assert_close(magnitude, torch.cat([ladder, ladder]).expand(4, -1))


def test_rope_gradients_reach_mixed_frequencies():
    rope = Rope2D(2, 8, RopeConfig(kind="mixed")).double()
    x = torch.randn(5, 2, 8, dtype=torch.float64)
    pos_h, pos_w = torch.arange(5), torch.arange(5).flip(0)

    def f(fh, fw):
        return apply_rope(x, pos_h, pos_w, fh, fw, "interleaved")

    assert torch.autograd.gradcheck(
        f, (rope.freq_h.detach().clone().requires_grad_(), rope.freq_w.detach().clone().requires_grad_())
    )


def test_linear_interpolation_scales_positions_by_train_over_max_grid(rotate_naive):
    base = Rope2D(2, 8)
    interp = Rope2D(2, 8, RopeConfig(train_grid=16, max_grid=64))
    assert interp.interpolation_scale == 0.25
    x = torch.randn(6, 2, 8)
    pos_h, pos_w = torch.tensor([0, 4, 8, 12, 60, 63]), torch.tensor([63, 8, 0, 4, 32, 1])
    got = apply_rope(x, pos_h, pos_w, *interp.frequencies())
    want = rotate_naive(x, pos_h.double() / 4, pos_w.double() / 4, *base.frequencies(), "half")
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-5)
    # within the training grid no interpolation is applied
    assert Rope2D(2, 8, RopeConfig(train_grid=16, max_grid=8)).interpolation_scale == 1.0
    assert (
        Rope2D(2, 8, RopeConfig(train_grid=16, max_grid=64, interpolation="none")).interpolation_scale == 1.0
    )


@pytest.mark.parametrize(
    ("head_dim", "config", "match"),
    [
        (9, RopeConfig(), "head_dim=9 must be even"),
        (16, RopeConfig(dim_h=12, dim_w=8), "exceeds head_dim=16"),
        (16, RopeConfig(dim_h=3), "dim_h=3 must be a positive even"),
        (16, RopeConfig(layout="spiral"), "layout='spiral'"),
        (16, RopeConfig(kind="polar"), "kind='polar'"),
    ],
)
def test_bad_rope_settings_raise_clear_errors(head_dim, config, match):
    with pytest.raises(VisionRopeError, match=match):
        Rope2D(2, head_dim, config)


def test_axial_frequencies_stay_exact_in_a_bf16_module():
    rope = Rope2D(2, 64, RopeConfig(train_grid=16, max_grid=32))
    want = rope.frequencies()
    rope.to(torch.bfloat16)
    got = rope.frequencies()
    assert got[0].dtype == torch.float32
    torch.testing.assert_close(got, want, rtol=0, atol=0)


@pytest.mark.parametrize("layout", ["half", "interleaved"])
@pytest.mark.parametrize("table_heads", [1, 3])
@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_full_width_rotation_matches_naive_into_a_head_major_view(layout, table_heads, sign, rotate_naive):
    """``x c + sign · swap(x) s`` with full-width tables, fp16 x written into an fp32 strided head-major
    view (as the fused window attention uses it), against the pair-by-pair float64 rotation by ``sign · θ``."""
    from tbi_vision_rope.rope import _full_tables, _rotate_full_into

    torch.manual_seed(1)
    tokens, heads, dim = 5, 3, 10  # 5 pairs: odd
    x = torch.randn(tokens, heads, dim).half()
    pos_h, pos_w = torch.randint(0, 7, (tokens,)), torch.randint(0, 11, (tokens,))
    freq_h, freq_w = torch.rand(table_heads, dim // 2), torch.rand(table_heads, dim // 2)
    angle = pos_h[:, None, None].float() * freq_h + pos_w[:, None, None].float() * freq_w  # [T, H|1, P]
    cos, sin = _full_tables(angle.cos(), angle.sin(), layout == "interleaved")
    assert cos.shape == sin.shape == (tokens, table_heads, dim)
    head_major = torch.full((heads, tokens, dim), float("nan"))
    _rotate_full_into(x, cos, sin, layout == "interleaved", sign, out=head_major.transpose(0, 1))
    expected = rotate_naive(
        x, pos_h, pos_w, sign * freq_h.expand(heads, -1), sign * freq_w.expand(heads, -1), layout
    )
    torch.testing.assert_close(head_major.transpose(0, 1).double(), expected, rtol=1e-5, atol=1e-5)
