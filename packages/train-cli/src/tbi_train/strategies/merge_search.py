"""Merge-weight search (seed 000 risk R3): grid over the DARE+TIES weights and DARE density of an en + ko merge,
each candidate merged through tbi-merging and scored on a held-out bilingual set through tbi-evalbench.

`tbi merge --search lambda_en=0.3:0.7:0.1 [--search density=0.1,0.3] --eval VAL --base B --model en=EN
--model ko=KO --out OUT [tbi-merging options]`.

| search key | meaning | default when not searched |
|---|---|---|
| `lambda_en`, `lambda_ko` | weight of that model's task vector | the other's is 1 - the searched one; both unsearched: the `--model` weights |
| `density` | DARE keep probability, drop rate p = 1 - density (DARE methods only) | 1 - `--dare` |

Values are `START:STOP:STEP` (inclusive) or a comma list. Candidates run one at a time: merged into a
temporary folder, scored, deleted, so at most one merged model exists at any moment; the best (highest
`overall`, first on ties) is merged again at the end into `OUT/best/` (DARE is seeded, so it is the same
model). `OUT/` also holds `merge_search.json` / `.csv` (one row per candidate), `merge_search.png`
(score vs lambda_en, one line per density, one panel per language) and `best.yaml` (the best merge's
options as a `tbi merge --config` file).

Scores: a LLaVA-style val file (`--eval VAL.json`) gives token F1 per `task-lang` and the Korean / English /
Overall averages (`run.evaluate.evaluate_model`); `--eval NAME=PATH` benchmark files give each benchmark's
official score and seed 000's averages (`run.evaluate.evaluate_benchmarks`). All scores lie in [0, 1].
"""

from __future__ import annotations

import csv
import itertools
import json
import logging
import math
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from tbi_train.errors import TrainError

__all__ = ["MergeSearch", "merge_search", "parse_grid", "search_from_argv"]

logger = logging.getLogger(__name__)

SEARCH_KEYS = ("lambda_en", "lambda_ko", "density")
_LANGUAGES = ("korean", "english", "overall")


def parse_grid(text: str) -> tuple[str, tuple[float, ...]]:
    """`KEY=START:STOP:STEP` (inclusive) or `KEY=A,B,C` -> (key, values)."""
    key, sep, spec = text.partition("=")
    key = key.strip()
    if not sep or key not in SEARCH_KEYS:
        raise TrainError(
            f"--search {text!r}: write KEY=START:STOP:STEP or KEY=A,B with KEY one of {', '.join(SEARCH_KEYS)}."
        )
    try:
        if ":" in spec:
            start, stop, step = (float(x) for x in spec.split(":"))
            if step <= 0 or stop < start:
                raise ValueError
            count = math.floor((stop - start) / step + 1e-9) + 1
            values = tuple(round(start + i * step, 10) for i in range(count))
        else:
            values = tuple(float(x) for x in spec.split(",") if x.strip())
    except ValueError:
        raise TrainError(
            f"--search {text!r}: {spec!r} is not START:STOP:STEP (STOP >= START, STEP > 0) or a comma list."
        ) from None
    if not values or any(not math.isfinite(v) for v in values):
        raise TrainError(f"--search {text!r}: no usable values.")
    if key == "density" and any(not 0 < v <= 1 for v in values):
        raise TrainError(f"--search {text!r}: a DARE density must lie in (0, 1].")
    return key, values


@dataclass(frozen=True)
class MergeSearch:
    """One search: the models, the grid, the fixed merge options and how candidates are scored."""

    base: str
    """The base VLM folder (theta_0)."""
    models: dict[str, tuple[str, float]]
    """`en` and `ko`: (VLM folder, weight used when its lambda is not searched)."""
    grid: dict[str, tuple[float, ...]]
    """Searched keys (SEARCH_KEYS) -> values."""
    out: str
    """Output folder (table, plot, best.yaml, best/)."""
    evals: dict[str, str] = field(default_factory=dict)
    """`{"val": PATH}` for a LLaVA val file, or tbi-evalbench loader name -> benchmark file."""
    method: str = "dare_ties"
    """tbi-merging method."""
    drop_rate: float = 0.9
    """DARE drop rate when density is not searched."""
    sign: str = "mass"
    """TIES sign election."""
    rescale: bool = True
    """DARE rescale by 1 / density."""
    normalize: bool = True
    """Divide by the summed weights of the contributing models."""
    seed: int = 0
    """DARE seed (the same for every candidate, so candidates differ only in the searched values)."""
    limit: int = 64
    """Evaluation samples (per benchmark)."""
    max_new_tokens: int = 512
    """Answer length cap."""
    batch_size: int = 8
    """Generation batch."""


def candidates(search: MergeSearch) -> list[dict[str, float]]:
    """Every grid point as {lambda_en, lambda_ko, density}, in row-major order of the searched keys."""
    keys = [k for k in SEARCH_KEYS if k in search.grid]
    rows = []
    for values in itertools.product(*(search.grid[k] for k in keys)):
        point = dict(zip(keys, values))
        if "lambda_en" in point and "lambda_ko" not in point:
            point["lambda_ko"] = round(1.0 - point["lambda_en"], 10)
        if "lambda_ko" in point and "lambda_en" not in point:
            point["lambda_en"] = round(1.0 - point["lambda_ko"], 10)
        point.setdefault("lambda_en", search.models["en"][1])
        point.setdefault("lambda_ko", search.models["ko"][1])
        point.setdefault("density", round(1.0 - search.drop_rate, 10))
        rows.append({k: point[k] for k in SEARCH_KEYS})
    return rows


def _check(search: MergeSearch) -> None:
    if set(search.models) != {"en", "ko"}:
        raise TrainError(
            f"tbi merge --search merges two models named en and ko (got {sorted(search.models)}); "
            "write --model en=EN_DIR --model ko=KO_DIR."
        )
    if not search.grid:
        raise TrainError("tbi merge --search needs at least one of lambda_en, lambda_ko, density.")
    if "density" in search.grid and not search.method.startswith("dare"):
        raise TrainError(
            f"--search density needs a DARE method (dare_ties, dare_linear), not {search.method}."
        )
    if not search.evals:
        raise TrainError(
            "tbi merge --search needs --eval VAL.json (LLaVA val file) or --eval NAME=BENCHMARK_FILE."
        )
    for path in [search.base, *(p for p, _ in search.models.values()), *search.evals.values()]:
        if not Path(path).exists():
            raise TrainError(f"{path} does not exist; give the folders / files of the search.")


def _merge(search: MergeSearch, point: dict[str, float], out: Path) -> Path:
    from tbi_train.strategies.merge import merge_vlms

    return merge_vlms(
        search.base, search.models["en"][0], search.models["ko"][0], out,
        method=search.method, drop_rate=round(1.0 - point["density"], 10), rescale=search.rescale,
        sign=search.sign, lambda_en=point["lambda_en"], lambda_ko=point["lambda_ko"],
        normalize=search.normalize, seed=search.seed,
    )  # fmt: skip


def _score(search: MergeSearch, model: Path, work: Path) -> dict[str, float]:
    """{benchmark or task-lang: score, korean/english/overall: average} of one merged model."""
    from tbi_train.run.evaluate import benchmark_aggregates, evaluate_benchmarks, evaluate_model

    if "val" in search.evals:
        result = evaluate_model(
            model, search.evals["val"], search.limit, search.max_new_tokens, search.batch_size
        )
        return {**result["scores"], **result["aggregates"]}
    target = evaluate_benchmarks(model, search.evals, work / "eval", search.limit, search.max_new_tokens,
                                 search.batch_size)  # fmt: skip
    raw = json.loads(target.read_text())
    named, averages = benchmark_aggregates(raw)
    return {**named, **{k.lower(): v for k, v in averages.items()}}


def merge_search(search: MergeSearch, on_row=None) -> Path:
    """Run the grid (module docstring); returns `OUT/merge_search.json`. `on_row(row)` sees each scored row."""
    _check(search)
    out = Path(search.out)
    out.mkdir(parents=True, exist_ok=True)
    work = out / ".candidate-work"
    rows: list[dict] = []
    try:
        for i, point in enumerate(candidates(search)):
            shutil.rmtree(work, ignore_errors=True)
            work.mkdir()
            model = _merge(search, point, work / "model")
            scores = _score(search, model, work)
            shutil.rmtree(work)  # one merged model at a time
            row = {"candidate": i, **point, **scores}
            rows.append(row)
            logger.info("merge search %d: %s", i, row)
            if on_row is not None:
                on_row(row)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    best = max(rows, key=lambda r: (r.get("overall", float("-inf")), -r["candidate"]))
    _merge(search, best, out / "best")
    result = {
        "method": search.method, "grid": {k: list(v) for k, v in search.grid.items()}, "eval": search.evals,
        "rows": rows, "best": best, "best_model": str(out / "best"),
    }  # fmt: skip
    _write(out / "merge_search.json", json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    _write_csv(out / "merge_search.csv", rows)
    _write(out / "best.yaml", _best_yaml(search, best, len(rows)))
    plot_search(rows, out / "merge_search.png")
    return out / "merge_search.json"


def _best_yaml(search: MergeSearch, best: dict, n: int) -> str:
    """The best candidate as tbi-merging options (MergeConfig keys) for the LMs the VLMs hold."""
    import yaml

    data = {
        "base": str(search.base), "method": search.method, "drop_rate": round(1.0 - best["density"], 10),
        "sign": search.sign, "rescale": search.rescale, "normalize": search.normalize, "seed": search.seed,
        "models": [{"name": n, "path": str(search.models[n][0]), "weight": best[f"lambda_{n}"]} for n in ("en", "ko")],
    }  # fmt: skip
    head = f"# best of {n} candidates: overall {best.get('overall', float('nan')):.4f}\n"
    return head + yaml.safe_dump(data, sort_keys=False, allow_unicode=True)


def _write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


def _write_csv(path: Path, rows: list[dict]) -> None:
    columns = list(dict.fromkeys(k for r in rows for k in r))
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, columns)
        writer.writeheader()
        writer.writerows(rows)
    tmp.replace(path)


def plot_search(rows: list[dict], path: Path) -> Path:
    """Score vs lambda_en, one line per density, one panel per language (Korean, English, Overall)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [lang for lang in _LANGUAGES if any(lang in r for r in rows)]
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3.2), squeeze=False)
    for ax, lang in zip(axes[0], panels):
        for density in sorted({r["density"] for r in rows}):
            line = sorted((r["lambda_en"], r[lang]) for r in rows if r["density"] == density and lang in r)
            ax.plot([x for x, _ in line], [y for _, y in line], marker="o", label=f"density {density:g}")
        ax.set_title(lang)
        ax.set_xlabel("lambda_en (lambda_ko = 1 - lambda_en unless searched)")
        ax.set_ylabel("score")
        ax.set_ylim(0, 1)
        ax.legend(fontsize=7)
    fig.tight_layout()
    tmp = path.with_name(path.stem + ".tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    tmp.replace(path)
    return path


_OWN = {"--search": "search", "--eval": "eval", "--eval-limit": "limit", "--max-new-tokens": "max_new_tokens",
        "--batch-size": "batch_size"}  # fmt: skip
_FORWARDED = ("base", "model", "out", "method", "dare", "ties_sign", "rescale", "normalize", "seed", "no_progress",
              "verbose", "overwrite")  # fmt: skip


def search_from_argv(argv: list[str]) -> MergeSearch:
    """`tbi merge --search ...` arguments -> MergeSearch: the search's own options (--search, --eval,
    --eval-limit, --max-new-tokens, --batch-size) and tbi-merging's (parsed by its own parser)."""
    from tbi_merging.cli import build_parser
    from tbi_merging.config import parse_model_spec

    own: dict[str, list[str]] = {v: [] for v in _OWN.values()}
    rest: list[str] = []
    args = iter(argv)
    for arg in args:
        name, eq, value = arg.partition("=")
        if name in _OWN:
            own[_OWN[name]].append(value if eq else next(args, ""))
        else:
            rest.append(arg)
    try:
        parsed = build_parser("tbi merge --search").parse_args(rest)
    except SystemExit:
        raise TrainError(
            f"tbi merge --search: cannot parse {' '.join(rest)!r}; see tbi merge --help."
        ) from None
    extra = [k for k, v in vars(parsed).items() if v not in (None, False) and k not in _FORWARDED]
    if extra:
        raise TrainError(
            f"tbi merge --search does not take --{extra[0].replace('_', '-')}; it searches plain en + ko merges "
            f"with --base, --model, --out, --method, --dare, --ties-sign, --[no-]rescale, --[no-]normalize, --seed."
        )
    if not parsed.base or not parsed.out or not parsed.model:
        raise TrainError(
            "tbi merge --search needs --base BASE_VLM, --model en=EN_VLM, --model ko=KO_VLM, --out OUT."
        )
    models = {}
    for text in parsed.model:
        spec = parse_model_spec(text)
        models[spec.name] = (str(spec.path), spec.weight)
    grid = dict(parse_grid(g) for g in own["search"])
    evals = {}
    for text in own["eval"]:
        name, eq, path = text.partition("=")
        evals.update({name: path} if eq else {"val": text})
    if "val" in evals and len(evals) > 1:
        raise TrainError("--eval: give one LLaVA val file, or NAME=PATH benchmark files, not both.")
    options = {}
    for key, cast in (("limit", int), ("max_new_tokens", int), ("batch_size", int)):
        if own[key]:
            try:
                options[key] = cast(own[key][-1])
            except ValueError:
                raise TrainError(f"--{key.replace('_', '-')} {own[key][-1]!r} is not an integer.") from None
    fixed = {"method": parsed.method, "drop_rate": parsed.dare, "sign": parsed.ties_sign,
             "rescale": parsed.rescale, "normalize": parsed.normalize, "seed": parsed.seed}  # fmt: skip
    return MergeSearch(
        base=parsed.base, models=models, grid=grid, out=parsed.out, evals=evals,
        **{k: v for k, v in fixed.items() if v is not None}, **options,
    )  # fmt: skip
