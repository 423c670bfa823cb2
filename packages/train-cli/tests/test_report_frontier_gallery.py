"""`tbi report`: the token-efficiency frontier and the worst-sample error gallery, from a tiny fake runs folder."""

import base64
import json

from PIL import Image

from tbi_train.report import write_report

# experiment: (visual tokens per image, Overall per seed)
POINTS = {"A1": (16, [0.50, 0.52]), "B1": (64, [0.55, 0.57]), "C1": (4, [0.30, 0.32]), "C2": (64, [0.40, 0.40]),
          "F4": (16, [0.45, 0.47])}  # fmt: skip
SEEDS = (42, 123)


def _predictions(exp_index, images):
    """Per benchmark: predictions whose token F1 is known (1, 2/3 or 0), different per experiment."""
    rows = []
    for bench, lang in (("color-en", "en"), ("color-ko", "ko")):
        for i in range(4):
            answer = f"red{i}" if lang == "en" else f"빨강{i}"
            wrong = (i + exp_index) % 4 == 0  # each experiment fails a different sample
            partial = (i + exp_index) % 4 == 1
            prediction = "blue" if wrong else (f"{answer} extra" if partial else answer)
            rows.append({"id": f"{bench}-{i}", "benchmark": bench, "prediction": prediction, "answers": [answer],
                         "question": f"What colour? {i}", "language": lang, "image": str(images[i])})  # fmt: skip
    return rows


def _fake_runs(root):
    images = []
    for i in range(4):
        path = root / "images" / f"{i}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (40, 30), (60 * i, 20, 200 - 40 * i)).save(path)
        images.append(path)
    for k, (exp, (tokens, overall)) in enumerate(POINTS.items()):
        for seed, score in zip(SEEDS, overall):
            run = root / "runs" / "tbi-mllm" / f"{exp}-seed{seed}"
            run.mkdir(parents=True)
            result = {"status": "done", "suite": "tbi-mllm", "id": exp, "seed": seed, "scores": {"color-en": score},
                      "aggregates": {"overall": score}, "seconds_per_sample": 0.1, "peak_rss_mb": 100.0,
                      "visual_tokens_per_image": tokens}  # fmt: skip
            (run / "result.json").write_text(json.dumps(result))
            rows = _predictions(k, images)
            (run / "predictions.jsonl").write_text(
                "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
            )
    old = root / "runs" / "tbi-mllm" / "D1-seed42"  # a run made before token counts were recorded
    old.mkdir(parents=True)
    (old / "result.json").write_text(json.dumps({"status": "done", "suite": "tbi-mllm", "id": "D1", "seed": 42,
                                                 "scores": {"color-en": 0.9}, "aggregates": {"overall": 0.9},
                                                 "seconds_per_sample": 0.1, "peak_rss_mb": 100.0}))  # fmt: skip


def _table(text, heading):
    section = text.split(heading)[1].split("\n### ")[0]
    rows = [line.strip().strip("|").split("|") for line in section.splitlines() if line.startswith("| ")]
    return [[c.strip() for c in r] for r in rows[1:]]


def _dominated(run):
    t, s = POINTS[run][0], sum(POINTS[run][1]) / 2
    return any(
        t2 <= t and sum(v2) / 2 >= s and (t2 < t or sum(v2) / 2 > s)
        for r2, (t2, v2) in POINTS.items()
        if r2 != run
    )


def test_report_shows_frontier_and_error_gallery(tmp_path):
    _fake_runs(tmp_path)
    report = write_report(tmp_path)
    text = (report / "report.md").read_text(encoding="utf-8")

    # frontier: one row per experiment with a token count, mean ± std over seeds, pareto = naive dominance check
    rows = {r[0].removesuffix(" (baseline)"): r for r in _table(text, "### Token efficiency frontier")}
    assert set(rows) == set(POINTS)
    for exp, (tokens, overall) in POINTS.items():
        mean = sum(overall) / 2
        std = (sum((v - mean) ** 2 for v in overall)) ** 0.5  # sample std of 2 values
        assert rows[exp][1] == f"{tokens:g}" and rows[exp][2] == f"{mean:.4f} ± {std:.4f}"
        assert (rows[exp][3] == "yes") == (not _dominated(exp)), exp
    assert {e for e, r in rows.items() if r[3] == "yes"} == {"C1", "A1", "B1"}
    assert rows["A1"][0] == "A1 (baseline)" and rows["B1"][5] == "4×"  # token ratio vs A1
    assert "Not on the plot (no token count recorded, runs made before it was): D1" in text
    assert (report / "frontier-tbi-mllm.csv").read_text().startswith("run,tokens/frame,score,pareto")

    # gallery: per (benchmark, language) the 3 lowest token-F1 samples over experiments, lowest first
    gallery = _table(text, "### Error gallery")
    for bench in ("color-en", "color-ko"):
        shown = [r for r in gallery if r[0] == bench]
        assert [r[2] for r in shown] == ["1", "2", "3"] and shown[0][1] == bench[-2:]
        scores = [float(r[5]) for r in shown]
        # every experiment failed one sample (F1 0): the three worst are three of those, experiments in name order
        assert scores == [0.0, 0.0, 0.0] and [r[3] for r in shown] == ["A1", "B1", "C1"]
        assert all(r[7] == "blue" for r in shown)
    assert (report / "errors-tbi-mllm.html").read_text(encoding="utf-8").count("data:image/png;base64,") >= 4
    full = (report / "errors-tbi-mllm.md").read_text(encoding="utf-8")
    assert (
        "## F4" in full and "0.6667" in full and "## D1" not in full
    )  # per experiment, the partial answers' F1 = 2/3

    # both PNGs are embedded in the self-contained HTML page
    page = (report / "report.html").read_text(encoding="utf-8")
    for png in ("tbi-mllm-frontier.png", "tbi-mllm-errors.png"):
        data = base64.b64encode((report / png).read_bytes()).decode()
        assert (report / png).stat().st_size > 1000 and data in page
    assert "Token efficiency frontier" in page and "Error gallery" in page
