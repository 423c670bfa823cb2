"""The report's token-efficiency section: Overall score against visual tokens per image/frame, across a suite's
experiments, with the Pareto frontier (tbi_evalbench.efficiency): a table, a CSV and a PNG."""

from __future__ import annotations

import numbers
from pathlib import Path

__all__ = ["frontier_points", "frontier_section"]


def frontier_points(results: dict[str, dict[int, dict]]) -> dict[str, tuple[float, list[float]]]:
    """{experiment: (visual tokens per image, [Overall per seed])} of the finished runs that recorded both."""
    points = {}
    for exp_id, runs in sorted(results.items()):
        done = [r for _, r in sorted(runs.items()) if r.get("status") == "done"]
        tokens = [r["visual_tokens_per_image"] for r in done
                  if isinstance(r.get("visual_tokens_per_image"), numbers.Real)]  # fmt: skip
        scores = [float(r["aggregates"]["overall"]) for r in done if "overall" in r.get("aggregates", {})]
        if tokens and scores:
            points[exp_id] = (float(tokens[0]), scores)
    return points


def frontier_section(suite: str, results: dict[str, dict[int, dict]], folder: Path) -> list[str]:
    """Markdown lines (table + PNG written into `folder`); empty when no run recorded its token count."""
    from tbi_evalbench import efficiency_table, plot_token_frontier

    points = frontier_points(results)
    if not points:
        return []
    baseline = "A1" if "A1" in points else None
    table = efficiency_table(points, baseline=baseline)
    (folder / f"frontier-{suite}.csv").write_text(
        efficiency_table(points, baseline=baseline, fmt="csv"), encoding="utf-8"
    )
    png = plot_token_frontier(
        points,
        folder / f"{suite}-frontier.png",
        title=f"{suite}: token efficiency (Overall vs visual tokens)",
        ylabel="Overall",
        log_x=all(t > 0 for t, _ in points.values()),
    )
    missing = sorted(
        e
        for e, runs in results.items()
        if e not in points and any(r.get("status") == "done" for r in runs.values())
    )
    lines = [
        "### Token efficiency frontier (Overall vs visual tokens per image/frame)",
        "",
        "pareto = yes: no other experiment reaches a higher Overall with as few visual tokens"
        + (f"; Δ and ratios against {baseline}." if baseline else "."),
        "",
        *table.rstrip("\n").splitlines(),
        "",
    ]
    if missing:
        lines += [
            f"Not on the plot (no token count recorded, runs made before it was): {', '.join(missing)}",
            "",
        ]
    return [*lines, f"![{png.stem}]({png.name})", ""]
