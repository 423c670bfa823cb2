"""End-of-experiment evaluation: greedy generation on the validation split grouped into benchmarks
(task x language on synthetic data), token-F1 / exact-match scores via tbi-evalbench, and latency."""

from __future__ import annotations

import resource
import time
from pathlib import Path

__all__ = [
    "BENCHMARK_NAMES",
    "STRUCTURED_TASKS",
    "aggregate",
    "benchmark_aggregates",
    "evaluate_benchmarks",
    "evaluate_model",
    "load_any_vlm",
    "load_benchmark_questions",
    "score_benchmark",
]

STRUCTURED_TASKS = ("chart", "table", "doc")
"""Tasks whose benchmarks form the Structured average (seed 000: ChartQA, DocVQA, WTQ)."""


BENCHMARK_NAMES = {
    "docvqa": "DocVQA", "infovqa": "InfoVQA", "chartqa": "ChartQA", "textvqa": "TextVQA", "ocrbench": "OCRBench",
    "mathvista": "MathVista", "wtq": "WTQ", "tabfact": "TabFact", "charxiv": "CharXiv", "kdtcbench": "K-DTCBench",
    "mmstar": "MMStar", "seedbench": "SEED-Bench", "vqav2": "VQAv2", "coco_captions": "COCO-Captions",
    "videomme": "Video-MME", "mvbench": "MVBench", "mlvu": "MLVU",
}  # fmt: skip
"""tbi-evalbench loader name -> the benchmark's name in seed 000's tables (MMBench: MMBench-EN / MMBench-KO)."""


def benchmark_aggregates(scores: dict[str, dict]) -> tuple[dict[str, float], dict[str, float]]:
    """`evaluate_benchmarks` scores -> ({seed-000 name: score}, Korean / English / Structured / Overall averages)."""
    from tbi_evalbench import aggregate_scores

    named = {}
    for loader, entry in scores.items():
        base = loader.split(":")[0]
        name = BENCHMARK_NAMES.get(base, loader)
        if base == "mmbench":
            name = "MMBench-KO" if loader.endswith(":ko") else "MMBench-EN"
        named[name] = entry["score"]
    return named, aggregate_scores(named, strict=False)


def _model_folder(folder: Path) -> Path:
    """A suite run folder (result.json) -> its final step's model; a core run folder -> its final/."""
    result = folder / "result.json"
    if result.is_file():
        import json

        key = json.loads(result.read_text())["final_key"]
        store = folder.parents[2] / "store" / key
        return store / "final" if (store / "final").is_dir() else store / "model"
    if (folder / "final").is_dir() and not (folder / "config.json").is_file():
        return folder / "final"
    if (folder / "final" / "model.safetensors").is_file():
        return folder / "final"
    return folder


def load_any_vlm(folder: str | Path):
    """A saved VLM (`final/` of a run, a merge's `model/`), a MoLE folder, or a run folder holding one."""
    folder = _model_folder(Path(folder))
    if (folder / "mole.json").is_file():
        from tbi_train.strategies import load_mole_vlm

        return load_mole_vlm(folder)
    from tbi_train.model import load_vlm

    return load_vlm(folder)


def aggregate(scores: dict[str, float]) -> dict[str, float]:
    """Korean / English / Structured / Overall averages of `task-lang` benchmark scores (macro, equal weight)."""
    groups = {
        "korean": [v for k, v in scores.items() if k.endswith("-ko")],
        "english": [v for k, v in scores.items() if k.endswith("-en")],
        "structured": [v for k, v in scores.items() if k.split("-")[0] in STRUCTURED_TASKS],
        "overall": list(scores.values()),
    }
    return {name: sum(v) / len(v) for name, v in groups.items() if v}


def evaluate_model(
    model_dir: str | Path, val: str | Path, limit: int, max_new_tokens: int, batch_size: int, image_root=None
) -> dict:
    """Scores per `task-lang` benchmark (token F1), the averages, and latency / throughput / peak memory."""
    from tbi_train.data import load_conversations
    from tbi_train.eval import generate, score_predictions

    vlm = load_any_vlm(model_dir)
    dataset = load_conversations(val, image_root=image_root)
    samples = [dataset[i] for i in range(min(limit, len(dataset)))]
    groups: dict[str, list] = {}
    for s in samples:
        groups.setdefault(f"{s.task}-{s.language}", []).append(s)
    scores, latency, predictions = {}, {}, []
    for name, group in sorted(groups.items()):
        started = time.perf_counter()
        answers = generate(vlm, group, max_new_tokens=max_new_tokens, batch_size=batch_size)
        seconds = time.perf_counter() - started
        scored = score_predictions(answers, [s.answers for s in group], [s.id for s in group])
        scores[name] = scored["token_f1"]
        latency[name] = {
            "seconds_per_sample": seconds / len(group),
            "samples_per_second": len(group) / seconds,
        }
        predictions += [
            {"id": s.id, "benchmark": name, "prediction": a, "answers": s.answers}
            for s, a in zip(group, answers)
        ]
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    total = sum(v["seconds_per_sample"] * len(groups[k]) for k, v in latency.items())
    return {
        "scores": scores,
        "aggregates": aggregate(scores),
        "latency": latency,
        "seconds_per_sample": total / max(1, len(samples)),
        "peak_rss_mb": peak_mb,
        "metric": "token_f1 (tbi_evalbench, compat=official)",
        "predictions": predictions,
    }


class _Question:
    """A benchmark question in the shape `tbi_train.eval.generate` reads (id, images, conversations, meta)."""

    def __init__(self, sample, prompt: str):
        import io

        from PIL import Image

        self.id = sample.id
        media = [sample.image] if sample.image is not None else list(sample.frames)
        self.images = [Image.open(io.BytesIO(m) if isinstance(m, bytes) else m).convert("RGB") for m in media]
        tag = "<image>\n" if self.images else ""
        self.conversations = [
            {"from": "human", "value": tag + (sample.question or prompt)},
            {"from": "gpt", "value": ""},
        ]
        self.meta = {"media_frames": [len(self.images)]} if len(self.images) > 1 else {}


def load_benchmark_questions(
    name: str, path: str | Path, image_root: str | Path | None = None, limit: int | None = None
) -> tuple[list, list]:
    """(tbi-evalbench samples, questions for `tbi_train.eval.generate`) of one benchmark file.

    `name` is a loader name with an optional `:language` (`mmbench:ko`); media paths are relative to
    `image_root` (default: the file's folder); `limit` keeps the first N samples (None or 0: all). A question
    without its own prompt gets "Describe the image." (English) or its Korean equivalent.
    """
    from tbi_evalbench import load_benchmark

    loader, _, language = name.partition(":")
    options = {"language": language} if language else {}
    root = image_root if image_root is not None else Path(path).parent
    samples = load_benchmark(loader, path, image_root=root, **options)[: limit or None]
    questions = [
        _Question(s, "Describe the image." if s.language == "en" else "이미지를 설명하세요.") for s in samples
    ]
    return samples, questions


def score_benchmark(samples: list, answers: list[str], compat: str = "official"):
    """The tbi-evalbench `ScoreResult` of `answers` (one per sample) under the benchmark's own metric."""
    from tbi_evalbench import score_metric

    refs = [{"answers": s.answers, "answer": s.answers[0] if s.answers else "", "choices": s.choices,
             "category": s.category, **s.meta} for s in samples]  # fmt: skip
    return score_metric(samples[0].metric, [s.id for s in samples], answers, refs, compat=compat)


def evaluate_benchmarks(
    model_dir: str | Path,
    benchmarks: dict[str, str | Path],
    out: str | Path,
    limit: int | None = None,
    max_new_tokens: int = 512,
    batch_size: int = 8,
    image_root: str | Path | None = None,
    compat: str = "official",
) -> Path:
    """`tbi eval`: answer each benchmark file with a saved VLM (greedy, seed 000 5.3) and score it.

    `benchmarks` maps a tbi-evalbench loader name (docvqa, chartqa, kdtcbench, ...; `mmbench:ko` passes a
    language) to its published file;
    media paths are relative to `image_root` (default: the benchmark file's folder); the benchmark's own
    prompt is used (e.g. K-DTCBench's Korean multiple-choice instruction). Writes
    `out/<name>.predictions.jsonl` and `out/scores.json` (score, metric, compat mode, latency, throughput,
    peak memory per benchmark); returns `out/scores.json`.
    """
    import json

    from tbi_train.eval import generate

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    vlm = load_any_vlm(model_dir)
    scores = {}
    for name, path in benchmarks.items():
        samples, questions = load_benchmark_questions(name, path, image_root, limit)
        started = time.perf_counter()
        answers = generate(vlm, questions, max_new_tokens=max_new_tokens, batch_size=batch_size)
        seconds = time.perf_counter() - started
        result = score_benchmark(samples, answers, compat)
        scores[name] = {
            "score": result.score, "metric": result.metric, "compat": result.compat, "scorer": result.scorer,
            "n": len(samples), "seconds_per_sample": seconds / len(samples), "samples_per_second": len(samples) / seconds,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        }  # fmt: skip
        tmp = out / f"{name}.predictions.jsonl.tmp"
        with tmp.open("w", encoding="utf-8") as f:
            for s, a in zip(samples, answers):
                f.write(
                    json.dumps({"id": s.id, "prediction": a, "answers": s.answers}, ensure_ascii=False) + "\n"
                )
        tmp.replace(out / f"{name}.predictions.jsonl")
    target = out / "scores.json"
    target.with_name("scores.json.tmp").write_text(json.dumps(scores, indent=2, ensure_ascii=False) + "\n")
    target.with_name("scores.json.tmp").replace(target)
    return target
