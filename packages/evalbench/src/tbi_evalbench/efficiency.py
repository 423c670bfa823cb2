"""Token efficiency: quality against visual tokens per frame, the Pareto frontier, a table and a PNG plot.

Seed 003 (foveated VLM) asks whether 1 foveated token per frame is worth 16 standard tokens: every run (and
every evaluation mode of one model: ``coarse_only``, ``coarse_fine``, ``autoregressive``) is a point
``(t, s)`` of visual tokens per frame and score. A run is on the Pareto frontier when no other run dominates it:

    (t', s') dominates (t, s)  iff  t' <= t and s' >= s and (t' < t or s' > s)

so the frontier is the best score reachable at each token budget. With several seeds a point's score is the
mean over seeds (its std is drawn as an error bar and printed in the table).

Points are ``{run: (tokens_per_frame, score)}`` or ``{run: (tokens_per_frame, [score per seed, ...])}``.
"""

from __future__ import annotations

import csv
import io
import math
import numbers
from collections.abc import Mapping, Sequence
from pathlib import Path

from tbi_evalbench._errors import EvalbenchError
from tbi_evalbench.report import _figure, _save
from tbi_evalbench.stats import mean_std

Points = Mapping[str, tuple[float, float | Sequence[float]]]


def _mean_stds(points: Points) -> dict[str, tuple[float, float, float]]:
    """``{run: (tokens, mean score, std over seeds)}``, validated."""
    if not points:
        raise EvalbenchError(
            "no runs given; pass {run: (visual tokens per frame, score or [score per seed])}"
        )
    out = {}
    for run, value in points.items():
        if not (isinstance(value, (tuple, list)) and len(value) == 2):
            raise EvalbenchError(f"run {run!r}: expected (tokens_per_frame, score), got {value!r}")
        tokens, scores = value
        if not isinstance(tokens, numbers.Real) or not math.isfinite(tokens) or tokens < 0:
            raise EvalbenchError(
                f"run {run!r}: tokens per frame must be a finite number >= 0, got {tokens!r}"
            )
        try:
            m, s = mean_std([scores] if isinstance(scores, numbers.Real) else list(scores))
        except (EvalbenchError, TypeError, ValueError) as exc:
            raise EvalbenchError(f"run {run!r}: scores {scores!r}: {exc}") from None
        out[str(run)] = (float(tokens), m, s)
    return out


def pareto_frontier(points: Points) -> list[str]:
    """The runs no other run dominates (fewer-or-equal tokens and higher-or-equal score, one strictly).

    Sorted by tokens per frame (then score, descending; then name). Two runs with identical (tokens, score) do not
    dominate each other, so both are kept. O(n log n): a sweep over runs sorted by tokens.
    """
    stats = _mean_stds(points)
    order = sorted(stats, key=lambda r: (stats[r][0], -stats[r][1], r))
    frontier: list[str] = []
    best_fewer = -math.inf  # best score among runs with strictly fewer tokens
    i = 0
    while i < len(order):
        tokens = stats[order[i]][0]
        group = [r for r in order[i:] if stats[r][0] == tokens]
        top = stats[group[0]][1]
        if top > best_fewer:
            frontier += [r for r in group if stats[r][1] == top]
        best_fewer = max(best_fewer, top)
        i += len(group)
    return frontier


def efficiency_table(
    points: Points,
    *,
    baseline: str | None = None,
    fmt: str = "markdown",
    decimals: int = 4,
) -> str:
    """Runs sorted by visual tokens per frame: score, frontier membership and the trade-off against a baseline.

    Columns: ``run``, ``tokens/frame``, ``score`` (``mean ± std`` over seeds), ``pareto`` (``yes`` on the frontier)
    and, with ``baseline``, ``Δ score`` (mean - baseline mean), ``token ratio`` (tokens / baseline tokens) and
    ``score retained`` (mean / baseline mean): "1/16 of the tokens keeps 97% of the score".

    Args:
        points: ``{run: (tokens_per_frame, score or [score per seed])}``.
        baseline: the run to compare the others to (e.g. the 16-token B1), or None.
        fmt: ``markdown`` or ``csv``.
    """
    if fmt not in ("markdown", "csv"):
        raise EvalbenchError(f"efficiency_table: unknown format {fmt!r}; use markdown or csv")
    stats = _mean_stds(points)
    if baseline is not None and baseline not in stats:
        raise EvalbenchError(f"baseline {baseline!r} is not among the runs {sorted(stats)}")
    frontier = set(pareto_frontier(points))
    header = ["run", "tokens/frame", "score", "pareto"]
    if baseline is not None:
        header += ["Δ score", "token ratio", "score retained"]
    rows = []
    for run in sorted(stats, key=lambda r: (stats[r][0], -stats[r][1], r)):
        tokens, m, s = stats[run]
        row = [
            f"{run} (baseline)" if run == baseline else run,
            f"{tokens:g}",
            f"{m:.{decimals}f} ± {s:.{decimals}f}",
            "yes" if run in frontier else "",
        ]
        if baseline is not None:
            bt, bm, _ = stats[baseline]
            row += [
                f"{m - bm:+.{decimals}f}",
                f"{tokens / bt:.4g}×" if bt > 0 else "-",
                f"{m / bm:.{decimals}f}" if bm != 0 else "-",
            ]
        rows.append(row)
    if fmt == "csv":
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)
        return buf.getvalue()
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def plot_token_frontier(
    points: Points,
    path: str | Path,
    *,
    series: Mapping[str, str] | None = None,
    title: str = "Token efficiency frontier",
    ylabel: str = "score",
    log_x: bool = True,
) -> Path:
    """Score against visual tokens per frame, one marker per run, the Pareto frontier drawn and ringed. PNG.

    Args:
        points: ``{run: (tokens_per_frame, score or [score per seed])}``; seeds give std error bars.
        series: optional ``{run: group}`` (evaluation mode, model family) that colours the markers.
        log_x: log2 token axis (1, 2, 4, ... 16 tokens); needs every run to have > 0 tokens.
    """
    stats = _mean_stds(points)
    if log_x and any(t <= 0 for t, _, _ in stats.values()):
        raise EvalbenchError("log_x needs every run to have > 0 tokens per frame; pass log_x=False")
    groups = series or {}
    unknown = sorted(set(groups) - set(stats))
    if unknown:
        raise EvalbenchError(f"series names runs that have no point: {unknown}")
    fig, ax = _figure((7, 4.5))
    order = list(dict.fromkeys(groups.get(r, "runs") for r in stats))
    for k, group in enumerate(order):
        runs = [r for r in stats if groups.get(r, "runs") == group]
        ax.errorbar(
            [stats[r][0] for r in runs],
            [stats[r][1] for r in runs],
            yerr=[stats[r][2] for r in runs],
            fmt="o",
            color=f"C{k % 10}",
            capsize=3,
            label=group if series else None,
        )
    front = pareto_frontier(points)
    fx, fy = [stats[r][0] for r in front], [stats[r][1] for r in front]
    # a staircase: the best score reachable with at most t tokens stays flat until the next frontier run
    ax.step(fx, fy, where="post", color="black", linewidth=1.2, linestyle="--", label="Pareto frontier")
    ax.scatter(fx, fy, s=160, facecolors="none", edgecolors="black", linewidths=1.5, zorder=3)
    for run, (t, m, _) in stats.items():
        ax.annotate(run, (t, m), textcoords="offset points", xytext=(5, 5), fontsize=8)
    if log_x:
        from matplotlib.ticker import FuncFormatter

        ax.set_xscale("log", base=2)
        ax.xaxis.set_major_formatter(
            FuncFormatter(lambda v, _: f"{v:g}")
        )  # 1, 2, 4, 16 rather than 2^0, 2^1, ...
    ax.set_xlabel("visual tokens per frame")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)
