"""The report's efficiency section: the `tbi profile` measurements of a suite's experiments and seed 001's three
efficiency criteria for each experiment against the vanilla baseline A0.

Profiles live in the runs folder, one JSON per experiment (`EfficiencyProfile.to_dict()`, what
`tbi profile ID --json FILE` writes and `tbi ablate SUITE --profile` records after each experiment):

    RUNS/profile/<SUITE>/<ID>.json

Seed 001's criteria, per experiment E against A0 (the seed's "(Baseline)" row: vanilla InternViT, InternVL 2.5's
projector), from the measured numbers only:

| criterion | met when | compared with |
|---|---|---|
| vision FLOPs <= 70% of vanilla | F_E(R) / F_A0(R) <= 0.70 at every common side R | A0's tower; without an A0 profile, E's own vanilla-tower rows (the same tower architecture without RoPE and windows) |
| max practical resolution >= 2x | side_E / side_A0 >= 2, both found in the same memory budget | A0; without an A0 profile, E's own vanilla-tower search |
| tokens per image <= 80% of current | M_E(R) / M_A0(R) <= 0.80 at every common side R | A0 only ("current" = A0's projector) |

A criterion is `undetermined` when the numbers it needs are missing (no A0 profile for tokens, no common side,
no budget or different budgets, a search that stopped at a bound), never assumed.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

from tbi_train.errors import TrainError
from tbi_train.eval.profile import FLOPS_TARGET, TOKENS_TARGET, Criterion, MaxResolution

__all__ = [
    "BASELINE",
    "criteria_against_baseline",
    "efficiency_section",
    "load_profiles",
    "profile_file",
    "record_profile",
]

logger = logging.getLogger(__name__)

BASELINE = "A0"
"""Seed 001's baseline row (vanilla InternViT, no RoPE, no windows, InternVL 2.5's projector)."""

_ROW_KEYS = ("resolution", "visual_tokens", "vision_flops", "projector_flops", "lm_prefill_flops",
             "peak_activation_bytes", "vision_ms", "projector_ms", "lm_prefill_ms")  # fmt: skip


def profile_file(runs_dir: str | Path, suite: str, exp_id: str) -> Path:
    """Where the profile of `suite/exp_id` lives in a runs folder: RUNS/profile/SUITE/ID.json."""
    return Path(runs_dir) / "profile" / suite / f"{exp_id}.json"


def record_profile(
    resolved, runs_dir: str | Path, resolutions: Sequence[int] = (448, 896), repeats: int = 3
) -> Path:
    """Profile a resolved experiment's model config (random-init parts, the variant the suite's rules chose,
    overrides applied) and write its JSON to `profile_file` (temp file, then rename); return the path.

    FLOPs, tokens and memory do not depend on trained weights, so one profile per experiment serves every seed.
    """
    from tbi_train.eval.profile import profile_efficiency

    result = profile_efficiency(resolved.config, resolutions, seed=resolved.seed, repeats=repeats)
    result.target = f"{resolved.suite}/{resolved.id}"
    path = profile_file(runs_dir, resolved.suite, resolved.id)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(result.to_dict(), handle, indent=2)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _check(data: object, file: Path) -> dict:
    fix = f"rewrite it with `tbi profile SUITE/ID --json {file}`"
    if not isinstance(data, dict):
        raise TrainError(f"{file}: a profile must be a JSON object (EfficiencyProfile.to_dict()); {fix}.")
    for key in ("resolutions", "candidate_rows", "baseline_rows", "memory_budget_bytes"):
        if key not in data:
            raise TrainError(f"{file}: key {key!r} is missing, it is not a `tbi profile --json` file; {fix}.")
    for part in ("candidate_rows", "baseline_rows"):
        for i, row in enumerate(data[part]):
            missing = [k for k in _ROW_KEYS if not isinstance(row.get(k), int | float)]
            if missing:
                raise TrainError(f"{file}: {part}[{i}] has no number for {missing}; {fix}.")
    return data


def load_profiles(runs_dir: str | Path) -> dict[str, dict[str, dict]]:
    """{suite: {experiment: profile dict}} of every RUNS/profile/SUITE/ID.json.

    Raises:
        TrainError: a file that is not valid JSON or lacks a key (the message names the file and the key).
    """
    out: dict[str, dict[str, dict]] = {}
    for file in sorted(Path(runs_dir).glob("profile/*/*.json")):
        try:
            data = json.loads(file.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise TrainError(
                f"{file}: not valid JSON ({exc}); rewrite it with `tbi profile ... --json`."
            ) from exc
        out.setdefault(file.parent.name, {})[file.stem] = _check(data, file)
    return out


def _max(found: dict | None) -> MaxResolution | None:
    if found is None:
        return None
    return MaxResolution(int(found["resolution"]), found["kind"], int(found["step"]))


def _ratio_criterion(
    name: str, limit: float, exp: dict, ref: dict | None, key: str, against: str
) -> Criterion:
    """`key` of the experiment's rows over the reference's at every common side; met when all <= limit."""
    target = f"<= {limit:.0%}"
    if ref is None:
        return Criterion(name, target, "undetermined", "n/a", f"no {BASELINE} profile to compare with.")
    ref_rows = {r["resolution"]: r for r in ref}
    ratios = {r["resolution"]: r[key] / ref_rows[r["resolution"]][key]
              for r in exp if r["resolution"] in ref_rows and ref_rows[r["resolution"]][key] > 0}  # fmt: skip
    if not ratios:
        return Criterion(name, target, "undetermined", "n/a", f"no profiled side in common with {against}.")
    value = ", ".join(f"{side}px {v:.1%}" for side, v in sorted(ratios.items()))
    failing = sorted(s for s, v in ratios.items() if v > limit)
    status = "not met" if failing else "met"
    return Criterion(name, target, status, value, f"vs {against}; over the limit at {failing or 'no side'}")


def _resolution_criterion(exp: dict, ref_max: dict | None, ref_budget, against: str) -> Criterion:
    from tbi_train.eval.profile import _resolution_criterion as rule

    name = "max practical resolution vs vanilla"
    budget = exp["memory_budget_bytes"]
    if budget is not None and ref_budget is not None and budget != ref_budget:
        return Criterion(name, ">= 2x (side)", "undetermined", "n/a",
                         f"budgets differ ({budget} vs {ref_budget} bytes for {against}); profile both with "
                         "the same --memory-budget.")  # fmt: skip
    found = rule(_max(exp.get("candidate_max")), _max(ref_max), budget)
    return Criterion(found.name, found.target, found.status, found.value, f"vs {against}; {found.detail}")


def criteria_against_baseline(exp: dict, ref: dict | None) -> list[Criterion]:
    """Seed 001's three criteria for one experiment's profile against A0's (`ref`, None if not profiled)."""
    if ref is not None:
        against = BASELINE
        flops_ref, max_ref, budget_ref = (
            ref["candidate_rows"],
            ref.get("candidate_max"),
            ref["memory_budget_bytes"],
        )
    else:
        against = f"its own vanilla tower ({BASELINE} not profiled)"
        flops_ref, max_ref, budget_ref = (
            exp["baseline_rows"],
            exp.get("baseline_max"),
            exp["memory_budget_bytes"],
        )
    rows = exp["candidate_rows"]
    return [
        _ratio_criterion("vision FLOPs vs vanilla", FLOPS_TARGET, rows, flops_ref, "vision_flops", against),
        _resolution_criterion(exp, max_ref, budget_ref, against),
        _ratio_criterion(
            "tokens per image vs current",
            TOKENS_TARGET,
            rows,
            None if ref is None else ref["candidate_rows"],
            "visual_tokens",
            BASELINE,
        ),
    ]


def _cells(row: dict) -> list[str]:
    return [
        str(row["resolution"]),
        str(row["visual_tokens"]),
        f"{row['vision_flops'] / 1e9:.4g}",
        f"{row['projector_flops'] / 1e9:.4g}",
        f"{row['lm_prefill_flops'] / 1e9:.4g}",
        f"{row['peak_activation_bytes'] / 2**20:.2f}",
        f"{row['vision_ms']:.2f}",
        f"{row['projector_ms']:.2f}",
        f"{row['lm_prefill_ms']:.2f}",
    ]


_HEADER = ["experiment", "side px", "visual tokens", "vision GFLOPs", "projector GFLOPs", "LM prefill GFLOPs",
           "peak MiB", "vision ms", "projector ms", "LM prefill ms"]  # fmt: skip


def _plot(suite: str, profiles: dict[str, dict], folder: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    panels = (
        ("vision GFLOPs", lambda r: r["vision_flops"] / 1e9),
        ("total GFLOPs (tower + projector + LM prefill)", lambda r: (r["vision_flops"] + r["projector_flops"]
                                                                     + r["lm_prefill_flops"]) / 1e9),
        ("latency ms (sum of the stages)", lambda r: r["vision_ms"] + r["projector_ms"] + r["lm_prefill_ms"]),
    )  # fmt: skip
    for ax, (label, value) in zip(axes, panels):
        for exp_id, data in sorted(profiles.items()):
            rows = sorted(data["candidate_rows"], key=lambda r: r["resolution"])
            ax.plot([r["resolution"] for r in rows], [value(r) for r in rows], marker="o", label=exp_id)
        ax.set_xlabel("image side (px)")
        ax.set_title(label, fontsize=9)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
    axes[0].legend(fontsize=8)
    fig.suptitle(f"{suite}: efficiency vs resolution")
    fig.tight_layout()
    path = folder / f"{suite}-efficiency.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _write_csv(path: Path, profiles: dict[str, dict]) -> None:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["experiment", "pipeline", *_ROW_KEYS])
        for exp_id, data in sorted(profiles.items()):
            for pipeline in ("candidate", "baseline"):
                for row in data[f"{pipeline}_rows"]:
                    writer.writerow([exp_id, pipeline, *(row[k] for k in _ROW_KEYS)])


def efficiency_section(runs_dir: str | Path, folder: Path) -> list[str]:
    """Markdown lines per suite with profiles under RUNS/profile/ (tables, `efficiency-SUITE.csv` and
    `SUITE-efficiency.png` written into `folder`); empty when nothing was profiled."""
    md: list[str] = []
    for suite, profiles in sorted(load_profiles(runs_dir).items()):
        rows = [[exp_id, *_cells(r)] for exp_id, data in sorted(profiles.items())
                for r in sorted(data["candidate_rows"], key=lambda r: r["resolution"])]  # fmt: skip
        ref = profiles.get(BASELINE)
        verdicts = []
        for exp_id, data in sorted(profiles.items()):
            if exp_id == BASELINE:
                continue
            for c in criteria_against_baseline(data, ref):
                verdicts.append([exp_id, c.name, c.target, c.status, c.value, c.detail])
        _write_csv(folder / f"efficiency-{suite}.csv", profiles)
        png = _plot(suite, profiles, folder)
        setup = sorted(
            {f"{d.get('device', '?')}, {d.get('text_length', '?')} text tokens" for d in profiles.values()}
        )
        md += [
            f"## Efficiency profile: {suite} (tbi profile)",
            "",
            f"Per image ({' / '.join(setup)} after the visual ones); FLOPs counted by torch's FlopCounterMode, peak memory = the allocator's high-water mark "
            "of the whole pass, latency = median per stage (ratios, not absolute times, on a shared CPU). "
            "Every profile's numbers (and its own vanilla-tower rows) are in efficiency-" + suite + ".csv.",
            "",
            "| " + " | ".join(_HEADER) + " |",
            "|" + "---|" * len(_HEADER),
            *("| " + " | ".join(r) + " |" for r in rows),
            "",
        ]
        if verdicts:
            md += [
                f"### Seed 001 efficiency criteria vs {BASELINE} (measured)",
                "",
                "| experiment | criterion | target | status | measured | detail |",
                "|---|---|---|---|---|---|",
                *("| " + " | ".join(v) + " |" for v in verdicts),
                "",
            ]
        md += [f"![{png.stem}]({png.name})", ""]
    return md
