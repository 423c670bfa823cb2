"""Error-analysis gallery: the worst-scored samples per experiment, benchmark and language (seed 000 section 12).

Input is the per-sample results of one or more experiments, ``{experiment: [record, ...]}``, each record a
:class:`SampleResult` or a mapping with its fields. The gallery groups every experiment's records by
(benchmark, language) and keeps the ``k`` lowest scores of each group (ties broken by id, so the page is the
same on every run). For each shown sample it also gives the score the other experiments got on the same
(benchmark, id), so a regression is visible next to the failure.

Two renderings of the same content:

- Markdown: a summary table (n and mean score per group), then one table per group; the image is its path.
- HTML fragment (no ``<html>``/``<body>``, to paste into a report page): the same tables with the image as a
  small PNG thumbnail embedded as a ``data:`` URI (made with Pillow, longest side ``thumb_px``), all text escaped.

A missing image file is an error (usually a wrong ``image_root``); a file Pillow cannot read (a video) gets no
thumbnail and says so.
"""

from __future__ import annotations

import base64
import html
import io
import math
import numbers
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tbi_evalbench._errors import EvalbenchError
from tbi_evalbench._io import atomic_write_text


@dataclass(frozen=True)
class SampleResult:
    """One scored sample of one experiment.

    Attributes:
        id: the benchmark's sample id.
        question: the question asked.
        prediction: the model's answer.
        answers: the gold answers.
        score: the sample's score (a fraction in [0, 1] for most metrics; lower is worse).
        benchmark: the benchmark the sample belongs to.
        language: ``en``, ``ko``, ...
        image: an image path (relative to ``image_root``), the image bytes, or None.
    """

    id: str
    question: str
    prediction: str
    answers: list[str]
    score: float
    benchmark: str
    language: str = "en"
    image: str | bytes | None = None


@dataclass
class ErrorGallery:
    """The rendered gallery.

    Attributes:
        markdown: the Markdown page.
        html: the HTML fragment with embedded thumbnails.
        worst: ``{(experiment, benchmark, language): [worst samples, lowest score first]}``.
    """

    markdown: str
    html: str
    worst: dict[tuple[str, str, str], list[SampleResult]] = field(default_factory=dict)


_FIELDS = ("id", "question", "prediction", "answers", "score", "benchmark")


def _record(raw: SampleResult | Mapping[str, Any], where: str) -> SampleResult:
    if isinstance(raw, SampleResult):
        rec = raw
    elif isinstance(raw, Mapping):
        missing = [k for k in _FIELDS if k not in raw]
        if missing:
            raise EvalbenchError(f"{where}: missing {missing}; each record needs {', '.join(_FIELDS)}")
        answers = raw["answers"]
        rec = SampleResult(
            id=str(raw["id"]),
            question=str(raw["question"]),
            prediction=str(raw["prediction"]),
            answers=[answers] if isinstance(answers, str) else [str(a) for a in answers],
            score=raw["score"],
            benchmark=str(raw["benchmark"]),
            language=str(raw.get("language") or "en"),
            image=raw.get("image"),
        )
    else:
        raise EvalbenchError(f"{where}: expected a SampleResult or a mapping, got {type(raw).__name__}")
    if isinstance(rec.score, bool) or not isinstance(rec.score, numbers.Real) or not math.isfinite(rec.score):
        raise EvalbenchError(f"{where} (id {rec.id!r}): score must be a finite number, got {rec.score!r}")
    if rec.image is not None and not isinstance(rec.image, (str, bytes, Path)):
        raise EvalbenchError(f"{where} (id {rec.id!r}): image must be a path, bytes or None")
    return rec


def _collect(
    results: Mapping[str, Iterable[SampleResult | Mapping[str, Any]]],
) -> dict[str, list[SampleResult]]:
    if not results:
        raise EvalbenchError("error gallery: no experiments given; pass {experiment: [records]}")
    out: dict[str, list[SampleResult]] = {}
    for exp, records in results.items():
        seen: set[tuple[str, str]] = set()
        recs = []
        for i, raw in enumerate(records):
            rec = _record(raw, f"experiment {exp!r} record {i}")
            key = (rec.benchmark, rec.id)
            if key in seen:
                raise EvalbenchError(
                    f"experiment {exp!r} record {i}: duplicate id {rec.id!r} in benchmark {rec.benchmark!r}; "
                    "give each sample one record per experiment"
                )
            seen.add(key)
            recs.append(rec)
        out[str(exp)] = recs
    return out


def _thumbnail(image: str | bytes | Path, root: Path | None, px: int, where: str) -> str | None:
    """Base64 PNG of the image shrunk to ``px`` on its longest side; None when Pillow cannot read it."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    if isinstance(image, bytes):
        source: Any = io.BytesIO(image)
    else:
        path = Path(image)
        source = root / path if root is not None and not path.is_absolute() else path
        if not source.is_file():
            raise EvalbenchError(
                f"{where}: image {str(source)!r} does not exist; pass image_root= (the folder the image paths are "
                "relative to) or fix the record's 'image'"
            )
    try:
        with Image.open(source) as im:
            im = ImageOps.exif_transpose(im)
            im = im.convert("RGBA" if im.mode in ("RGBA", "LA", "P") else "RGB")
            im.thumbnail((px, px))
            buf = io.BytesIO()
            im.save(buf, format="PNG", optimize=True)
    except (UnidentifiedImageError, OSError):
        return None
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _clip(text: str, max_chars: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= max_chars else text[: max_chars - 1] + "…"


def _md_cell(text: str) -> str:
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("<", "&lt;").replace(">", "&gt;")


def error_gallery(
    results: Mapping[str, Iterable[SampleResult | Mapping[str, Any]]],
    *,
    k: int = 5,
    image_root: str | Path | None = None,
    thumb_px: int = 96,
    max_chars: int = 200,
    title: str = "Error analysis",
) -> ErrorGallery:
    """The ``k`` worst-scored samples per experiment, benchmark and language, as Markdown and an HTML fragment.

    Args:
        results: ``{experiment: [SampleResult or {"id", "question", "prediction", "answers", "score",
            "benchmark", "language", "image"}]}``.
        k: samples shown per (experiment, benchmark, language) group.
        image_root: folder relative image paths are resolved against.
        thumb_px: longest side of the embedded thumbnails, in pixels.
        max_chars: question, prediction and answers are cut to this many characters (whitespace collapsed).
    """
    if k < 1 or thumb_px < 8 or max_chars < 10:
        raise EvalbenchError(f"need k >= 1, thumb_px >= 8, max_chars >= 10; got {k}, {thumb_px}, {max_chars}")
    data = _collect(results)
    root = Path(image_root) if image_root is not None else None
    by_key = {exp: {(r.benchmark, r.id): r.score for r in recs} for exp, recs in data.items()}
    groups: dict[tuple[str, str, str], list[SampleResult]] = {}
    for exp, recs in data.items():
        for r in recs:
            groups.setdefault((exp, r.benchmark, r.language), []).append(r)
    worst = {key: sorted(recs, key=lambda r: (r.score, r.id))[:k] for key, recs in groups.items()}
    thumbs: dict[Any, str | None] = {}  # one thumbnail per image, however many experiments show it

    def thumb(rec: SampleResult, exp: str) -> str | None:
        key = rec.image if isinstance(rec.image, bytes) else str(rec.image)
        if key not in thumbs:
            thumbs[key] = _thumbnail(rec.image, root, thumb_px, f"experiment {exp!r} id {rec.id!r}")
        return thumbs[key]

    def others(rec: SampleResult, exp: str) -> str:
        scores = [
            f"{e} {s[(rec.benchmark, rec.id)]:.2f}"
            for e, s in by_key.items()
            if e != exp and (rec.benchmark, rec.id) in s
        ]
        return ", ".join(scores)

    md = [
        f"# {title}",
        "",
        f"Worst {k} samples per experiment, benchmark and language (lowest score first).",
        "",
    ]
    md += ["| experiment | benchmark | language | n | mean score |", "|---|---|---|---|---|"]
    for (exp, bench, lang), recs in groups.items():
        mean = sum(r.score for r in recs) / len(recs)
        md.append(f"| {_md_cell(exp)} | {_md_cell(bench)} | {_md_cell(lang)} | {len(recs)} | {mean:.4f} |")
    out = ['<section class="tbi-error-gallery">', f"<h1>{html.escape(title)}</h1>"]
    columns = ["#", "id", "score", "question", "prediction", "answers", "other experiments", "image"]
    current_exp = None
    for (exp, bench, lang), recs in worst.items():
        if exp != current_exp:
            md += ["", f"## {_md_cell(exp)}"]
            out.append(f"<h2>{html.escape(exp)}</h2>")
            current_exp = exp
        group = groups[(exp, bench, lang)]
        heading = f"{bench} · {lang} (n={len(group)}, mean {sum(r.score for r in group) / len(group):.4f})"
        md += [
            "",
            f"### {_md_cell(heading)}",
            "",
            "| " + " | ".join(columns) + " |",
            "|" + "---|" * len(columns),
        ]
        out += [f"<h3>{html.escape(heading)}</h3>", "<table>"]
        out.append("<tr>" + "".join(f"<th>{c}</th>" for c in columns) + "</tr>")
        for rank, r in enumerate(recs, start=1):
            cells = [
                str(rank),
                r.id,
                f"{r.score:.4f}",
                _clip(r.question, max_chars),
                _clip(r.prediction, max_chars),
                _clip("; ".join(r.answers), max_chars),
                others(r, exp),
            ]
            md_image, html_image = "", ""
            if r.image is not None:
                md_image = "(embedded)" if isinstance(r.image, bytes) else f"`{r.image}`"
                b64 = thumb(r, exp)
                html_image = (
                    f'<img src="data:image/png;base64,{b64}" alt="{html.escape(r.id)}" '
                    f'style="max-width:{thumb_px}px;max-height:{thumb_px}px">'
                    if b64
                    else f"<em>no preview</em> {html.escape(md_image.strip('`'))}"
                )
            md.append("| " + " | ".join(_md_cell(c) for c in [*cells, md_image]) + " |")
            out.append(
                "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells) + f"<td>{html_image}</td></tr>"
            )
        out.append("</table>")
    out.append("</section>")
    return ErrorGallery("\n".join(md) + "\n", "\n".join(out) + "\n", worst)


def write_error_gallery(
    results: Mapping[str, Iterable[SampleResult | Mapping[str, Any]]],
    out_dir: str | Path,
    *,
    name: str = "errors",
    **options,
) -> tuple[Path, Path]:
    """:func:`error_gallery` written atomically as ``<out_dir>/<name>.md`` and ``<out_dir>/<name>.html``.

    Both are rendered before either is written, so bad input leaves nothing behind.
    """
    gallery = error_gallery(results, **options)
    out = Path(out_dir)
    return (
        atomic_write_text(out / f"{name}.md", gallery.markdown),
        atomic_write_text(out / f"{name}.html", gallery.html),
    )
