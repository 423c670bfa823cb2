"""Attention / token maps and attention entropy: probabilities against float64 references, windows, entropy,
kept-token masks, PNGs, the report section, `tbi maps` and the training log."""

import json
import math
import os
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
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

from tbi_train.config import apply_overrides, get_preset, resolve_config
from tbi_train.errors import TrainError
from tbi_train.eval._hooks import AttentionCapture, attention_layers
from tbi_train.eval.maps import attention_entropy, make_maps, record_maps, save_maps, select_samples
from tbi_train.model import build_tokenizer, build_vlm, save_vlm

os.environ.setdefault("HF_HUB_OFFLINE", "1")

# Odd shapes: 3 heads of 12 channels; 5x5 (hooked-vs-eager test) and 5x3 (window test) patch grids.
TINY = {
    "hidden_size": 36,
    "num_hidden_layers": 3,
    "num_attention_heads": 3,
    "image_size": 40,
    "patch_size": 8,
}


pytestmark = pytest.mark.usefixtures("one_thread")


def _tower(family):
    torch.manual_seed(0)
    if family == "clip":
        model = CLIPVisionModel(CLIPVisionConfig(intermediate_size=48, **TINY))
    elif family == "siglip":
        model = SiglipVisionModel(SiglipVisionConfig(intermediate_size=48, vision_use_head=False, **TINY))
    elif family == "dinov2":
        model = Dinov2Model(Dinov2Config(mlp_ratio=2, **TINY))
    else:
        model = InternVLVisionModel(InternVLVisionConfig(intermediate_size=48, use_qk_norm=True, **TINY))
    with torch.no_grad():  # perturb everything so that no weight is at a symmetric init
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.2)
    return model.eval()


def _capture_projections(model):
    """The test's own hooks: q (after the qk-norm when there is one), k and v of every attention module."""
    seen, handles = {}, []
    for layer, module in enumerate(attention_layers(model)):
        q_source = module.q_norm if hasattr(module, "q_norm") else module.q_proj
        k_source = module.k_norm if hasattr(module, "k_norm") else module.k_proj
        for name, source in (("q", q_source), ("k", k_source), ("v", module.v_proj)):
            handles.append(
                source.register_forward_hook(lambda m, a, out, key=(layer, name): seen.__setitem__(key, out))
            )
    return seen, handles


def _run(model, pixels, grid=None, layers=None):
    got = {}
    with (
        torch.no_grad(),
        AttentionCapture(model, lambda layer, b, p: got.__setitem__((layer, b), p), layers, grid),
    ):
        model(pixel_values=pixels)
    return got


def _dense_reference(q, k, heads, scale):
    """float64 softmax(scale * Q K^T) per image and head from flat projections [B, T, H*D]."""
    b, t, _ = q.shape
    q = q.double().reshape(b, t, heads, -1).transpose(1, 2)  # [B, H, T, D]
    k = k.double().reshape(b, t, heads, -1).transpose(1, 2)
    return (q @ k.transpose(-1, -2) * scale).softmax(dim=-1)  # [B, H, T, T]


@pytest.mark.parametrize("family", ["siglip", "clip", "dinov2", "internvit"])
def test_hooked_probabilities_equal_a_float64_softmax_and_transformers_eager(family):
    model = _tower(family)
    pixels = torch.randn(2, 3, 40, 40)  # 5x5 patches (+ CLS: T = 26)
    seen, handles = _capture_projections(model)
    got = {}
    sink = lambda layer, b, p: got.__setitem__((layer, b), p)  # noqa: E731
    with torch.no_grad(), AttentionCapture(model, sink):
        model(pixel_values=pixels)
    for h in handles:
        h.remove()
    model.set_attn_implementation("eager")
    with torch.no_grad():
        eager = model(pixel_values=pixels, output_attentions=True).attentions
    heads, dim = TINY["num_attention_heads"], TINY["hidden_size"] // TINY["num_attention_heads"]
    for layer in range(TINY["num_hidden_layers"]):
        ref = _dense_reference(seen[(layer, "q")], seen[(layer, "k")], heads, dim**-0.5)
        for b in range(pixels.shape[0]):
            assert got[(layer, b)].dtype == torch.float32
            torch.testing.assert_close(got[(layer, b)].double(), ref[b], rtol=0, atol=2e-6)
            torch.testing.assert_close(got[(layer, b)], eager[layer][b], rtol=0, atol=2e-6)


def _window_tower(family):
    from tbi_vision_rope import RopeConfig, modernize

    model = _tower(family)
    return modernize(model, rope=RopeConfig(kind="mixed"), window=2, global_layers=[2], backend="sdpa")


@pytest.mark.parametrize("family", ["siglip", "clip"])
def test_windowed_tower_rows_sum_to_one_zero_outside_windows_and_reproduce_the_op(family):
    model = _window_tower(family)
    h, w = 5, 3  # windows of 2x2 patches, cut short at the last row and column
    pixels = torch.randn(2, 3, 8 * h, 8 * w)
    prefix = 1 if family == "clip" else 0
    seen, handles = _capture_projections(model)
    outputs = {}  # the op's output (input of the output projection), [B, T, H*D]
    for layer, module in enumerate(attention_layers(model)):
        handles.append(module.out_proj.register_forward_pre_hook(
            lambda m, a, key=layer: outputs.__setitem__(key, a[0])))  # fmt: skip
    got = _run(model, pixels, grid=(h, w))
    for handle in handles:
        handle.remove()
    rows = torch.arange(h).repeat_interleave(w)
    cols = torch.arange(w).repeat(h)
    cell = (rows // 2) * 10 + cols // 2  # window of each patch
    group = torch.cat([torch.full((prefix,), -1), cell])  # prefix tokens: a group of their own
    inside = group.view(-1, 1) == group.view(1, -1)  # [T, T]
    for layer in range(3):
        for b in range(2):
            p = got[(layer, b)]  # [H, T, T]
            torch.testing.assert_close(p.sum(-1), torch.ones(p.shape[:2]), rtol=0, atol=1e-6)
            if layer < 2:  # window layers
                assert torch.all(p[:, ~inside] == 0) and torch.all(p[:, inside] > 0)
            else:  # the global layer sees the whole image
                assert torch.all(p > 0)
            v = seen[(layer, "v")].reshape(2, p.shape[-1], -1)[b]  # the op flattens the batch: [B*T, H*D]
            v = v.double().reshape(p.shape[-1], 3, -1).transpose(0, 1)  # [H, T, D]
            out = (p.double() @ v).transpose(0, 1).reshape(p.shape[-1], -1)  # [T, H*D]
            torch.testing.assert_close(out, outputs[layer][b].double(), rtol=0, atol=1e-5)


def test_capture_rejects_bad_layers_and_towers():
    model = _tower("siglip")
    with pytest.raises(TrainError, match="out of range"):
        AttentionCapture(model, lambda *a: None, layers=[3])
    with pytest.raises(TrainError, match="q_proj/k_proj"):
        attention_layers(torch.nn.Linear(2, 2))
    with pytest.raises(TrainError, match="grid"):
        AttentionCapture(_window_tower("siglip"), lambda *a: None)


# ---- the VLM level ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    cfg = get_preset("tiny").model.tokenizer
    return build_tokenizer(
        cfg, None, tmp_path_factory.mktemp("tok"), ["무슨 색입니까? What colour?", "빨간색 red"]
    )


def _vlm(tokenizer, *overrides):
    torch.manual_seed(0)
    cfg = apply_overrides(get_preset("tiny"), list(overrides)).model
    return build_vlm(cfg, tokenizer=tokenizer).eval()


def _sample(i, seed):
    rng = np.random.default_rng(seed)
    image = Image.fromarray(rng.integers(0, 255, (30 + i, 40, 3), dtype=np.uint8))
    conv = [{"from": "human", "value": "<image>\n무슨 색입니까?"}, {"from": "gpt", "value": "빨간색"}]
    return SimpleNamespace(id=f"s{i}", images=[image], conversations=conv, meta={}, answers=["빨간색"])


def test_entropy_equals_the_float64_formula_on_the_recorded_probabilities(tokenizer):
    vlm = _vlm(tokenizer, "model.vision.window_attention=true", "model.vision.rope_2d=true")
    samples = [_sample(0, 1), _sample(1, 2), _sample(2, 3)]
    maps = record_maps(vlm, samples, layers=[0, 1, 2, 3])
    got = attention_entropy(vlm, samples, batch_size=2)
    assert list(got) == ["0", "1", "2", "3"]
    for layer in range(4):
        per_image = []
        for m in maps:
            p = m.vision[layer].double()  # [H, T, T]
            terms = torch.where(p > 0, -p * torch.log(p), torch.zeros_like(p))
            per_image.append(terms.sum(-1).mean().item())
        assert got[str(layer)] == pytest.approx(sum(per_image) / len(per_image), rel=1e-5)
    # 2x2 windows of 4 tokens: at most log 4 in the window layers; the global last layer can exceed it
    assert all(got[str(layer)] <= math.log(4) + 1e-6 for layer in range(3))
    assert got["3"] > math.log(4)


def _png_variance(path):
    return float(np.asarray(Image.open(path).convert("L"), dtype=np.float64).var())


def test_c_abstractor_pooling_and_lm_pyramid_drop_maps_are_saved_and_rendered(tokenizer, tmp_path):
    vlm = _vlm(
        tokenizer,
        "model.projector.name=c-abstractor",
        "model.projector.options={output_grid: [3, 2], hidden_dim: 32, se_reduction: 4, num_blocks: 2, "
        "blocks_before_pool: 1}",
        "model.lm.pyramid_drop=[0.5,0.3]",
    )
    maps = record_maps(vlm, [_sample(0, 1)], layers=[-1], heads=[1, 3])
    m = maps[0]
    assert list(m.vision) == [3] and m.vision[3].shape == (2, 16, 16)
    pooling = m.projector["pooling"]  # [6, 16]: cell (i, j) averages rows [floor(4i/3), ceil(4(i+1)/3))
    for cell in range(6):
        i, j = divmod(cell, 2)
        r0, r1 = (4 * i) // 3, -(-4 * (i + 1) // 3)
        c0, c1 = (4 * j) // 2, -(-4 * (j + 1) // 2)
        want = torch.zeros(4, 4)
        want[r0:r1, c0:c1] = 1.0 / ((r1 - r0) * (c1 - c0))
        torch.testing.assert_close(pooling[cell].reshape(4, 4), want)
    # in-LM PyramidDrop: 6 image tokens, keep floor(6 * 0.5) = 3 then floor(6 * 0.35) = 2, nested
    assert [int(k.sum()) for k in m.lm_drop] == [3, 2]
    assert bool((m.lm_drop[0] | ~m.lm_drop[1]).all())
    out = save_maps(maps, tmp_path / "maps", query_patch=(0, 3))
    index = json.loads((out / "index.json").read_text())
    tensors = load_file(str(out / "maps.safetensors"))
    entry = index["samples"][0]
    assert torch.equal(tensors[entry["vision"]["3"]["key"]], m.vision[3])
    assert torch.equal(tensors["0.lm_drop.stage2"], m.lm_drop[1])
    assert tensors["0.image"].shape == (64, 64, 3)
    assert sorted(entry["pngs"]) == ["00-lm-drop.png", "00-projector.png", "00-vision-layer3.png"]
    for png in entry["pngs"]:
        assert _png_variance(out / png) > 0
    assert not (tmp_path / "maps.tmp").exists()


def test_pyramid_drop_kept_mask_matches_the_projector_kept_indices(tokenizer):
    vlm = _vlm(
        tokenizer,
        "model.vision.feature_layers=[1,3,4]",
        "model.projector.name=pyramid-drop",
        "model.projector.options={score_dim: 16}",
    )
    sample = _sample(0, 4)
    m = record_maps(vlm, [sample], layers=[0])[0]
    pixels = vlm.image_transform(sample.images[0]).unsqueeze(0)
    with torch.no_grad():
        out = vlm.projector(vlm.vision(pixels), grid=vlm.vision.grids)
    want = torch.zeros(48, dtype=torch.bool)
    want[out.kept_indices[0]] = True
    assert torch.equal(m.projector["kept_mask"], want)
    assert int(want.sum()) == 8 + 12 + 15  # 16 - floor(16 r) per scale, r = 0.5 / 0.3 / 0.1
    torch.testing.assert_close(m.projector["attention"], out.attention[0])


def test_foveated_query_maps_hold_the_coarse_and_the_lm_query_pass(tokenizer):
    vlm = _vlm(
        tokenizer,
        "model.projector.name=foveated-query",
        "model.projector.query_from_lm=true",
        "model.projector.options={query_dim: 32, depth: 1}",
    )
    sample = _sample(0, 5)
    m = record_maps(vlm, [sample], layers=[0])[0]
    pixels = vlm.image_transform(sample.images[0]).unsqueeze(0)
    with torch.no_grad():
        coarse = vlm.projector(vlm.vision(pixels), grid=vlm.vision.grid).attention[0]  # static query
    torch.testing.assert_close(m.projector["attention"], coarse)
    fine = m.projector["fine_attention"]  # [1 frame, 16 patches]
    torch.testing.assert_close(fine.sum(-1), torch.ones(1))
    assert fine.shape == (1, 16) and not torch.allclose(fine, coarse, atol=1e-4)


def test_tbi_maps_command_and_the_report_section(tokenizer, tmp_path):
    from typer.testing import CliRunner

    from tbi_train.cli import app
    from tbi_train.report import write_report

    vlm = _vlm(
        tokenizer, "model.projector.name=perceiver", "model.projector.options={num_latents: 4, depth: 1}"
    )
    model_dir = tmp_path / "model"
    save_vlm(vlm, model_dir)
    data = tmp_path / "val.json"
    (tmp_path / "images").mkdir()
    records = []
    for i in range(5):
        Image.fromarray(np.asarray(_sample(i, i).images[0])).save(tmp_path / "images" / f"{i}.png")
        records.append({"id": f"v{i}", "image": f"images/{i}.png", "answers": ["a"],
                        "conversations": [{"from": "human", "value": "<image>\nQ?"}, {"from": "gpt", "value": "a"}]})  # fmt: skip
    data.write_text(json.dumps(records))
    run = tmp_path / "out" / "runs" / "tbi-mllm" / "A1-seed42"
    run.mkdir(parents=True)
    args = ["maps", str(model_dir), "--data", str(data), "--samples", "2", "--seed", "7", "--layers", "0,3",
            "--heads", "0,2", "--out", str(run / "maps")]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    index = json.loads((run / "maps" / "index.json").read_text())
    chosen = select_samples(5, 2, 7)
    assert index["sample_indexes"] == chosen and [s["id"] for s in index["samples"]] == [
        f"v{i}" for i in chosen
    ]
    assert index["samples"][0]["projector"]["attention"]["shape"] == [4, 16]  # perceiver latents x patches
    bad = CliRunner().invoke(app, [*args[:8], "--heads", "9", "--out", str(tmp_path / "x")])
    assert bad.exit_code == 1 and "heads 0..3" in bad.output

    for exp, score in (("A0", 0.3), ("A1", 0.5)):  # A0 has no maps: it adds nothing to the section
        folder = run.with_name(f"{exp}-seed42")
        folder.mkdir(exist_ok=True)
        scores = {"color-ko": score, "color-en": score / 2, "chart-ko": score / 3}
        aggregates = {"korean": score, "english": score / 2, "structured": score / 3, "overall": score / 2}
        (folder / "result.json").write_text(json.dumps({
            "status": "done", "suite": "tbi-mllm", "id": exp, "seed": 42, "scores": scores,
            "aggregates": aggregates, "seconds_per_sample": 0.1, "peak_rss_mb": 100.0}))  # fmt: skip
    report = write_report(tmp_path / "out")
    md = (report / "report.md").read_text()
    assert "### Attention and token maps (tbi maps)" in md
    shown = [line[line.index("(") + 1 : -1] for line in md.splitlines() if line.startswith("![maps-")]
    assert len(shown) == 2 * 3  # two samples x (layers 0, 3 + projector)
    html = (report / "report.html").read_text()
    assert html.count("data:image/png;base64") >= len(shown)
    for name in shown:
        assert _png_variance(report / name) > 0


def test_training_logs_attention_entropy_at_eval_points(tmp_path):
    from tbi_train.train import train

    root = tmp_path / "data"
    (root / "images").mkdir(parents=True)
    records = []
    for i in range(6):
        Image.fromarray(np.asarray(_sample(i, i).images[0])).save(root / "images" / f"{i}.png")
        records.append({"id": f"t{i}", "image": f"images/{i}.png", "answers": ["a"],
                        "conversations": [{"from": "human", "value": "<image>\nQ?"}, {"from": "gpt", "value": "a"}]})  # fmt: skip
    (root / "d.json").write_text(json.dumps(records))
    overrides = [f"data.train={root / 'd.json'}", f"data.val={root / 'd.json'}", "phases.0.steps=1",
                 "phases.1.steps=1", "phases.2.steps=1", "eval.limit=2", "eval.max_new_tokens=1",
                 "eval.attention_entropy=true", "model.vision.window_attention=true"]  # fmt: skip
    result = train(resolve_config("tiny", overrides=overrides), tmp_path / "run")
    logged = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    evals = [r for r in logged if "eval" in r]
    assert len(evals) == len(result.evals) == 4  # at start + 3 phase ends
    for record in evals:
        entropy = record["attention_entropy"]
        assert sorted(entropy) == ["0", "1", "2", "3"]
        assert all(0 < v <= math.log(16) + 1e-6 for v in entropy.values())
        assert all(v <= math.log(4) + 1e-6 for k, v in entropy.items() if k != "3")  # window layers
    steps = [r for r in logged if "loss" in r]
    assert steps and all("attention_entropy" not in r for r in steps)
    # `tbi maps RUN` reads the run's final/ and its data.val by default, and writes RUN/maps
    folder = make_maps(tmp_path / "run", samples=2, layers=[0])
    index = json.loads((folder / "index.json").read_text())
    assert folder == tmp_path / "run" / "maps" and index["data"] == str(root / "d.json")
    assert [s["id"] for s in index["samples"]] == [f"t{i}" for i in select_samples(6, 2, 0)]
    assert index["samples"][0]["vision"]["0"]["window"] == 2


def test_readme_maps_example_runs():
    import re
    from pathlib import Path

    readme = (Path(__file__).parents[1] / "README.md").read_text()
    section = readme.split("### Attention and token maps", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    namespace: dict = {}
    exec(compile(code, "README.md#attention-and-token-maps", "exec"), namespace)
    maps, out = namespace["maps"], namespace["out"]
    assert sorted(maps[0].vision) == [0, 3] and maps[0].vision[3].shape == (4, 16, 16)
    assert (out / "index.json").is_file() and (out / "00-vision-layer3.png").is_file()
