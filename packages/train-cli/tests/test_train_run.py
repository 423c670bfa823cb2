"""End-to-end phased training of the tiny preset: logs, freezing, checkpoints, reload, resume after SIGKILL."""

import json
import math
import multiprocessing
import os
import signal
import time

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from tbi_train.config import apply_overrides, resolve_config
from tbi_train.errors import TrainError
from tbi_train.model import build_vlm, load_vlm
from tbi_train.train import train

os.environ.setdefault("HF_HUB_OFFLINE", "1")

COLOURS = [
    ("red", "빨간색", (220, 30, 30)),
    ("blue", "파란색", (30, 70, 220)),
    ("green", "초록색", (30, 150, 60)),
]


pytestmark = pytest.mark.usefixtures("one_thread")


def _write_split(root, name, n, offset):
    records = []
    for i in range(n):
        en, ko, rgb = COLOURS[(i + offset) % 3]
        korean = (i + offset) % 2 == 0
        path = f"images/{name}-{i}.png"
        Image.new("RGB", (24, 24), rgb).save(root / path)
        question = "이 색은 무엇입니까?" if korean else "What colour is this?"
        answer = ko if korean else en
        records.append(
            {
                "id": f"{name}-{i}",
                "image": path,
                "conversations": [
                    {"from": "human", "value": f"<image>\n{question}"},
                    {"from": "gpt", "value": answer},
                ],
                "language": "ko" if korean else "en",
                "task": "color",
                "answers": [answer],
            }
        )
    (root / f"{name}.json").write_text(json.dumps(records, ensure_ascii=False))
    return root / f"{name}.json"


@pytest.fixture(scope="module")
def colour_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("colours")
    (root / "images").mkdir()
    return _write_split(root, "train", 12, 0), _write_split(root, "val", 4, 1)


def _overrides(data, steps=(2, 2, 2), every=1):
    train_path, val_path = data
    return [
        f"data.train={train_path}",
        f"data.val={val_path}",
        f"phases.0.steps={steps[0]}",
        f"phases.1.steps={steps[1]}",
        f"phases.2.steps={steps[2]}",
        "phases.0.warmup_steps=1",
        "phases.1.warmup_steps=1",
        "phases.2.warmup_steps=1",
        "phases.0.batch_size=4",
        "phases.1.batch_size=4",
        "phases.2.batch_size=2",
        "phases.2.grad_accum=2",
        f"checkpoint.every_steps={every}",
        "checkpoint.keep_last=1",
        "eval.limit=4",
        "eval.max_new_tokens=4",
    ]


def _state(path):
    return load_file(str(path / "model.safetensors"))


def _same(a, b, prefix):
    keys = [k for k in a if k.startswith(prefix) and k in b]  # tied weights are stored once
    assert keys
    return all(torch.equal(a[k], b[k]) for k in keys)


@pytest.mark.slow
def test_three_phase_run_freezes_logs_checkpoints_and_reloads(colour_data, tmp_path):
    cfg = resolve_config("tiny", overrides=[*_overrides(colour_data), "eval.every_steps=1"])
    run = tmp_path / "run"
    result = train(cfg, run)

    records = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    steps = [r for r in records if "loss" in r]
    assert [(r["phase"], r["step"], r["global_step"]) for r in steps] == [
        (0, 1, 1), (0, 2, 2), (1, 1, 3), (1, 2, 4), (2, 1, 5), (2, 2, 6)
    ]  # fmt: skip
    assert [set(r["lr"]) for r in steps[::2]] == [{"projector"}, {"vision", "projector"}, {"lm_lora"}]
    assert steps[1]["lr"]["projector"] == pytest.approx(3e-3)  # warmup 1: step 0 at 0, step 1 at the peak
    assert all(math.isfinite(r["loss"]) and r["grad_norm"] >= 0 for r in steps)
    assert steps[4]["tokens"] > 0 and steps[4]["epoch"] == pytest.approx(2 * 2 / 12)
    evals = [r for r in records if "eval" in r]
    assert [(r["phase"], r["step"]) for r in evals] == [
        (0, 0),
        (0, 1),
        (0, 2),
        (1, 1),
        (1, 2),
        (2, 1),
        (2, 2),
    ]
    assert result.evals == evals and set(evals[0]["eval"]) == {"exact_match", "token_f1"}
    assert (run / "train_loss.png").stat().st_size > 0 and (run / "val_scores.png").stat().st_size > 0

    ckpts = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert ckpts == ["00-projector_pretrain-step0000002-end", "01-vision_projector-step0000002-end",
                     "02-lm_lora-step0000002-end"]  # fmt: skip
    # what each phase trained, against the initial weights
    torch.manual_seed(cfg.seed)
    init = {k: v.detach().clone() for k, v in build_vlm(cfg.model, cache_dir=run).state_dict().items()}
    p0, p1, p2 = (_state(run / "checkpoints" / c / "model") for c in ckpts)
    assert _same(init, p0, "vision.") and _same(init, p0, "lm.") and not _same(init, p0, "projector.")
    assert not _same(p0, p1, "vision.") and not _same(p0, p1, "projector.") and _same(init, p1, "lm.")
    lora = [k for k in init if "lora_B" in k]
    assert _same(p1, p2, "vision.") and _same(p1, p2, "projector.")
    assert all(torch.equal(init[k], p2[k]) for k in p2 if k.startswith("lm.") and "lora_" not in k)
    assert not all(torch.equal(init[k], p2[k]) for k in lora)

    final = load_vlm(result.final_model)
    ids = torch.tensor([[1, *[final.image_pad_id] * final.tokens_per_image, 20, 21]])
    reloaded = load_vlm(run / "checkpoints" / ckpts[-1] / "model")
    with torch.no_grad():
        pixels = torch.randn(1, 3, 64, 64)
        torch.testing.assert_close(
            final(ids, pixel_values=pixels), reloaded(ids, pixel_values=pixels), rtol=0, atol=0
        )

    with pytest.raises(TrainError, match="already holds a run; pass --resume"):
        train(cfg, run)
    with pytest.raises(TrainError, match="resume with the same config"):
        train(apply_overrides(cfg, ["seed=1"]), run, resume=True)
    again = train(cfg, run, resume=True)  # finished run: nothing left to train, same weights
    assert _same(_state(again.final_model), _state(result.final_model), "")


def _train_child(cfg, run):
    torch.set_num_threads(1)
    train(cfg, run)


@pytest.mark.slow
def test_sigkill_mid_phase_then_resume_gives_identical_weights(colour_data, tmp_path):
    overrides = [*_overrides(colour_data, steps=(1, 1, 9), every=3), "eval.at_start=false", "eval.limit=2"]
    cfg = resolve_config("tiny", overrides=overrides)
    reference = train(cfg, tmp_path / "uninterrupted")

    # A forked child process (imports already done) trains the same config and is SIGKILLed mid-phase
    # right after its first mid-phase checkpoint of the LoRA phase (dropout RNG, optimizer and schedule live).
    run = tmp_path / "killed"
    child = multiprocessing.get_context("fork").Process(target=_train_child, args=(cfg, run))
    child.start()
    marker = run / "checkpoints" / "02-lm_lora-step0000003" / "COMPLETE"
    deadline = time.monotonic() + 300
    while not marker.exists() and child.is_alive() and time.monotonic() < deadline:
        time.sleep(0.01)
    os.kill(child.pid, signal.SIGKILL)
    child.join()
    assert child.exitcode == -signal.SIGKILL
    assert marker.exists() and not (run / "final").exists()

    resumed = train(cfg, run, resume=True)
    a, b = _state(reference.final_model), _state(resumed.final_model)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)

    def losses(path):
        return [
            (r["phase"], r["step"], r["loss"])
            for r in map(json.loads, path.read_text().splitlines())
            if "loss" in r
        ]

    assert losses(run / "log.jsonl") == losses(tmp_path / "uninterrupted" / "log.jsonl")
    assert len(losses(run / "log.jsonl")) == 11


@pytest.mark.slow
def test_tiny_preset_validation_score_rises_on_synthetic_bilingual_data(tmp_path):
    cfg = resolve_config(
        "tiny",
        overrides=[
            "data.synthetic_n=100",
            "data.synthetic_val_fraction=0.3",
            "phases.0.steps=4",
            "phases.1.steps=4",
            "phases.2.steps=30",
            "checkpoint.every_steps=0",
            "eval.limit=30",
        ],
    )
    assert cfg.phases[2].trainable == ("lm_lora",) and cfg.data.synthetic_task_weights
    result = train(cfg, tmp_path / "run")
    scores = [r["eval"]["exact_match"] for r in result.evals]
    assert len(scores) == 4 and scores[0] == 0.0  # the random model answers nothing right
    assert scores[-1] >= 0.1
    losses = [
        r["loss"]
        for r in map(json.loads, (tmp_path / "run" / "log.jsonl").read_text().splitlines())
        if "loss" in r
    ]
    assert sum(losses[-5:]) / 5 < losses[0] - 1.0
    val = json.loads((tmp_path / "run" / "data" / "val.json").read_text())
    assert len(val) == 30 and {r["language"] for r in val} == {"ko", "en"}
