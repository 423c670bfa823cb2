"""PyramidDrop on a real (tiny, random) Hugging Face Llama: the ranking is the model's own attention."""

import os

import pytest
import torch

from tbi_projectors import PyramidDropHook, PyramidDropLMConfig, decoder_query_key, last_instruction_attention

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# Importing transformers alone takes ~10 s on the shared CPU.
pytestmark = pytest.mark.slow


def _tiny_llama():
    from transformers import LlamaConfig, LlamaModel

    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=32,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        attn_implementation="eager",
    )
    return LlamaModel(cfg).eval()


def _causal_mask(attention_mask):
    length = attention_mask.shape[1]
    allowed = torch.ones(length, length, dtype=torch.bool).tril() & attention_mask.bool()[:, None, :]
    return torch.zeros(allowed.shape).masked_fill(~allowed, float("-inf"))[:, None]  # [B, 1, L, L]


def test_ranking_scores_equal_the_models_attention():
    model = _tiny_llama()
    emb = torch.randn(2, 12, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        out = model(inputs_embeds=emb, output_attentions=True, output_hidden_states=True)
        pos = model.rotary_emb(emb, torch.arange(12).expand(2, 12))
        query_index = torch.tensor([11, 9])
        for i in range(4):
            q, k = decoder_query_key(model.layers[i], out.hidden_states[i], pos)
            ours = last_instruction_attention(q, k, query_index)
            theirs = out.attentions[i].mean(1)[torch.arange(2), query_index]  # [B, L]
            torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)


def test_decoder_loop_with_the_hook():
    model = _tiny_llama()
    b, length = 2, 16
    emb = torch.randn(b, length, 32, generator=torch.Generator().manual_seed(2))
    image = torch.zeros(b, length, dtype=torch.bool)
    image[:, 2:14] = True  # 12 image tokens
    query_index = torch.tensor([15, 15])

    def run(ratio):
        hook = PyramidDropHook(PyramidDropLMConfig(layers=(1, 2, 3), ratio=ratio))
        hook.start(image, query_index)
        h, mask = emb, torch.ones(b, length, dtype=torch.long)
        positions = torch.arange(length).expand(b, length)
        for i, layer in enumerate(model.layers):
            pos = model.rotary_emb(h, positions)
            h = layer(h, attention_mask=_causal_mask(mask), position_embeddings=pos)
            if hook.is_drop_layer(i + 1):
                q, k = decoder_query_key(model.layers[i + 1], h, model.rotary_emb(h, positions))
                res = hook.after_layer(i + 1, h, q, k, mask)
                h, mask = res.hidden_states, res.attention_mask
                positions = hook.original_positions.clamp(min=0)  # keep each token's original RoPE position
        return model.norm(h), hook

    with torch.no_grad():
        full, _ = run(1.0)  # λ = 1 keeps everything: the loop must reproduce the model's own forward
        torch.testing.assert_close(full, model(inputs_embeds=emb).last_hidden_state, rtol=1e-5, atol=1e-5)
        dropped, hook = run(0.5)
    assert dropped.shape == (b, length - 12 + 1, 32)  # ⌊12·0.5³⌋ = 1 image token left after layer 3
    assert hook.image_mask.sum(1).tolist() == [1, 1]
    assert hook.original_positions[:, -1].tolist() == [15, 15]  # the instruction token survives at the end
