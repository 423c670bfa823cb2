"""The op with Qwen2.5-VL's settings reproduces transformers' Qwen2.5-VL vision tower (tiny random config)."""

import pytest
import torch
from torch import nn
from transformers.models.qwen2_5_vl.configuration_qwen2_5_vl import Qwen2_5_VLVisionConfig
from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import Qwen2_5_VisionTransformerPretrainedModel

from tbi_vision_rope import Rope2D, build_layout, windowed_rope_attention
from tbi_vision_rope.qwen import qwen2_5_vl_settings


class _OurAttention(nn.Module):
    """Qwen's qkv/proj weights around windowed_rope_attention; ignores Qwen's cu_seqlens and cos/sin."""

    def __init__(self, original, layout, rope, global_attention):
        super().__init__()
        self.original, self.layout, self.rope, self.global_attention = (
            original,
            layout,
            rope,
            global_attention,
        )

    def forward(self, hidden_states, cu_seqlens=None, position_embeddings=None, **kwargs):
        tokens = hidden_states.shape[0]
        qkv = self.original.qkv(hidden_states).view(tokens, 3, self.original.num_heads, -1)  # [T, 3, H, D]
        out = windowed_rope_attention(
            *qkv.unbind(1), self.layout, self.rope, global_attention=self.global_attention, backend="sdpa"
        )  # [T, H, D]
        return self.original.proj(out.reshape(tokens, -1))


@pytest.mark.parametrize("grid_thw", [[(1, 16, 20)], [(1, 12, 20), (2, 8, 4), (1, 6, 2)]])
def test_op_reproduces_transformers_qwen2_5_vl_vision_tower(grid_thw):
    torch.manual_seed(0)
    config = Qwen2_5_VLVisionConfig(
        depth=4,
        hidden_size=160,
        num_heads=2,
        intermediate_size=96,
        out_hidden_size=32,
        fullatt_block_indexes=[1, 3],
    )
    config._attn_implementation = "sdpa"
    model = Qwen2_5_VisionTransformerPretrainedModel(config).eval()
    grid = torch.tensor(grid_thw)
    tokens = int((grid[:, 0] * grid[:, 1] * grid[:, 2]).sum())
    pixels = torch.randn(tokens, 3 * 2 * 14 * 14)
    with torch.no_grad():
        want = model(pixels, grid_thw=grid).last_hidden_state  # [T, C] in Qwen's window order

    settings = qwen2_5_vl_settings(config)
    assert (settings.window, settings.merge_size, settings.global_layers) == (8, 2, (1, 3))
    layout = build_layout(grid, settings.window, merge_size=settings.merge_size)
    rope = Rope2D(config.num_heads, config.hidden_size // config.num_heads, settings.rope)
    for i, block in enumerate(model.blocks):
        block.attn = _OurAttention(block.attn, layout, rope, i in settings.global_layers)
    with torch.no_grad():
        got = model(pixels, grid_thw=grid).last_hidden_state
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    # the comparison is sensitive: dropping the windows changes the output
    for block in model.blocks:
        block.attn.global_attention = True
    with torch.no_grad():
        assert not torch.allclose(model(pixels, grid_thw=grid).last_hidden_state, want, atol=1e-3)
