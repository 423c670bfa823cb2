"""The report's attention-map section: the heatmap PNGs `tbi maps` wrote into run folders (RUN/maps/)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

__all__ = ["maps_section"]

_SAMPLES_PER_RUN = 2
"""Samples of each run shown in the report (the rest stay in RUN/maps/)."""


def maps_section(suite: str, results: dict[str, dict[int, dict]], folder: Path) -> list[str]:
    """Markdown lines showing the maps of the first seed of each experiment that has RUN/maps/index.json.

    The PNGs are copied into the report `folder` (named maps-SUITE-ID-sSEED-FILE) so the HTML page can embed
    them; an experiment without maps adds nothing, and a suite without any adds no section.
    """
    lines: list[str] = []
    for exp_id, runs in sorted(results.items()):
        for seed, result in sorted(runs.items()):
            index_file = Path(result.get("_dir", "")) / "maps" / "index.json"
            if not index_file.is_file():
                continue
            index = json.loads(index_file.read_text(encoding="utf-8"))
            lines += [f"#### {exp_id} seed {seed}", ""]
            for sample in index.get("samples", [])[:_SAMPLES_PER_RUN]:
                lines += [f"sample {sample['id']} (grid {sample['grid'][0]}x{sample['grid'][1]})", ""]
                for png in sample.get("pngs", []):
                    source = index_file.parent / png
                    if not source.is_file():
                        continue
                    name = f"maps-{suite}-{exp_id}-s{seed}-{png}".replace("/", "_")
                    shutil.copyfile(source, folder / name)
                    lines.append(f"![{Path(name).stem}]({name})")
                lines.append("")
            break
    if not lines:
        return []
    return ["### Attention and token maps (tbi maps)", "", *lines]
