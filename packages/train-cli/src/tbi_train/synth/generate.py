"""Write a synthetic bilingual dataset: LLaVA JSON records, PNG images and frame folders, a manifest."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import shutil
import tempfile
from dataclasses import asdict, replace
from pathlib import Path

from tbi_train.synth._fonts import FontBook
from tbi_train.synth._scene import Scene
from tbi_train.synth.chart import make_chart
from tbi_train.synth.config import TASKS, SynthConfig
from tbi_train.synth.errors import SynthError
from tbi_train.synth.shapes import make_color, make_count
from tbi_train.synth.table import make_table
from tbi_train.synth.text import make_doc, make_ocr
from tbi_train.synth.video import make_video

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
"""Bumped whenever the same seed would draw different files."""


def generate_synthetic(
    out_dir: str | Path, n: int = 200, seed: int = 0, *, overwrite: bool = False, **options
) -> Path:
    """Generate `n` bilingual text-rich records into `out_dir` and return it.

    Layout: `train.json`, `val.json` (LLaVA records), `images/<id>.png`, `frames/<id>/<t>.png`,
    `manifest.json` (settings, counts per split/task/language, SHA-256 of every file). The folder
    is built under a temporary name and renamed at the end, so a failed run leaves nothing behind.

    Args:
        out_dir: folder to create.
        n: number of records.
        seed: same seed and options give byte-identical files.
        overwrite: replace an existing non-empty `out_dir`.
        **options: other `SynthConfig` fields (image_size, val_fraction, ko_fraction, num_frames,
            task_weights, font_path).

    Raises:
        SynthError: an unknown option, an invalid value, a missing font, or `out_dir` exists.
    """
    config = SynthConfig.from_options(n=n, seed=seed, **options)
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise SynthError(
            f"{out} exists and is not empty; pass overwrite=True (--overwrite) or choose another --out."
        )
    fonts = FontBook(config.font_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        _write(tmp, config, fonts)
        if out.exists():
            trash = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
            os.replace(out, trash / "old")
            os.replace(tmp, out)
            shutil.rmtree(trash)
        else:
            os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    logger.info("wrote %d synthetic records to %s", config.n, out)
    return out


def plan_records(config: SynthConfig) -> list[tuple[str, str]]:
    """The (scene kind, language) of each record, in file order.

    Counts per kind follow `task_weights` (largest remainder), Korean counts per kind follow
    `ko_fraction`, and the order is shuffled by the seed, so even 10 records cover several kinds.
    """
    weights = {k: config.task_weights.get(k, 0.0) for k in TASKS}
    counts = _largest_remainder(weights, config.n)
    plan = []
    for kind, count in counts.items():
        ko = round(count * config.ko_fraction)
        plan += [(kind, "ko")] * ko + [(kind, "en")] * (count - ko)
    random.Random(f"tbi-synth-order:{config.seed}").shuffle(plan)
    return plan


def validation_indices(n: int, val_fraction: float) -> set[int]:
    """Evenly spread record indices of the validation split: round(n * val_fraction) of them, >= 1 if asked."""
    if val_fraction <= 0 or n < 2:
        return set()
    n_val = min(n - 1, max(1, round(n * val_fraction)))
    return {int((j + 0.5) * n / n_val) for j in range(n_val)}


def build_scene(kind: str, lang: str, index: int, config: SynthConfig, fonts: FontBook) -> Scene:
    """Draw record `index` of scene kind `kind` in language `lang`; depends only on (seed, index, kind, lang)."""
    rng = random.Random(f"tbi-synth:{config.seed}:{index}:{kind}:{lang}")
    size = config.image_size
    makers = {
        "ocr": lambda: make_ocr(rng, lang, size, fonts),
        "chart": lambda: make_chart(rng, lang, size, fonts),
        "table": lambda: make_table(rng, lang, size, fonts),
        "doc": lambda: make_doc(rng, lang, size, fonts),
        "count": lambda: make_count(rng, lang, size),
        "color": lambda: make_color(rng, lang, size),
        "video": lambda: make_video(rng, lang, size, config.num_frames),
    }
    if kind != "caption":
        return makers[kind]()
    scene = makers[rng.choice(("count", "color", "ocr", "chart", "table", "doc"))]()
    prompt = "이미지를 한 문장으로 설명해 주세요." if lang == "ko" else "Describe the image in one sentence."
    return replace(scene, task="caption", question=prompt, answers=[scene.caption])


def _write(root: Path, config: SynthConfig, fonts: FontBook) -> None:
    val = validation_indices(config.n, config.val_fraction)
    splits: dict[str, list[dict]] = {"train": [], "val": []}
    for index, (kind, lang) in enumerate(plan_records(config)):
        scene = build_scene(kind, lang, index, config, fonts)
        rid = f"synth-{index:05d}-{kind}-{lang}"
        record: dict[str, object] = {"id": rid}
        if kind == "video":
            folder = root / "frames" / rid
            folder.mkdir(parents=True)
            for t, frame in enumerate(scene.images):
                frame.save(folder / f"{t:03d}.png", format="PNG")
            record["video"] = f"frames/{rid}/"
        else:
            (root / "images").mkdir(exist_ok=True)
            scene.images[0].save(root / "images" / f"{rid}.png", format="PNG")
            record["image"] = f"images/{rid}.png"
        record["conversations"] = [
            {"from": "human", "value": f"<image>\n{scene.question}"},
            {"from": "gpt", "value": scene.answers[0]},
        ]
        record.update(
            language=lang,
            task=scene.task,
            answers=scene.answers,
            caption=scene.caption,
            source=f"synth/{kind}",
        )
        record["truth"] = scene.meta
        splits["val" if index in val else "train"].append(record)
    for split, records in splits.items():
        (root / f"{split}.json").write_text(
            json.dumps(records, ensure_ascii=False, indent=1), encoding="utf-8"
        )
    manifest = {
        "generator": "tbi_train.synth",
        "format_version": FORMAT_VERSION,
        "config": asdict(config),
        "font_sha256": _sha256(Path(config.font_path)),
        "counts": {split: _counts(records) for split, records in splits.items()},
        "files": {p.relative_to(root).as_posix(): _sha256(p) for p in sorted(root.rglob("*")) if p.is_file()},
    }
    (root / "manifest.json").write_text(json.dumps(manifest, ensure_ascii=False, indent=1), encoding="utf-8")


def _counts(records: list[dict]) -> dict[str, object]:
    by: dict[str, dict[str, int]] = {}
    for r in records:
        by.setdefault(str(r["task"]), {}).setdefault(str(r["language"]), 0)
        by[str(r["task"])][str(r["language"])] += 1
    return {"total": len(records), "by_task_language": by}


def _largest_remainder(weights: dict[str, float], n: int) -> dict[str, int]:
    total = sum(weights.values())
    exact = {k: n * w / total for k, w in weights.items()}
    counts = {k: int(v) for k, v in exact.items()}
    leftover = n - sum(counts.values())
    for k in sorted(exact, key=lambda k: (counts[k] - exact[k], TASKS.index(k)))[:leftover]:
        counts[k] += 1
    return counts


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()
