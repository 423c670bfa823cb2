"""modernize() on tiny random CLIP, SigLIP, DINOv2 and InternViT towers; taps; packed native resolution."""

import copy

import pytest
import torch
from torch import nn
from transformers import (
    CLIPVisionConfig,
    CLIPVisionModel,
    Dinov2Config,
    Dinov2Model,
    InternVLVisionConfig,
    InternVLVisionModel,
    SiglipVisionConfig,
    SiglipVisionModel,
)

from tbi_vision_rope import (
    RopeConfig,
    RopeWindowAttention,
    VisionRopeError,
    encode_packed,
    extract_taps,
    modernize,
)

TINY = {
    "hidden_size": 32,
    "num_hidden_layers": 3,
    "num_attention_heads": 4,
    "image_size": 32,
    "patch_size": 8,
}


def _tiny(family):
    torch.manual_seed(0)
    if family == "clip":
        model = CLIPVisionModel(CLIPVisionConfig(intermediate_size=64, **TINY))
    elif family == "siglip":
        model = SiglipVisionModel(SiglipVisionConfig(intermediate_size=64, **TINY))
    elif family == "dinov2":
        model = Dinov2Model(Dinov2Config(mlp_ratio=2, **TINY))
    else:
        model = InternVLVisionModel(InternVLVisionConfig(intermediate_size=64, use_qk_norm=True, **TINY))
    with torch.no_grad():  # random everything (InternViT initialises its CLS/positions to zero)
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return model.eval()


FAMILIES = ["clip", "siglip", "dinov2", "internvit"]


@pytest.mark.parametrize("family", FAMILIES)
def test_disabled_modernize_reproduces_the_original(family):
    original = _tiny(family)
    patched = modernize(copy.deepcopy(original), rope=None, window=0, drop_abs_pos=False, backend="sdpa")
    assert sum(isinstance(m, RopeWindowAttention) for m in patched.modules()) == 3
    assert patched.state_dict().keys() == original.state_dict().keys()
    pixels = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        want, got = original(pixels), patched(pixels)
    torch.testing.assert_close(got.last_hidden_state, want.last_hidden_state, rtol=1e-5, atol=1e-5)
    if want.pooler_output is not None:
        torch.testing.assert_close(got.pooler_output, want.pooler_output, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
def test_modernize_with_rope_and_windows_keeps_weights_and_runs_any_size(family):
    original = _tiny(family)
    patched = modernize(
        copy.deepcopy(original), rope=RopeConfig(kind="mixed"), window=2, global_layers=[2], backend="sdpa"
    )
    info = patched.tbi_vision_rope
    assert (info.family, info.window, info.global_layers, info.num_layers) == (family, 2, (2,), 3)
    old, new = original.state_dict(), patched.state_dict()
    dropped = set(old) - set(new)
    assert dropped and all("position_embedding" in key for key in dropped)
    added = set(new) - set(old)
    assert added and all(key.endswith(("rope.freq_h", "rope.freq_w")) for key in added)
    for key in set(old) & set(new):
        assert torch.equal(old[key], new[key]), key
    pixels = torch.randn(2, 3, 24, 40)  # 3x5 patches: not square, not the training size
    out = patched(pixels).last_hidden_state
    assert out.shape == (2, info.num_prefix + 15, 32)
    out.square().mean().backward()
    rope_grads = [m.rope.freq_h.grad for m in patched.modules() if isinstance(m, RopeWindowAttention)]
    assert all(g is not None and g.abs().sum() > 0 for g in rope_grads)


def test_window_layers_keep_information_inside_windows():
    patched = modernize(_tiny("clip"), rope=True, window=2, global_layers=[], backend="sdpa")
    pixels = torch.randn(1, 3, 32, 32)
    changed = pixels.clone()
    changed[..., :16, :16] += 1.0  # the top-left window of 2x2 patches (16x16 px)
    with torch.no_grad():
        a, b = patched(pixels).last_hidden_state, patched(changed).last_hidden_state
    grid_a, grid_b = a[0, 1:].view(4, 4, -1), b[0, 1:].view(4, 4, -1)
    assert not torch.allclose(grid_a[:2, :2], grid_b[:2, :2])
    torch.testing.assert_close(grid_a[2:], grid_b[2:])
    torch.testing.assert_close(grid_a[:2, 2:], grid_b[:2, 2:])
    torch.testing.assert_close(a[0, 0], b[0, 0])  # CLS only meets patches in global layers


@pytest.mark.parametrize("family", ["clip", "internvit"])
def test_taps_match_hidden_states_and_grids(family):
    model = _tiny(family)
    pixels = torch.randn(2, 3, 32, 32)
    outputs, taps = extract_taps(model, pixels, layers=(1, 3), output_hidden_states=True)
    assert [t.layer for t in taps] == [1, 3] and all(t.grid == (4, 4) for t in taps)
    for tap in taps:
        torch.testing.assert_close(tap.hidden, outputs.hidden_states[tap.layer][:, 1:])
        assert tap.as_map().shape == (2, 32, 4, 4)
        torch.testing.assert_close(tap.as_map()[:, :, 1, 2], tap.hidden[:, 6])


@pytest.mark.parametrize("family", ["siglip", "dinov2"])
def test_packed_native_resolution_equals_each_image_alone(family):
    patched = modernize(_tiny(family), rope=True, window=2, global_layers=[1], backend="sdpa")
    images = [torch.randn(3, 24, 40), torch.randn(3, 32, 16), torch.randn(3, 8, 8)]
    with torch.no_grad():
        packed = encode_packed(patched, images, layers=(2,))
        assert packed.grids == [(3, 5), (4, 2), (1, 1)]
        for i, image in enumerate(images):
            alone = patched(image[None]).last_hidden_state[0]
            torch.testing.assert_close(packed.last_hidden[i], alone, rtol=1e-5, atol=1e-5)
            _, taps = extract_taps(patched, image[None], layers=(2,))
            torch.testing.assert_close(packed.taps[i][0].hidden, taps[0].hidden[0], rtol=1e-5, atol=1e-5)


def test_modernize_errors_are_clear():
    with pytest.raises(VisionRopeError, match="Linear is not a supported vision tower"):
        modernize(nn.Linear(2, 2))
    model = _tiny("siglip")
    with pytest.raises(VisionRopeError, match=r"global_layers \[3\] out of range: the model has layers 0..2"):
        modernize(copy.deepcopy(model), window=2, global_layers=[3])
    patched = modernize(model, window=2)
    with pytest.raises(VisionRopeError, match="already modernized"):
        modernize(patched)
    with pytest.raises(VisionRopeError, match="smaller than one 8x8 patch"):
        patched(torch.randn(1, 3, 4, 32))
    with pytest.raises(VisionRopeError, match=r"tap layers \[0, 4\] out of range: use 1..3"):
        extract_taps(patched, torch.randn(1, 3, 32, 32), layers=(0, 4))
    with pytest.raises(VisionRopeError, match="encode_packed needs a tower patched by modernize"):
        encode_packed(_tiny("clip"), [torch.randn(3, 8, 8)])


def test_layout_cache_stays_bounded_across_many_input_sizes():
    patched = modernize(_tiny("siglip"), rope=True, window=2, backend="sdpa")
    with torch.no_grad():
        for width in range(1, 21):
            patched(torch.randn(1, 3, 8, 8 * width))
    assert len(patched._tbi_context._layouts) == 16
    assert (1, 1, 20, "cpu") in patched._tbi_context._layouts
