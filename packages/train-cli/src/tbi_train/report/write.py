"""The suite report: results table (mean ± std over seeds), paired t-tests vs A1 with Bonferroni, synergy
contrasts, seed 000's success criteria on measured numbers, heatmap, radar, curves, latency; MD + CSV + PNG + HTML."""

from __future__ import annotations

import base64
import csv
import html
import json
import math
import shutil
import statistics
from pathlib import Path

__all__ = ["collect_results", "success_criteria", "write_report"]

_AVERAGES = ("korean", "english", "structured", "overall")


def collect_results(runs_dir: str | Path) -> dict[str, dict[str, dict[int, dict]]]:
    """{suite: {experiment: {seed: result.json}}} of every run under `runs_dir` (done, failed or skipped)."""
    root = Path(runs_dir)
    root = root / "runs" if (root / "runs").is_dir() else root
    out: dict[str, dict[str, dict[int, dict]]] = {}
    for file in sorted(root.glob("*/*/result.json")):
        data = json.loads(file.read_text(encoding="utf-8"))
        data["_dir"] = str(file.parent)
        out.setdefault(data["suite"], {}).setdefault(data["id"], {})[int(data["seed"])] = data
    return out


def _values(runs: dict[int, dict], column: str) -> dict[int, float]:
    out = {}
    for seed, r in runs.items():
        if r.get("status") != "done":
            continue
        value = r["aggregates"].get(column) if column in _AVERAGES else r["scores"].get(column)
        if value is not None:
            out[seed] = float(value)
    return out


def _mean_std(values: list[float]) -> str:
    if not values:
        return "—"
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.fmean(values):.4f} ± {std:.4f}"


def _paired(exp: dict[int, float], base: dict[int, float]) -> tuple[list[float], list[float]]:
    seeds = sorted(set(exp) & set(base))
    return [exp[s] for s in seeds], [base[s] for s in seeds]


def _ttests(results: dict[str, dict[int, dict]], baseline: str = "A1") -> list[dict]:
    from tbi_evalbench import bonferroni, paired_ttest

    if baseline not in results:
        return []
    base = _values(results[baseline], "overall")
    rows = []
    for exp_id, runs in results.items():
        if exp_id == baseline:
            continue
        a, b = _paired(_values(runs, "overall"), base)
        if len(a) >= 2:
            test = paired_ttest(a, b)
            rows.append(
                {
                    "experiment": exp_id,
                    "n": test.n,
                    "diff": test.mean_diff,
                    "t": test.statistic,
                    "p": test.p_value,
                }
            )
        else:
            rows.append(
                {
                    "experiment": exp_id,
                    "n": len(a),
                    "diff": (a[0] - b[0]) if a else math.nan,
                    "t": math.nan,
                    "p": math.nan,
                }
            )
    tested = [r for r in rows if not math.isnan(r["p"])]
    for r, adj in zip(tested, bonferroni([r["p"] for r in tested])):
        r["p_bonferroni"] = adj
    for r in rows:
        r.setdefault("p_bonferroni", math.nan)
    return rows


def _mean(runs: dict[str, dict[int, dict]], exp_id: str, column: str) -> float | None:
    values = list(_values(runs.get(exp_id, {}), column).values())
    return statistics.fmean(values) if values else None


def _synergy(results: dict[str, dict[int, dict]]) -> list[dict]:
    """E2 vs B3 + C2 − A1 and F4 vs E2 + D4 − A1 on Overall (seed 000 6.1 RQ4), per seed mean."""
    out = []
    for target, (x, y) in (("E2", ("B3", "C2")), ("F4", ("E2", "D4"))):
        parts = [_mean(results, e, "overall") for e in (target, x, y, "A1")]
        if any(p is None for p in parts):
            missing = [e for e, p in zip((target, x, y, "A1"), parts) if p is None]
            out.append({"contrast": f"{target} − ({x} + {y} − A1)", "value": None, "missing": missing})
        else:
            t, a, b, base = parts
            out.append(
                {"contrast": f"{target} − ({x} + {y} − A1)", "value": t - (a + b - base), "missing": []}
            )
    return out


def success_criteria(
    results: dict[str, dict[int, dict]], tests: list[dict], synergy: list[dict]
) -> list[dict]:
    """Seed 000 section 10, evaluated on measured numbers: met / not met / not evaluable (with the numbers)."""

    def mean_of(exp_id: str, prefix: str) -> float | None:
        """Average of an aggregate, or of the benchmarks named `prefix-*` (chart, doc on synthetic data)."""
        if prefix in _AVERAGES:
            return _mean(results, exp_id, prefix)
        runs = results.get(exp_id, {})
        cols = {
            k
            for r in runs.values()
            if r.get("status") == "done"
            for k in r["scores"]
            if k.split("-")[0] == prefix
        }
        cols |= {k for r in runs.values() if r.get("status") == "done" for k in r["scores"] if k == prefix}
        values = [v for c in cols for v in _values(runs, c).values()]
        return statistics.fmean(values) if values else None

    def check(name: str, value: float | None, target: float | None, detail: str) -> dict:
        if value is None or target is None:
            return {"criterion": name, "status": "not evaluable", "detail": detail + " (runs missing)"}
        met = value >= target
        return {
            "criterion": name,
            "status": "met" if met else "not met",
            "detail": f"{detail}: {value:.4f} vs {target:.4f}",
        }

    a0_en, a1_chart, a1_doc = mean_of("A0", "english"), mean_of("A1", "chart"), mean_of("A1", "doc")
    rows = [
        check("Korean VQA: F4 Korean Average >= 0.68", mean_of("F4", "korean"), 0.68, "F4 Korean"),
        check("English retention: F4 English >= 95% of the baseline", mean_of("F4", "english"),
              None if a0_en is None else 0.95 * a0_en, "F4 English vs 0.95 x A0 English"),
        check("Chart: F4 >= baseline + 3%", mean_of("F4", "chart"), None if a1_chart is None else a1_chart + 0.03,
              "F4 chart vs A1 + 0.03"),
        check("Document: F4 >= baseline + 3%", mean_of("F4", "doc"), None if a1_doc is None else a1_doc + 0.03,
              "F4 doc vs A1 + 0.03"),
    ]  # fmt: skip
    by_exp = {t["experiment"]: t for t in tests}
    comp = []
    for e in ("B3", "C2", "D4"):
        t = by_exp.get(e)
        if t is None or math.isnan(t.get("p_bonferroni", math.nan)):
            comp = None
            break
        comp.append(t["diff"] >= 0.01 and t["p_bonferroni"] < 0.05)
    rows.append({
        "criterion": "Significance: B3, C2, D4 each >= +1% with p < 0.05 (Bonferroni)",
        "status": "not evaluable" if comp is None else ("met" if all(comp) else "not met"),
        "detail": "needs >= 2 seeds of A1, B3, C2, D4" if comp is None else
                  "; ".join(f"{e}: {by_exp[e]['diff']:+.4f}, p_adj {by_exp[e]['p_bonferroni']:.3g}" for e in ("B3", "C2", "D4")),
    })  # fmt: skip
    syn = synergy[0]
    rows.append(check("Synergy: E2 > B3 + C2 − A1 by >= 0.5%", syn["value"], 0.005 if syn["value"] is not None else None,
                      "E2 − (B3 + C2 − A1)"))  # fmt: skip
    stds = []
    for runs in results.values():
        values = list(_values(runs, "overall").values())
        if len(values) > 1:
            stds.append(statistics.stdev(values))
    rows.append(
        {
            "criterion": "Reproducibility: std across seeds <= 0.01",
            "status": "not evaluable" if not stds else ("met" if max(stds) <= 0.01 else "not met"),
            "detail": "needs >= 2 seeds" if not stds else f"largest Overall std {max(stds):.4f}",
        }
    )
    lat = {
        e: [r["seconds_per_sample"] for r in results.get(e, {}).values() if r.get("status") == "done"]
        for e in ("F4", "A1")
    }
    if lat["F4"] and lat["A1"]:
        f4, a1 = statistics.fmean(lat["F4"]), statistics.fmean(lat["A1"])
        rows.append(
            {
                "criterion": "Efficient inference: F4 within 2x of baseline latency",
                "status": "met" if f4 <= 2 * a1 else "not met",
                "detail": f"F4 {f4:.4f} s vs A1 {a1:.4f} s per sample",
            }
        )
    else:
        rows.append({"criterion": "Efficient inference: F4 within 2x of baseline latency", "status": "not evaluable",
                     "detail": "F4 or A1 missing (runs missing)"})  # fmt: skip
    return rows


def _md_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def _fmt(x: float | None, spec: str = ".4f") -> str:
    return "—" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, spec)


def _plots(suite: str, results: dict[str, dict[int, dict]], columns: list[str], out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from tbi_evalbench import plot_ablation_heatmap, plot_radar, plot_training_curves

    written = []
    means = {e: {c: _mean(results, e, c) for c in columns} for e in results}
    means = {e: {c: v for c, v in row.items() if v is not None} for e, row in means.items()}
    means = {e: row for e, row in means.items() if row}
    if means:
        complete = [c for c in columns if all(c in row for row in means.values())]
        if complete:
            grid = {e: {c: row[c] for c in complete} for e, row in means.items()}
            baseline = "A1" if "A1" in grid else None
            written.append(plot_ablation_heatmap(grid, out / f"{suite}-heatmap.png", baseline=baseline,
                                                 title=f"{suite}: scores" + (" vs A1" if baseline else "")))  # fmt: skip
            chosen = [e for e in ("A0", "A1", "E2", "D4", "F4") if e in grid] or list(grid)[:5]
            if len(complete) >= 3:
                written.append(
                    plot_radar(
                        {e: grid[e] for e in chosen}, out / f"{suite}-radar.png", title=f"{suite}: benchmarks"
                    )
                )
    curves = {}
    for exp_id, runs in results.items():
        for seed, r in sorted(runs.items())[:1]:
            log = Path(r["_dir"]) / "log.jsonl"
            if r.get("status") == "done" and log.is_file():
                steps = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
                steps = [s for s in steps if "loss" in s]
                if steps:
                    curves[f"{exp_id} s{seed}"] = (list(range(1, len(steps) + 1)), [s["loss"] for s in steps])
    if curves:
        written.append(
            plot_training_curves(curves, out / f"{suite}-curves.png", title=f"{suite}: training loss")
        )
    latency = {e: statistics.fmean([r["seconds_per_sample"] for r in runs.values() if r.get("status") == "done"])
               for e, runs in results.items() if any(r.get("status") == "done" for r in runs.values())}  # fmt: skip
    if latency:
        fig, ax = plt.subplots(figsize=(max(4, 0.5 * len(latency) + 2), 3))
        ax.bar(list(latency), list(latency.values()))
        ax.set_ylabel("seconds / sample")
        ax.set_title(f"{suite}: inference latency")
        fig.tight_layout()
        fig.savefig(out / f"{suite}-latency.png", dpi=100)
        plt.close(fig)
        written.append(out / f"{suite}-latency.png")
    return written


def write_report(runs_dir: str | Path, out: str | Path | None = None) -> Path:
    """Write `report/` (default: inside `runs_dir`): report.md, results-<suite>.csv, PNGs, report.html; return it."""
    results_all = collect_results(runs_dir)
    out = Path(out) if out is not None else Path(runs_dir) / "report"
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    md = ["# TBI suite report", ""]
    images: list[Path] = []
    for suite, results in sorted(results_all.items()):
        benches = sorted(
            {
                b
                for runs in results.values()
                for r in runs.values()
                if r.get("status") == "done"
                for b in r["scores"]
            }
        )
        columns = benches + list(_AVERAGES)
        rows = []
        with (tmp / f"results-{suite}.csv").open("w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(["experiment", "seeds", "status", *columns])
            for exp_id, runs in results.items():
                statuses = sorted({r["status"] for r in runs.values()})
                cells = [_mean_std(list(_values(runs, c).values())) for c in columns]
                writer.writerow([exp_id, len(runs), "/".join(statuses), *cells])
                rows.append([exp_id, str(len(runs)), "/".join(statuses), *cells])
        md += [
            f"## {suite}",
            "",
            "### Results (mean ± std over seeds)",
            "",
            _md_table(["experiment", "seeds", "status", *columns], rows),
            "",
        ]
        problems = [
            (e, s, r.get("error") or r.get("reason"))
            for e, runs in results.items()
            for s, r in runs.items()
            if r["status"] != "done"
        ]
        if problems:
            md += ["### Not run", ""] + [f"- {e} seed {s}: {why}" for e, s, why in problems] + [""]
        tests = _ttests(results)
        if tests:
            md += ["### Paired t-tests vs A1 (Overall, Bonferroni over variants)", "",
                   _md_table(["experiment", "n", "Δ mean", "t", "p", "p (Bonferroni)"],
                             [[t["experiment"], str(t["n"]), _fmt(t["diff"], "+.4f"), _fmt(t["t"], ".3f"), _fmt(t["p"], ".4g"),
                               _fmt(t["p_bonferroni"], ".4g")] for t in tests]), ""]  # fmt: skip
        if suite == "tbi-mllm":
            synergy = _synergy(results)
            md += ["### Synergy contrasts (Overall)", ""] + [
                f"- {s['contrast']} = {_fmt(s['value'], '+.4f')}" + (f" (missing {', '.join(s['missing'])})" if s["missing"] else "")
                for s in synergy
            ] + ["", "### Success criteria (seed 000 section 10, measured)", ""]  # fmt: skip
            md += [f"- [{'x' if c['status'] == 'met' else ' '}] **{c['status']}**: {c['criterion']} ({c['detail']})"
                   for c in success_criteria(results, tests, synergy)] + [""]  # fmt: skip
        lat_rows = []
        for exp_id, runs in results.items():
            done = [r for r in runs.values() if r.get("status") == "done"]
            if done:
                lat_rows.append([exp_id, f"{statistics.fmean(r['seconds_per_sample'] for r in done):.4f}",
                                 f"{max(r['peak_rss_mb'] for r in done):.0f}"])  # fmt: skip
        if lat_rows:
            md += [
                "### Inference latency",
                "",
                _md_table(["experiment", "s / sample", "peak RSS MB"], lat_rows),
                "",
            ]
        pngs = _plots(suite, results, columns, tmp)
        images += pngs
        md += [f"![{p.stem}]({p.name})" for p in pngs] + [""]
        from tbi_train.report.maps import maps_section

        md += maps_section(suite, results, tmp)
        from tbi_train.report.frontier import frontier_section
        from tbi_train.report.gallery import gallery_section

        md += frontier_section(suite, results, tmp) + gallery_section(suite, results, tmp)
    from tbi_train.report.merge_search import merge_search_section

    md += merge_search_section(runs_dir, tmp)
    from tbi_train.report.efficiency import efficiency_section

    md += efficiency_section(runs_dir, tmp)
    (tmp / "report.md").write_text("\n".join(md) + "\n", encoding="utf-8")
    (tmp / "report.html").write_text(_html(md, tmp), encoding="utf-8")
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    return out


def _html(md: list[str], folder: Path) -> str:
    """One self-contained page: Markdown tables as HTML tables, images inlined as base64 PNG."""
    body, table = [], []

    def flush():
        if table:
            rows = [r.strip().strip("|").split("|") for r in table if not set(r.strip()) <= set("|-")]
            head, *rest = rows
            body.append("<table><tr>" + "".join(f"<th>{html.escape(c.strip())}</th>" for c in head) + "</tr>"
                        + "".join("<tr>" + "".join(f"<td>{html.escape(c.strip())}</td>" for c in r) + "</tr>" for r in rest)
                        + "</table>")  # fmt: skip
            table.clear()

    for line in md:
        if line.startswith("|"):
            table.append(line)
            continue
        flush()
        if line.startswith("!["):
            name = line[line.index("(") + 1 : -1]
            data = base64.b64encode((folder / name).read_bytes()).decode()
            body.append(f'<img alt="{html.escape(name)}" src="data:image/png;base64,{data}">')
        elif line.startswith("#"):
            level = len(line) - len(line.lstrip("#"))
            body.append(f"<h{level}>{html.escape(line.lstrip('#').strip())}</h{level}>")
        elif line.startswith("- "):
            body.append(f"<p>• {html.escape(line[2:])}</p>")
        elif line:
            body.append(f"<p>{html.escape(line)}</p>")
    flush()
    style = "body{font-family:sans-serif;max-width:1200px;margin:auto}table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:2px 6px;font-size:12px}img{max-width:100%}"
    return f"<!doctype html><html><head><meta charset='utf-8'><title>TBI report</title><style>{style}</style></head><body>{''.join(body)}</body></html>\n"
