"""`tbi merge --search`: a 3-point lambda grid over tiny saved VLMs, merged through tbi-merging, scored on a
bilingual val file whose gold answers are the en model's (English rows) and the ko model's (Korean rows)."""

import json
import os

import pytest
import torch
import yaml
from safetensors.torch import load_file
from typer.testing import CliRunner

from tbi_train.cli import app
from tbi_train.config import apply_overrides, get_preset
from tbi_train.errors import TrainError
from tbi_train.model import build_vlm, load_vlm, save_vlm
from tbi_train.strategies import merge_search as ms
from tbi_train.strategies.merge import merge_vlms

os.environ.setdefault("HF_HUB_OFFLINE", "1")

GRID = "lambda_en=0:1:0.5"


@pytest.fixture(scope="module")
def search_dir(tmp_path_factory):
    """base, en (full LM weights moved), ko (LoRA adapters), a val file, and one finished CLI search."""
    from tbi_train.data import load_conversations
    from tbi_train.eval import generate
    from tbi_train.synth import generate_synthetic

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("search")
    torch.manual_seed(0)
    cfg = apply_overrides(get_preset("tiny"), ["model.peft.lm.r=4", "model.peft.lm.alpha=8"])
    base = build_vlm(cfg.model, cache_dir=root, corpus=["what colour 무슨 색 red 빨간"])
    save_vlm(base, root / "base")
    for name, key, scale in (("en", "layers", 0.2), ("ko", "lora_B", 0.5)):
        vlm = load_vlm(root / "base")
        with torch.no_grad():
            for pname, p in vlm.lm.named_parameters():
                if key in pname and ("lora_" not in pname or key == "lora_B"):
                    p.add_(scale * torch.randn_like(p))
        save_vlm(vlm, root / name)
    data = generate_synthetic(root / "synth", n=40, seed=0, val_fraction=0.3)
    records = json.loads((data / "val.json").read_text())[:8]
    samples = load_conversations(data / "val.json")
    by_id = {samples[i].id: samples[i] for i in range(len(samples))}
    for lang, model in (("en", "en"), ("ko", "ko")):
        rows = [r for r in records if r["language"] == lang]
        answers = generate(load_vlm(root / model), [by_id[r["id"]] for r in rows], max_new_tokens=4)
        for r, a in zip(rows, answers):
            r["answers"] = [a or "-"]
            r["conversations"][-1]["value"] = a or "-"
    (data / "gold.json").write_text(json.dumps(records, ensure_ascii=False))
    out = root / "runs" / "search"
    args = ["merge", "--search", GRID, "--eval", str(data / "gold.json"), "--eval-limit", "8",
            "--max-new-tokens", "4", "--base", str(root / "base"), "--model", f"en={root / 'en'}",
            "--model", f"ko={root / 'ko'}", "--method", "task_arithmetic", "--no-normalize", "--out", str(out)]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    return root, out, result.output


@pytest.mark.slow  # the module fixture merges and scores 3 candidates (~25 s CPU)
def test_search_table_has_one_scored_row_per_candidate_and_keeps_only_the_best(search_dir):
    root, out, output = search_dir
    data = json.loads((out / "merge_search.json").read_text())
    rows = data["rows"]
    assert [(r["lambda_en"], r["lambda_ko"]) for r in rows] == [(0.0, 1.0), (0.5, 0.5), (1.0, 0.0)]
    for r in rows:
        assert all(0.0 <= r[k] <= 1.0 for k in ("korean", "english", "overall"))
    # the gold answers are each model's own: lambda_en = 1 is the en model, lambda_en = 0 the ko model
    assert rows[2]["english"] > 0.9 and rows[0]["korean"] > 0.9
    assert rows[2]["english"] > rows[0]["english"] and rows[0]["korean"] > rows[2]["korean"]
    best = max(rows, key=lambda r: r["overall"])
    assert data["best"]["candidate"] == best["candidate"]
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == ["best"]  # the other candidates are gone
    assert len(list(out.rglob("model.safetensors"))) == 1
    csv_lines = (out / "merge_search.csv").read_text().strip().splitlines()
    assert len(csv_lines) == 1 + len(rows) and csv_lines[0].startswith(
        "candidate,lambda_en,lambda_ko,density"
    )
    assert (out / "merge_search.png").stat().st_size > 1000
    assert "merge search" in output and "best model" in output
    # best.yaml and best/ are that candidate's merge
    cfg = yaml.safe_load((out / "best.yaml").read_text())
    assert [m["weight"] for m in cfg["models"]] == [best["lambda_en"], best["lambda_ko"]]
    fresh = merge_vlms(root / "base", root / "en", root / "ko", root / "fresh", method="task_arithmetic",
                       lambda_en=best["lambda_en"], lambda_ko=best["lambda_ko"], normalize=False)  # fmt: skip
    kept, again = (
        load_file(str(out / "best" / "model.safetensors")),
        load_file(str(fresh / "model.safetensors")),
    )
    assert kept.keys() == again.keys() and all(torch.equal(kept[k], again[k]) for k in kept)


@pytest.mark.slow  # the module fixture merges and scores 3 candidates (~25 s CPU)
def test_only_one_merged_model_exists_while_scoring(search_dir, monkeypatch, tmp_path):
    root, _, _ = search_dir
    seen = []

    def counting(search, model, work):
        seen.append(len(list((tmp_path / "s").rglob("model.safetensors"))))
        return {"overall": float(len(seen)) / 10, "english": 0.0, "korean": 0.2}

    monkeypatch.setattr(ms, "_score", counting)
    search = ms.MergeSearch(base=str(root / "base"), models={"en": (str(root / "en"), 0.5), "ko": (str(root / "ko"), 0.5)},
                            grid={"lambda_en": (0.2, 0.8), "density": (0.5, 1.0)}, out=str(tmp_path / "s"),
                            evals={"val": str(root / "synth" / "gold.json")}, method="dare_ties")  # fmt: skip
    result = json.loads(ms.merge_search(search).read_text())
    assert seen == [1, 1, 1, 1]
    assert [(r["lambda_en"], r["density"]) for r in result["rows"]] == [
        (0.2, 0.5),
        (0.2, 1.0),
        (0.8, 0.5),
        (0.8, 1.0),
    ]
    assert result["best"]["candidate"] == 3  # the highest (fake) overall
    assert yaml.safe_load((tmp_path / "s" / "best.yaml").read_text())["drop_rate"] == 0.0


@pytest.mark.slow  # the module fixture merges and scores 3 candidates (~25 s CPU)
def test_report_shows_the_merge_search(search_dir):
    from tbi_train.report import write_report

    root, _, _ = search_dir
    report = write_report(root / "runs")
    md = (report / "report.md").read_text()
    assert "## Merge-weight search: search (task_arithmetic, 3 candidates)" in md
    assert "| # | lambda_en | lambda_ko | density |" in md and "(best)" in md
    html = (report / "report.html").read_text()
    assert "merge-search-0.png" in html and "data:image/png;base64," in html


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--search", "lambda_xx=0:1:0.5"], r"KEY one of lambda_en, lambda_ko, density"),
        (["--search", "lambda_en=0.7:0.3:0.1"], r"not START:STOP:STEP"),
        (["--search", "density=0,0.5"], r"density must lie in \(0, 1\]"),
        (["--search", "lambda_en=0:1:0.5", "--align-vocab", "en"], r"does not take --align-vocab"),
        (["--search", "lambda_en=0:1:0.5"], r"needs --base BASE_VLM"),
    ],
)
def test_bad_search_arguments_are_named(argv, message):
    with pytest.raises(TrainError, match=message):
        ms.search_from_argv(
            argv + ([] if "--base" in message else ["--base", "b", "--model", "en=e", "--out", "o"])
        )


def test_grid_values_and_the_other_lambda():
    assert ms.parse_grid("lambda_en=0.3:0.7:0.1") == ("lambda_en", (0.3, 0.4, 0.5, 0.6, 0.7))
    assert ms.parse_grid("density=0.1,0.3") == ("density", (0.1, 0.3))
    search = ms.MergeSearch(
        base="b", models={"en": ("e", 0.6), "ko": ("k", 0.4)}, grid={"density": (0.1, 0.3)}, out="o"
    )
    assert ms.candidates(search) == [
        {"lambda_en": 0.6, "lambda_ko": 0.4, "density": 0.1},
        {"lambda_en": 0.6, "lambda_ko": 0.4, "density": 0.3},
    ]
    with pytest.raises(TrainError, match="needs a DARE method"):
        ms._check(ms.MergeSearch(base="b", models={"en": ("e", 1), "ko": ("k", 1)}, grid={"density": (0.5,)},
                                 out="o", evals={"val": "v"}, method="ties"))  # fmt: skip


@pytest.mark.slow  # uses the module fixture's saved VLMs
def test_benchmark_files_score_with_seed000_names_and_averages(search_dir, tmp_path):
    from PIL import Image

    root, _, _ = search_dir
    for i in range(2):
        Image.new("RGB", (32, 32), (90 * i, 80, 120)).save(tmp_path / f"d{i}.png")
    data = [
        {"questionId": i, "question": "What colour?", "answers": ["red"], "image": f"d{i}.png"}
        for i in range(2)
    ]
    (tmp_path / "docvqa.json").write_text(json.dumps({"data": data}))
    search = ms.search_from_argv(
        ["--search", GRID, "--eval", f"docvqa={tmp_path / 'docvqa.json'}", "--max-new-tokens", "3",
         "--base", str(root / "base"), "--model", f"en={root / 'en'}", "--model", f"ko={root / 'ko'}", "--out", "o"]
    )  # fmt: skip
    assert search.evals == {"docvqa": str(tmp_path / "docvqa.json")} and search.max_new_tokens == 3
    scores = ms._score(search, root / "base", tmp_path / "work")
    assert set(scores) >= {"DocVQA", "english", "overall"} and scores["overall"] == scores["DocVQA"]
    assert all(0.0 <= v <= 1.0 for v in scores.values())
