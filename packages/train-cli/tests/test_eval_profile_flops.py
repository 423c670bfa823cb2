"""FLOP formulas of tbi_train.eval.flops against torch's FlopCounterMode on real forward passes."""

from __future__ import annotations

import os

import pytest
import torch
import torch.nn.functional as F

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from tbi_train.config import VisionConfig
from tbi_train.eval.flops import (
    count_flops,
    lm_prefill_flops,
    lm_shape,
    projector_flops,
    tower_shape,
    vit_flops,
    window_sizes,
)
from tbi_train.model.vision import build_vision_tower


def _close(counted: int, formula: int, tol: float = 0.05) -> bool:
    return abs(counted - formula) <= tol * formula


def _tower(kind: str, head: bool = False):
    from transformers import CLIPVisionConfig, CLIPVisionModel, SiglipVisionConfig, SiglipVisionModel

    sizes = dict(hidden_size=32, intermediate_size=80, num_hidden_layers=3, num_attention_heads=2)
    if kind == "siglip":
        return SiglipVisionModel(
            SiglipVisionConfig(**sizes, image_size=32, patch_size=8, vision_use_head=head)
        ).eval()
    return CLIPVisionModel(CLIPVisionConfig(**sizes, image_size=32, patch_size=8)).eval()


def _counted_tower(model, height: int, width: int) -> int:
    x = torch.randn(1, 3, height, width)
    with torch.inference_mode():
        flops, _ = count_flops(
            lambda: model(pixel_values=x, interpolate_pos_encoding=True, output_hidden_states=True)
        )
    return flops


@pytest.mark.parametrize(("kind", "head"), [("siglip", False), ("siglip", True), ("clip", False)])
@pytest.mark.parametrize("window", [0, 3])
def test_vit_formula_matches_counter(kind, head, window):
    from tbi_vision_rope import modernize

    torch.manual_seed(0)
    model = _tower(kind, head)
    if window:
        modernize(model, rope=True, window=window, global_layers=[1])
    shape = tower_shape(model)
    assert shape.window == window and shape.pooling_head == head
    assert shape.num_prefix == (1 if kind == "clip" else 0)
    for height, width in [(32, 32), (56, 40), (72, 88)]:  # 7x5 and 9x11 grids cut the 3x3 windows short
        formula = vit_flops(shape, (height // 8, width // 8))
        assert _close(_counted_tower(model, height, width), formula), (kind, head, window, height, width)


def test_window_attention_counts_fewer_flops_than_global():
    from tbi_vision_rope import modernize

    torch.manual_seed(0)
    vanilla, windowed = _tower("siglip"), _tower("siglip")
    modernize(windowed, rope=True, window=2, global_layers=[2])
    counted = _counted_tower(windowed, 96, 96)
    assert counted < _counted_tower(vanilla, 96, 96)
    # only the attention spans differ: 2 window layers of 2x2 windows instead of global ones over 144 tokens
    n, c = 144, 32
    expected_saving = 2 * 4 * c * (n * n - n * 4)
    assert _counted_tower(vanilla, 96, 96) - counted == expected_saving


def test_tiny_preset_tower_formula():
    torch.manual_seed(0)
    tower = build_vision_tower(VisionConfig(gradient_checkpointing=False)).model.eval()
    shape = tower_shape(tower)
    for side in (64, 112, 160):
        assert _close(_counted_tower(tower, side, side), vit_flops(shape, (side // 16, side // 16)))


@pytest.mark.parametrize(("grid", "window"), [((7, 5), 3), ((16, 16), 8), ((9, 20), 8), ((4, 4), 8)])
def test_window_sizes_match_vision_rope_layout(grid, window):
    from tbi_vision_rope import build_layout

    layout = build_layout([(1, *grid)], window)
    expected = layout.cu_window_seqlens.diff().tolist()
    assert sorted(window_sizes(grid, window)) == sorted(expected)
    assert sum(window_sizes(grid, window)) == grid[0] * grid[1]


def test_counter_sees_cpu_scaled_dot_product_attention():
    # same head dims: the CPU flash kernel, which torch's own table does not know
    q, k, v = torch.randn(2, 3, 17, 8), torch.randn(2, 3, 23, 8), torch.randn(2, 3, 23, 8)
    flops, per_op = count_flops(lambda: F.scaled_dot_product_attention(q, k, v))
    assert flops == 2 * (2 * 2 * 3 * 17 * 23 * 8)
    assert any("flash_attention_for_cpu" in op for op in per_op)


@pytest.mark.parametrize(("heads", "kv_heads"), [(4, 2), (4, 4)])
@pytest.mark.parametrize("length", [1, 37, 130])
def test_lm_prefill_formula_matches_counter(heads, kv_heads, length):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    lm = Qwen2ForCausalLM(
        Qwen2Config(
            vocab_size=301,
            hidden_size=32,
            intermediate_size=72,
            num_hidden_layers=2,
            num_attention_heads=heads,
            num_key_value_heads=kv_heads,
        )
    ).eval()
    embeds = torch.randn(1, length, 32)
    with torch.inference_mode():
        counted, _ = count_flops(lambda: lm(inputs_embeds=embeds, use_cache=False, logits_to_keep=1))
    assert _close(counted, lm_prefill_flops(lm_shape(lm), length))


@pytest.mark.parametrize(
    ("name", "options"),
    [
        ("mlp2x_gelu", {}),
        ("mlp2x_gelu", {"depth": 3}),
        ("linear", {}),
        ("pixel-shuffle-mlp", {}),
        ("adaptive-compression", {}),
        ("adaptive-compression", {"score": "learned", "fine_fraction": 0.5}),
    ],
)
@pytest.mark.parametrize("grid", [(4, 4), (7, 5)])
def test_projector_formula_matches_counter(name, options, grid):
    from tbi_projectors import build_projector

    proj = build_projector(name, input_dim=24, output_dim=40, **options).eval()
    x = torch.randn(1, grid[0] * grid[1], 24)
    with torch.inference_mode():
        counted, _ = count_flops(lambda: proj(x, grid=grid))
    assert _close(counted, projector_flops(proj, grid))


def test_projector_without_formula_returns_none():
    from tbi_projectors import build_projector

    proj = build_projector("c-abstractor", input_dim=24, output_dim=40)
    assert projector_flops(proj, (4, 4)) is None


def test_unknown_tower_has_no_formula():
    from tbi_train.errors import TrainError

    with pytest.raises(TrainError, match="no FLOP formula"):
        tower_shape(torch.nn.Linear(2, 2))
