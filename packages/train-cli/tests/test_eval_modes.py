"""Seed 003's three evaluation modes of a foveated VLM: coarse, coarse_fine, autoregressive (`tbi eval --mode`)."""

import os

import numpy as np
import pytest
import torch
from PIL import Image

from tbi_train.config import apply_overrides, get_preset
from tbi_train.errors import TrainError
from tbi_train.eval import generate
from tbi_train.eval.modes import generate_in_mode
from tbi_train.model import build_tokenizer, build_vlm

os.environ.setdefault("HF_HUB_OFFLINE", "1")

CORPUS = ["빨간색 원입니다. A red circle.", "숫자는 3 입니다. The number is three.", "What colour is it?"]
FOVEATED = [
    "model.projector.name=foveated-query",
    "model.projector.options.query_dim=32",
    "model.projector.options.depth=1",
    "model.projector.query_from_lm=true",
    "model.lm.initializer_range=0.2",  # sharp logits, so a changed query changes greedy tokens
]
NEW = 6


class _Sample:
    def __init__(self, i, question, seed):
        rng = np.random.default_rng(seed)
        self.id = f"s{i}"
        self.images = [Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8))]
        self.conversations = [
            {"from": "human", "value": f"<image>\n{question}"},
            {"from": "gpt", "value": ""},
        ]
        self.meta = {}


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    torch.set_num_threads(1)
    cfg = apply_overrides(get_preset("tiny"), FOVEATED).model
    tokenizer = build_tokenizer(cfg.tokenizer, None, tmp_path_factory.mktemp("tok"), CORPUS)
    torch.manual_seed(0)
    foveated = build_vlm(cfg, tokenizer=tokenizer).eval()
    coarse_cfg = apply_overrides(get_preset("tiny"), FOVEATED[:3] + FOVEATED[4:]).model  # no fine pass (A6)
    coarse = build_vlm(coarse_cfg, tokenizer=tokenizer).eval()
    coarse.load_state_dict(foveated.state_dict())
    return foveated, coarse


SAMPLES = [
    _Sample(0, "What colour is the circle?", 1),
    _Sample(1, "How many?", 2),
    _Sample(2, "무슨 색입니까? Read the text please.", 3),
]


def test_coarse_mode_equals_the_model_without_its_fine_pass(models):
    foveated, coarse = models
    got = generate(foveated, SAMPLES, max_new_tokens=NEW, mode="coarse")
    assert got == generate(coarse, SAMPLES, max_new_tokens=NEW)
    assert got != generate(foveated, SAMPLES, max_new_tokens=NEW)  # the fine pass matters in this model


def test_coarse_fine_mode_is_the_default_generation(models):
    foveated, _ = models
    assert generate(foveated, SAMPLES, max_new_tokens=NEW, mode="coarse_fine") == generate(
        foveated, SAMPLES, max_new_tokens=NEW
    )


def _prompt(vlm, sample):
    from tbi_train.data import Collator

    collator = Collator(vlm.tokenizer, vlm.image_transform, vlm.tokens_per_image)
    pixels = collator.transform_images(sample.images)
    ids = collator.encode_prompt(sample.conversations, [1], collator.media_tokens(pixels, [1])).input_ids
    return torch.tensor([ids]), collator.pixel_inputs(pixels)["pixel_values"], collator.pad_token_id


def _reference(vlm, ids, pixels, steps):
    """Autoregressive mode by its definition, one unpadded prompt, recomputing everything from token ids."""
    image = ids == vlm.image_pad_id  # [1, L]
    grid = vlm.vision.grid
    features = vlm.vision(pixels)
    emb = vlm.lm.get_input_embeddings()
    coarse_tokens = vlm.projector(features, grid=grid).tokens[0]  # [M, D]
    seq = ids
    out = []
    for t in range(steps):
        coarse = emb(seq).clone()
        coarse[0, : image.shape[1]][image[0]] = coarse_tokens
        hidden = vlm.lm(inputs_embeds=coarse, output_hidden_states=True).hidden_states[-1][0]  # [S, D]
        at = int(vlm.instruction_index(ids, None, image)[0]) if t == 0 else seq.shape[1] - 1
        fine_tokens = vlm.projector(features, grid=grid, query=hidden[at : at + 1]).tokens[0]
        fine = emb(seq).clone()
        fine[0, : image.shape[1]][image[0]] = fine_tokens
        token = int(vlm.lm(inputs_embeds=fine).logits[0, -1].argmax())
        out.append(token)
        seq = torch.cat([seq, torch.tensor([[token]])], dim=1)
    return out


@torch.no_grad()
def test_autoregressive_mode_follows_its_definition_and_differs_from_coarse_fine(models):
    foveated, _ = models
    ids, pixels, pad = _prompt(foveated, SAMPLES[2])
    options = dict(max_new_tokens=NEW, do_sample=False, eos_token_id=-1, pad_token_id=pad)  # never stop early
    auto = generate_in_mode(foveated, "autoregressive", ids, torch.ones_like(ids), pixels, **options)
    assert auto[0].tolist() == _reference(foveated, ids, pixels, NEW)
    fixed = generate_in_mode(foveated, "coarse_fine", ids, torch.ones_like(ids), pixels, **options)
    assert auto[0, 0] == fixed[0, 0]  # same first query
    assert auto.tolist() != fixed.tolist()


def test_autoregressive_mode_is_deterministic_and_batch_independent(models):
    foveated, _ = models
    batched = generate(foveated, SAMPLES, max_new_tokens=NEW, batch_size=3, mode="autoregressive")
    assert batched == generate(foveated, SAMPLES, max_new_tokens=NEW, batch_size=3, mode="autoregressive")
    alone = [generate(foveated, [s], max_new_tokens=NEW, mode="autoregressive")[0] for s in SAMPLES]
    assert batched == alone  # left padding changes nothing
    assert batched != generate(foveated, SAMPLES, max_new_tokens=NEW, mode="coarse_fine")


def test_modes_refuse_a_non_foveated_model_and_unknown_modes(models):
    foveated, coarse = models
    with pytest.raises(TrainError, match=r"needs a foveated model.*query_from_lm=true"):
        generate(coarse, SAMPLES[:1], max_new_tokens=2, mode="coarse")
    with pytest.raises(
        TrainError, match=r"unknown evaluation mode 'fine'.*coarse, coarse_fine, autoregressive"
    ):
        generate(foveated, SAMPLES[:1], max_new_tokens=2, mode="fine")


def test_tbi_eval_scores_each_mode_and_refuses_a_plain_model(models, tmp_path):
    import json

    from typer.testing import CliRunner

    from tbi_train.cli import app
    from tbi_train.model import save_vlm

    foveated, coarse = models
    save_vlm(foveated, tmp_path / "fov")
    save_vlm(coarse, tmp_path / "plain")
    for i in range(2):
        Image.new("RGB", (32, 32), (90 * i, 80, 120)).save(tmp_path / f"d{i}.png")
    data = [
        {"questionId": i, "question": "What colour?", "answers": ["red"], "image": f"d{i}.png"}
        for i in range(2)
    ]
    (tmp_path / "docvqa.json").write_text(json.dumps({"data": data}))
    args = [
        "eval",
        str(tmp_path / "fov"),
        "--benchmark",
        f"docvqa={tmp_path / 'docvqa.json'}",
        "--max-new-tokens",
        "3",
    ]
    result = CliRunner().invoke(
        app, [*args, "--mode", "coarse,autoregressive", "--out", str(tmp_path / "out")]
    )
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "out" / "modes.json").read_text())
    assert list(summary) == ["coarse", "autoregressive"]
    for mode, scores in summary.items():
        assert scores["docvqa"]["mode"] == mode and 0.0 <= scores["docvqa"]["score"] <= 1.0
        rows = (tmp_path / "out" / mode / "docvqa.predictions.jsonl").read_text().splitlines()
        assert [json.loads(r)["id"] for r in rows] == ["0", "1"]
    assert "scores per evaluation mode" in result.output
    args[1] = str(tmp_path / "plain")
    refused = CliRunner().invoke(app, [*args, "--mode", "coarse", "--out", str(tmp_path / "out2")])
    assert refused.exit_code == 1 and "needs a foveated model" in refused.output
    assert not (tmp_path / "out2").exists()
