"""The report's error gallery: the worst-scored validation samples per benchmark and language (seed 000 section 12).

From each experiment's first finished seed, `predictions.jsonl` (id, benchmark, prediction, answers, and the
question / language / image path the runner adds) is scored per sample with token F1 (tbi_evalbench, compat
official: the metric of the results table). In the report: for every (benchmark, language) the `k` worst samples
over all experiments (a table, and a contact sheet PNG of their images); beside it, tbi_evalbench's full gallery
per experiment, benchmark and language as `errors-<suite>.md` / `errors-<suite>.html` (thumbnails embedded).
"""

from __future__ import annotations

import json
from pathlib import Path

__all__ = ["gallery_records", "gallery_section"]

_K = 3
"""Worst samples shown per (benchmark, language) in the report, and per group in the full gallery."""


def _language(row: dict) -> str:
    if row.get("language"):
        return str(row["language"])
    suffix = str(row["benchmark"]).rsplit("-", 1)[-1]
    return suffix if suffix in ("ko", "en") else "?"


def gallery_records(results: dict[str, dict[int, dict]]) -> dict[str, list[dict]]:
    """{experiment: [tbi_evalbench gallery record]} from the first finished seed's predictions.jsonl."""
    from tbi_evalbench import token_f1

    out = {}
    for exp_id, runs in sorted(results.items()):
        done = [r for _, r in sorted(runs.items()) if r.get("status") == "done"]
        file = Path(done[0]["_dir"]) / "predictions.jsonl" if done else None
        if file is None or not file.is_file():
            continue
        rows = [json.loads(line) for line in file.read_text(encoding="utf-8").splitlines() if line.strip()]
        if not rows:
            continue
        answers = [list(r["answers"]) for r in rows]
        scores = token_f1([str(r["prediction"]) for r in rows], answers, compat="official",
                          ids=[str(r["id"]) for r in rows]).per_sample  # fmt: skip
        out[exp_id] = [_record(r, a, s) for r, a, s in zip(rows, answers, scores)]
    return out


def _record(row: dict, answers: list[str], score: float) -> dict:
    image = row.get("image")
    return {
        "id": str(row["id"]),
        "question": row.get("question", ""),
        "prediction": str(row["prediction"]),
        "answers": answers,
        "score": float(score),
        "benchmark": str(row["benchmark"]),
        "language": _language(row),
        # an image that is gone (the runs folder moved) is shown without a thumbnail
        "image": image if image and Path(image).is_file() else None,
    }


def _worst(records: dict[str, list[dict]], k: int) -> dict[tuple[str, str], list[tuple[str, dict]]]:
    """{(benchmark, language): k worst (experiment, record)}, lowest score first, ties by experiment then id."""
    groups: dict[tuple[str, str], list[tuple[str, dict]]] = {}
    for exp_id, recs in records.items():
        for r in recs:
            groups.setdefault((r["benchmark"], r["language"]), []).append((exp_id, r))
    return {
        key: sorted(items, key=lambda x: (x[1]["score"], x[0], x[1]["id"]))[:k]
        for key, items in sorted(groups.items())
    }


def _cell(text: str, limit: int = 60) -> str:
    text = " ".join(str(text).split()).replace("|", "/")
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _contact_sheet(
    worst: dict[tuple[str, str], list[tuple[str, dict]]], path: Path, title: str
) -> Path | None:
    """One row per (benchmark, language), its worst samples' images captioned `experiment id score`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image

    if not any(r["image"] for items in worst.values() for _, r in items):
        return None
    cols = max(len(items) for items in worst.values())
    fig, axes = plt.subplots(len(worst), cols, figsize=(1.9 * cols + 1.2, 1.7 * len(worst)), squeeze=False)
    for row, ((bench, lang), items) in enumerate(worst.items()):
        axes[row][0].set_ylabel(f"{bench}\n{lang}", fontsize=8)
        for col in range(cols):
            ax = axes[row][col]
            ax.set_xticks([])
            ax.set_yticks([])
            if col >= len(items):
                ax.axis("off")
                continue
            exp_id, r = items[col]
            if r["image"]:
                with Image.open(r["image"]) as im:
                    im = im.convert("RGB")
                    im.thumbnail((128, 128))
                    ax.imshow(im)
            else:
                ax.text(0.5, 0.5, "no image", ha="center", va="center", fontsize=7)
            ax.set_title(f"{exp_id} {_cell(r['id'], 14)}\nscore {r['score']:.2f}", fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def gallery_section(suite: str, results: dict[str, dict[int, dict]], folder: Path, k: int = _K) -> list[str]:
    """Markdown lines of the error gallery (PNG and full gallery files written into `folder`); empty when no
    run has predictions."""
    from tbi_evalbench import write_error_gallery

    records = gallery_records(results)
    if not records:
        return []
    write_error_gallery(records, folder, name=f"errors-{suite}", k=k, title=f"{suite}: error analysis")
    worst = _worst(records, k)
    header = [
        "benchmark",
        "language",
        "rank",
        "experiment",
        "id",
        "score",
        "question",
        "prediction",
        "answers",
    ]
    rows = [
        [
            bench,
            lang,
            str(rank),
            exp_id,
            _cell(r["id"], 30),
            f"{r['score']:.4f}",
            _cell(r["question"]),
            _cell(r["prediction"]),
            _cell("; ".join(r["answers"])),
        ]
        for (bench, lang), items in worst.items()
        for rank, (exp_id, r) in enumerate(items, start=1)
    ]
    lines = [
        "### Error gallery (worst validation samples per benchmark and language)",
        "",
        f"The {k} lowest per-sample token F1 scores over the experiments (first seed of each); the full gallery "
        f"per experiment is errors-{suite}.md / errors-{suite}.html.",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
        *["| " + " | ".join(r) + " |" for r in rows],
        "",
    ]
    sheet = _contact_sheet(worst, folder / f"{suite}-errors.png", f"{suite}: worst samples per benchmark")
    if sheet is not None:
        lines += [f"![{sheet.stem}]({sheet.name})", ""]
    return lines
