"""The report's merge-search section: every `merge_search.json` under a runs folder (`tbi merge --search`),
shown as its candidate table (best marked) and its score-vs-lambda plot."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

__all__ = ["merge_search_section"]


def merge_search_section(runs_dir: str | Path, out: Path) -> list[str]:
    """Markdown lines (tables + images copied into `out`) for each merge search found under `runs_dir`."""
    md: list[str] = []
    for i, file in enumerate(sorted(Path(runs_dir).rglob("merge_search.json"))):
        if out in file.parents:
            continue
        data = json.loads(file.read_text(encoding="utf-8"))
        rows, best = data["rows"], data["best"]
        columns = list(dict.fromkeys(k for r in rows for k in r if k != "candidate"))
        header = ["#", *columns]
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for r in rows:
            mark = " (best)" if r["candidate"] == best["candidate"] else ""
            cells = [f"{r[c]:.4f}" if isinstance(r.get(c), float) else str(r.get(c, "")) for c in columns]
            lines.append("| " + " | ".join([f"{r['candidate']}{mark}", *cells]) + " |")
        where = file.parent.relative_to(runs_dir) if file.parent != Path(runs_dir) else Path(".")
        md += [
            f"## Merge-weight search: {where} ({data['method']}, {len(rows)} candidates)",
            "",
            f"Best: lambda_en {best['lambda_en']:g}, lambda_ko {best['lambda_ko']:g}, density {best['density']:g}"
            f" (overall {best.get('overall', float('nan')):.4f}); model {data['best_model']}.",
            "",
            *lines,
            "",
        ]
        plot = file.with_name("merge_search.png")
        if plot.is_file():
            name = f"merge-search-{i}.png"
            shutil.copy(plot, out / name)
            md += [f"![{Path(name).stem}]({name})", ""]
    return md
