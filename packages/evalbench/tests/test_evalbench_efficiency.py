"""Token-efficiency frontier: the Pareto sweep against the definition, the table, the PNG."""

import math
import random

import numpy as np
import pytest

from tbi_evalbench import EvalbenchError, efficiency_table, pareto_frontier, plot_token_frontier


def _naive_frontier(points):
    """Straight from the definition: keep every run that no other run dominates."""
    stats = {
        r: (t, float(np.mean(np.atleast_1d(np.asarray(s, dtype=np.float64))))) for r, (t, s) in points.items()
    }
    keep = []
    for r, (t, s) in stats.items():
        dominated = any(
            t2 <= t and s2 >= s and (t2 < t or s2 > s) for r2, (t2, s2) in stats.items() if r2 != r
        )
        if not dominated:
            keep.append(r)
    return set(keep)


@pytest.mark.parametrize("seed", range(40))
def test_frontier_matches_definition_on_random_runs(seed):
    rng = random.Random(seed)
    n = rng.randint(1, 13)
    # few distinct token counts and scores on a coarse grid: ties in both coordinates are common
    points = {
        f"r{i}": (
            rng.choice([1, 2, 4, 16, 64]),
            [round(rng.random(), 1) for _ in range(rng.randint(1, 3))]
            if rng.random() < 0.5
            else round(rng.random(), 1),
        )
        for i in range(n)
    }
    front = pareto_frontier(points)
    assert set(front) == _naive_frontier(points)
    tokens = [points[r][0] for r in front]
    assert tokens == sorted(tokens)


def test_frontier_by_hand():
    points = {
        "F3 foveated": (1, [0.52, 0.54, 0.53]),  # mean 0.53
        "A6 coarse-only": (1, 0.47),  # same tokens, lower: dominated
        "B1 16-token": (16, [0.55, 0.56]),  # more tokens, better: on the frontier
        "B1-64": (64, 0.55),  # more tokens, worse than B1: dominated
        "twin": (16, 0.555),  # identical point to B1's mean: neither dominates the other
    }
    assert pareto_frontier(points) == ["F3 foveated", "B1 16-token", "twin"]


def test_efficiency_table_markdown_and_csv():
    points = {"F3": (1, [0.52, 0.54]), "B1": (16, [0.55, 0.57]), "A6": (1, 0.47)}
    md = efficiency_table(points, baseline="B1")
    lines = md.splitlines()
    assert lines[0] == "| run | tokens/frame | score | pareto | Δ score | token ratio | score retained |"
    assert lines[2] == "| F3 | 1 | 0.5300 ± 0.0141 | yes | -0.0300 | 0.0625× | 0.9464 |"
    assert lines[3] == "| A6 | 1 | 0.4700 ± 0.0000 |  | -0.0900 | 0.0625× | 0.8393 |"
    assert lines[4] == "| B1 (baseline) | 16 | 0.5600 ± 0.0141 | yes | +0.0000 | 1× | 1.0000 |"
    assert math.isclose(0.53 / 0.56, 0.9464, abs_tol=5e-5)
    csv_text = efficiency_table(points, fmt="csv")
    assert csv_text.splitlines() == [
        "run,tokens/frame,score,pareto",
        "F3,1,0.5300 ± 0.0141,yes",
        "A6,1,0.4700 ± 0.0000,",
        "B1,16,0.5600 ± 0.0141,yes",
    ]


@pytest.mark.parametrize(
    ("points", "message"),
    [
        ({}, "no runs given"),
        ({"a": (1,)}, "expected \\(tokens_per_frame, score\\)"),
        ({"a": (-1, 0.5)}, "tokens per frame must be a finite number >= 0"),
        ({"a": (float("nan"), 0.5)}, "tokens per frame must be a finite number"),
        ({"a": (1, [0.5, float("nan")])}, "run 'a'.*NaN"),
        ({"a": (1, "high")}, "run 'a': scores 'high'"),
    ],
)
def test_bad_points(points, message):
    with pytest.raises(EvalbenchError, match=message):
        pareto_frontier(points)


def test_efficiency_table_bad_options():
    with pytest.raises(EvalbenchError, match="baseline 'Z'"):
        efficiency_table({"a": (1, 0.5)}, baseline="Z")
    with pytest.raises(EvalbenchError, match="unknown format"):
        efficiency_table({"a": (1, 0.5)}, fmt="latex")


def test_plot_token_frontier_png(tmp_path):
    import matplotlib.image as mpimg

    points = {
        "F3/coarse_fine": (1, [0.52, 0.54, 0.53]),
        "F3/coarse_only": (1, [0.47, 0.48, 0.46]),
        "F3/autoregressive": (2, [0.545, 0.55, 0.54]),
        "B1": (16, [0.55, 0.56, 0.57]),
    }
    series = {r: r.split("/")[-1] if "/" in r else "16-token baseline" for r in points}
    path = plot_token_frontier(points, tmp_path / "frontier.png", series=series)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    img = mpimg.imread(path)
    assert img.shape[0] > 200 and img.shape[1] > 300 and float(img[..., :3].std()) > 0.01
    linear = plot_token_frontier({"zero": (0, 0.1), "one": (1, 0.2)}, tmp_path / "lin.png", log_x=False)
    assert linear.is_file()
    with pytest.raises(EvalbenchError, match="log_x needs every run"):
        plot_token_frontier({"zero": (0, 0.1)}, tmp_path / "bad.png")
    with pytest.raises(EvalbenchError, match=r"series names runs that have no point: \['ghost'\]"):
        plot_token_frontier(points, tmp_path / "bad.png", series={"ghost": "x"})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["frontier.png", "lin.png"]
