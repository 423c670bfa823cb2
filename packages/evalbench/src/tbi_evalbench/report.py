"""Results tables (Markdown, CSV) and PNG plots (training curves, ablation heatmap, radar chart).

Plots use matplotlib's object API with the Agg canvas (no pyplot, no global backend switch, no display
needed) and are written atomically.

Table cells are ``mean ± std`` over seeds (4 decimals); with a ``baseline`` every other experiment's cell gets
``*`` when its paired t-test against the baseline on matched seeds is significant after the correction over
all comparisons (Bonferroni by default), and the baseline row is marked ``(baseline)``.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

from tbi_evalbench._errors import EvalbenchError
from tbi_evalbench._io import atomic_write_bytes, atomic_write_text
from tbi_evalbench.stats import compare_to_baseline, format_mean_std

Runs = Mapping[str, Mapping[str, Mapping[int, float]]]


def _benchmarks(runs: Runs) -> list[str]:
    seen: list[str] = []
    for benches in runs.values():
        seen += [b for b in benches if b not in seen]
    return seen


def results_table(
    runs: Runs,
    *,
    baseline: str | None = None,
    fmt: str = "markdown",
    alpha: float = 0.05,
    correction: str = "bonferroni",
    decimals: int = 4,
) -> str:
    """Experiments x benchmarks table of ``mean ± std`` with significance marks.

    Args:
        runs: experiment -> benchmark -> seed -> score.
        baseline: experiment to test the others against (paired t-test on matched seeds), or None for no marks.
        fmt: ``markdown`` or ``csv``.
    """
    if not runs:
        raise EvalbenchError("results_table: no runs given")
    if fmt not in ("markdown", "csv"):
        raise EvalbenchError(f"results_table: unknown format {fmt!r}; use markdown or csv")
    benches = _benchmarks(runs)
    marks: dict[tuple[str, str], bool] = {}
    if baseline is not None:
        for c in compare_to_baseline(runs, baseline, alpha=alpha, correction=correction):
            marks[(c.experiment, c.benchmark)] = c.significant
    rows = []
    for exp, by_bench in runs.items():
        label = f"{exp} (baseline)" if exp == baseline else exp
        cells = []
        for b in benches:
            seeds = by_bench.get(b)
            if not seeds:
                cells.append("-")
                continue
            cell = format_mean_std(list(seeds.values()), decimals)
            cells.append(cell + ("*" if marks.get((exp, b)) else ""))
        rows.append([label, *cells])
    header = ["experiment", *benches]
    if fmt == "csv":
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)
        return buf.getvalue()
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    if baseline is not None:
        lines += [
            "",
            f"`*`: p < {alpha} vs {baseline} (paired t-test on matched seeds, {correction} correction).",
        ]
    return "\n".join(lines) + "\n"


def write_table(path: str | Path, runs: Runs, **kwargs) -> Path:
    """:func:`results_table` written atomically; the format follows the suffix (``.csv`` or Markdown)."""
    path = Path(path)
    fmt = "csv" if path.suffix.lower() == ".csv" else "markdown"
    return atomic_write_text(path, results_table(runs, fmt=fmt, **kwargs))


def _figure(figsize, polar: bool = False):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(111, projection="polar" if polar else None)
    return fig, ax


def _save(fig, path: str | Path) -> Path:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight")
    return atomic_write_bytes(path, buf.getvalue())


def plot_training_curves(
    curves: Mapping[str, tuple[Sequence[float], Sequence[float]]],
    path: str | Path,
    *,
    title: str = "Training curves",
    ylabel: str = "loss",
) -> Path:
    """Line plot of ``{run name: (steps, values)}`` to a PNG."""
    if not curves:
        raise EvalbenchError("plot_training_curves: no curves given")
    fig, ax = _figure((7, 4.5))
    for name, (steps, values) in curves.items():
        if len(steps) != len(values) or not steps:
            raise EvalbenchError(
                f"curve {name!r}: {len(steps)} steps but {len(values)} values (need equal, > 0)"
            )
        ax.plot(list(steps), list(values), label=name, linewidth=1.5)
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def plot_ablation_heatmap(
    scores: Mapping[str, Mapping[str, float]],
    path: str | Path,
    *,
    baseline: str | None = None,
    title: str = "Ablation: component contributions",
) -> Path:
    """Heatmap of experiments x benchmarks; with ``baseline`` the cells are differences to it (contributions)."""
    if not scores:
        raise EvalbenchError("plot_ablation_heatmap: no scores given")
    exps = [e for e in scores if e != baseline] if baseline else list(scores)
    benches = _benchmarks({e: scores[e] for e in scores})
    if baseline is not None and baseline not in scores:
        raise EvalbenchError(f"baseline {baseline!r} is not among {sorted(scores)}")
    grid = []
    for e in exps:
        row = []
        for b in benches:
            v = scores[e].get(b, math.nan)
            if baseline is not None:
                v = v - scores[baseline].get(b, math.nan)
            row.append(v)
        grid.append(row)
    fig, ax = _figure((1.2 + 1.1 * len(benches), 1.0 + 0.5 * len(exps)))
    finite = [abs(v) for row in grid for v in row if not math.isnan(v)]
    lim = max(finite) if finite else 1.0
    im = ax.imshow(
        grid,
        cmap="RdBu" if baseline else "viridis",
        vmin=-lim if baseline else None,
        vmax=lim if baseline else None,
        aspect="auto",
    )
    ax.set_xticks(range(len(benches)), labels=benches, rotation=35, ha="right")
    ax.set_yticks(range(len(exps)), labels=exps)
    for i, row in enumerate(grid):
        for j, v in enumerate(row):
            if not math.isnan(v):
                ax.text(j, i, f"{v:+.3f}" if baseline else f"{v:.3f}", ha="center", va="center", fontsize=7)
    fig.colorbar(im, ax=ax, label=f"Δ vs {baseline}" if baseline else "score")
    ax.set_title(title)
    return _save(fig, path)


def plot_radar(
    scores: Mapping[str, Mapping[str, float]], path: str | Path, *, title: str = "Benchmarks"
) -> Path:
    """Radar chart: one polygon per experiment over the benchmarks (needs >= 3 benchmarks)."""
    benches = _benchmarks(scores) if scores else []
    if len(benches) < 3:
        raise EvalbenchError(f"plot_radar needs at least 3 benchmarks, got {benches}")
    angles = [2 * math.pi * k / len(benches) for k in range(len(benches))]
    fig, ax = _figure((6, 6), polar=True)
    for exp, by_bench in scores.items():
        values = [by_bench.get(b, 0.0) for b in benches]
        ax.plot([*angles, angles[0]], [*values, values[0]], label=exp, linewidth=1.5)
        ax.fill([*angles, angles[0]], [*values, values[0]], alpha=0.08)
    ax.set_xticks(angles, labels=benches, fontsize=8)
    ax.set_title(title)
    ax.legend(loc="upper right", bbox_to_anchor=(1.3, 1.1), fontsize=8)
    return _save(fig, path)
