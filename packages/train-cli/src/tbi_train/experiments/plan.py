"""Printable views of the registry: `tbi experiments list/show` and `tbi plan SUITE` (rich Tables, text)."""

from __future__ import annotations

import json
from collections.abc import Sequence

from rich.table import Table

from tbi_train.config import to_dict
from tbi_train.experiments.registry import Suite, find_experiment, get_suite, list_suites
from tbi_train.experiments.resolve import ResolvedExperiment, resolve_in_suite

__all__ = ["list_experiments", "plan_suite", "show_experiment", "step_cost"]


def _mark(flag: bool) -> str:
    return "✓" if flag else "✗"


def list_experiments(suite: str | None = None) -> Table:
    """Every experiment of `suite` (or of all suites) as the seed's ablation table."""
    names = [suite] if suite else list_suites()
    table = Table("suite", "id", "2D-RoPE", "Window", "Multi-Scale", "PyramidDrop", "projector", "decoder", "tests",
                  title="Experiments" + (f" of {suite}" if suite else ""))  # fmt: skip
    for name in names:
        for exp in get_suite(name).experiments:
            flags = exp.vision.flags()
            decoder = exp.decoder.label if exp.decoder.kind != "none" or not exp.phases else "—"
            if exp.rank_ratio:
                decoder = "LoRA ranks " + ":".join(f"{r:g}" for r in exp.rank_ratio)
            table.add_row(name, exp.id, *(_mark(v) for v in flags.values()), exp.projector.name, decoder,
                          exp.tests + (f" (= {exp.same_as})" if exp.same_as else ""))  # fmt: skip
    return table


def _all_resolved(preset: str | None, seed: int | None) -> list[ResolvedExperiment]:
    out = []
    for name in list_suites():
        suite = get_suite(name)
        for exp in suite.experiments:
            if not exp.same_as:
                out.append(resolve_in_suite(suite, exp, preset, seed))
    return out


def show_experiment(ref: str, preset: str | None = None, seed: int | None = None) -> str:
    """The fully resolved config of `ref`, its steps with keys, and which experiments share each step."""
    suite, exp = find_experiment(ref)
    resolved = resolve_in_suite(suite, exp, preset, seed)
    others = _all_resolved(preset, seed)
    lines = [
        f"# {resolved.suite}/{resolved.id} (preset {resolved.preset}, seed {resolved.seed}): {exp.tests}",
        "",
    ]
    if resolved.pending:
        lines += ["Not runnable yet, the core has no config field for: " + ", ".join(resolved.pending), ""]
    lines += [f"note: {n}" for n in resolved.notes] + ([""] if resolved.notes else [])
    lines += ["## Steps", ""]
    for step in resolved.steps:
        sharing = sorted(
            f"{o.suite}/{o.id}" for o in others
            if (o.suite, o.id) != (resolved.suite, resolved.id) and any(s.key == step.key for s in o.steps)
        )  # fmt: skip
        shared = f"  shared with {', '.join(sharing)}" if sharing else ""
        lines.append(f"- {step.key}  {step.describe()}{shared}")
    lines += [
        "",
        "## Resolved config",
        "",
        json.dumps(to_dict(resolved.config), indent=2, ensure_ascii=False),
    ]
    return "\n".join(lines)


def step_cost(suite: Suite, exp_id: str, step_name: str) -> float:
    """GPU-days of a step from the seed's per-phase times; keys "A/D:phase" apply to rows starting A or D."""
    for key, days in suite.phase_gpu_days:
        if ":" in key:
            families, name = key.split(":", 1)
            if name == step_name and exp_id[0] in families.split("/"):
                return days
    return dict((k, v) for k, v in suite.phase_gpu_days if ":" not in k).get(step_name, 0.0)


def plan_suite(
    suite_name: str,
    preset: str | None = None,
    seeds: Sequence[int] | None = None,
    overrides: Sequence[str] = (),
) -> Table:
    """Runs in order, the steps each computes or reuses, and GPU-days with and without reuse (seed's times)."""
    suite = get_suite(suite_name)
    seeds = list(seeds) if seeds else list(suite.seeds)
    table = Table(
        "run", "computes", "reuses", "GPU-days", "status", title=f"Plan of {suite.name} ({suite.seed_file})"
    )
    owner: dict[str, str] = {}
    total = 0.0
    for seed in seeds:
        for exp in suite.ordered():
            name = f"{exp.id}-seed{seed}"
            if exp.same_as:
                table.add_row(name, "", f"= {exp.same_as}", "0", "alias")
                continue
            resolved = resolve_in_suite(suite, exp, preset, seed, tuple(overrides))
            new, old, cost = [], [], 0.0
            for step in resolved.steps:
                if step.key in owner:
                    old.append(f"{step.name} ← {owner[step.key]}")
                else:
                    owner[step.key] = exp.id
                    new.append(step.name)
                    cost += step_cost(suite, exp.id, step.name)
            total += cost
            status = (
                "needs core: " + ", ".join(p.split("=")[0] for p in resolved.pending)
                if resolved.pending
                else "ready"
            )
            table.add_row(name, ", ".join(new), ", ".join(old), f"{cost:.1f}", status)
    without = sum(days for _, days in suite.gpu_days) * len(seeds)
    table.caption = (
        f"GPU-days: {total:.1f} with checkpoint reuse, {without:.1f} in the seed's table (no reuse)"
    )
    return table
