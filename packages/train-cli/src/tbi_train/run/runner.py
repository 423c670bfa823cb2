"""Run one experiment, or a whole suite in its critical-path order, reusing shared steps and recording failures.

out/
  store/<key>/                    shared steps (see `StepStore`)
  data/                           synthetic data, tokenizer, mix files
  runs/<SUITE>/<ID>-seed<S>/      result.json, predictions.jsonl, config.json, log.jsonl (curves)
"""

from __future__ import annotations

import json
import logging
import shutil
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path

from tbi_train.config import save_config
from tbi_train.experiments import (
    BestOfRule,
    ExperimentError,
    ResolvedExperiment,
    SkipRule,
    find_experiment,
    get_suite,
    resolve_in_suite,
)
from tbi_train.run.data import prepare_data
from tbi_train.run.evaluate import benchmark_aggregates, evaluate_benchmarks, evaluate_model
from tbi_train.run.store import StepStore
from tbi_train.run.val_loss import validation_loss

__all__ = ["ablate", "run_experiment", "run_resolved"]

logger = logging.getLogger(__name__)

Event = Callable[[str, dict], None]


def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    tmp.replace(path)


def run_resolved(
    resolved: ResolvedExperiment,
    out: str | Path,
    on_event: Event | None = None,
    benchmarks: dict[str, str | Path] | None = None,
    limit: int | None = None,
) -> Path:
    """Compute (or reuse) every step of `resolved`, evaluate its final model, write result.json; return it.

    The final model is scored on the validation split (`task-language` benchmarks); with `benchmarks`
    (tbi-evalbench loader name -> file), the run is scored on those instead (`evaluate_benchmarks`, first
    `limit` questions each) and the validation scores are kept as `val_scores`.

    Raises:
        ExperimentError: the experiment needs config fields the core does not have yet (`resolved.pending`).
    """
    on_event = on_event or (lambda kind, info: None)
    out = Path(out)
    run_dir = out / "runs" / resolved.suite / f"{resolved.id}-seed{resolved.seed}"
    result_file = run_dir / "result.json"
    if result_file.is_file() and json.loads(result_file.read_text()).get("status") == "done":
        logger.info("%s seed %d already done: %s", resolved.id, resolved.seed, result_file)
        return result_file
    if resolved.pending:
        raise ExperimentError(
            f"{resolved.suite}/{resolved.id} needs config fields the core does not have yet: "
            f"{', '.join(resolved.pending)}; it runs once tbi_train.config supports them."
        )
    run_dir.mkdir(parents=True, exist_ok=True)
    save_config(resolved.config, run_dir / "config.json")
    data = prepare_data(resolved.config, out / "data")
    store = StepStore(out / "store", data)
    by_key = {s.key: s for s in resolved.steps}
    records = []
    for step in resolved.steps:
        on_event("step", {"id": resolved.id, "step": step.name, "key": step.key})
        reused, seconds = store.ensure(step, f"{resolved.id}-seed{resolved.seed}", by_key, resolved.seed)
        records.append(
            {"name": step.name, "kind": step.kind, "key": step.key, "reused": reused, "seconds": seconds}
        )
        logger.info("%s %s %s (%s)", resolved.id, "reused" if reused else "computed", step.name, step.key)
    final = resolved.final
    log = store.root / final.key / "log.jsonl"
    if log.is_file():
        shutil.copy2(log, run_dir / "log.jsonl")
    cfg = resolved.config
    evaluation = evaluate_model(store.model_dir(final), data.val, cfg.eval.limit, cfg.eval.max_new_tokens,
                                cfg.eval.batch_size, cfg.data.image_root)  # fmt: skip
    predictions = _with_questions(evaluation.pop("predictions"), data.val, cfg.data.image_root)
    with (run_dir / "predictions.jsonl").open("w", encoding="utf-8") as f:
        for row in predictions:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    # Seed 003's primary metric, measured with the loss the last phase trained on.
    loss_on = cfg.phases[-1].loss_on if cfg.phases else "answers"
    evaluation.update(validation_loss(store.model_dir(final), data.val, cfg.eval.limit, cfg.eval.batch_size,
                                      cfg.max_length, loss_on, cfg.data.image_root))  # fmt: skip
    if benchmarks:
        scored = evaluate_benchmarks(store.model_dir(final), benchmarks, run_dir / "eval", limit=limit,
                                     max_new_tokens=cfg.eval.max_new_tokens, batch_size=cfg.eval.batch_size)  # fmt: skip
        per_benchmark = json.loads(scored.read_text())
        evaluation["val_scores"], evaluation["val_aggregates"] = (
            evaluation["scores"],
            evaluation["aggregates"],
        )
        evaluation["scores"], evaluation["aggregates"] = benchmark_aggregates(per_benchmark)
        evaluation["latency"] = {k: {m: v[m] for m in ("seconds_per_sample", "samples_per_second")}
                                 for k, v in per_benchmark.items()}  # fmt: skip
    result = {
        "status": "done", "suite": resolved.suite, "id": resolved.id, "seed": resolved.seed,
        "preset": resolved.preset, "steps": records, "final_key": final.key, "notes": list(resolved.notes),
        **evaluation,
    }  # fmt: skip
    _write_json(result_file, result)
    return result_file


def _records(path: Path) -> list:
    """The records of a LLaVA .json (a list) or .jsonl file (the formats `load_conversations` reads); lines it
    skips as bad data are skipped here too."""
    text = path.read_text(encoding="utf-8")
    if path.suffix != ".jsonl":
        data = json.loads(text)
        return data if isinstance(data, list) else []
    out = []
    for line in text.splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


def _with_questions(predictions: list[dict], val: Path, image_root) -> list[dict]:
    """Prediction rows plus the question, language and image path of their validation record (the report's
    error gallery shows them)."""
    records = {str(r.get("id")): r for r in _records(Path(val)) if isinstance(r, dict)}
    root = Path(image_root) if image_root is not None else Path(val).parent
    out = []
    for row in predictions:
        record = records.get(str(row["id"]), {})
        turns = record.get("conversations") or [{}]
        question = str(turns[0].get("value", "")).replace("<image>", "").strip()
        image = record.get("image") or (record.get("images") or [None])[0]
        extra = {"question": question, "language": record.get("language", "")}
        if isinstance(image, str):
            extra["image"] = str((root / image).resolve())
        out.append({**row, **extra})
    return out


def run_experiment(
    exp_id: str, preset: str | None = None, seed: int | None = None, out: str | Path = "runs",
    overrides: Sequence[str] = (), on_event: Event | None = None,
    benchmarks: dict[str, str | Path] | None = None, limit: int | None = None,
) -> Path:  # fmt: skip
    """`tbi train F4`: run every step of one experiment (`SUITE/ID` or a bare id); returns its result.json."""
    suite, exp = find_experiment(exp_id)
    resolved = resolve_in_suite(suite, exp, preset, seed, tuple(overrides))
    return run_resolved(resolved, out, on_event, benchmarks, limit)


def _results(out: Path, suite: str, seed: int) -> dict[str, dict]:
    found = {}
    for file in (out / "runs" / suite).glob(f"*-seed{seed}/result.json"):
        data = json.loads(file.read_text())
        if data.get("status") == "done":
            found[data["id"]] = data
    return found


def _metric(result: dict, metric: str, lower_is_better: bool = False) -> float:
    """`metric` of a result (top-level value such as val_loss, an average, or a benchmark score), signed so
    that higher is better; a missing or non-numeric value never wins."""
    value = result.get(metric)
    if not isinstance(value, (int, float)):
        value = result.get("aggregates", {}).get(metric, result.get("scores", {}).get(metric))
    if not isinstance(value, (int, float)) or value != value:
        return float("-inf")
    return -float(value) if lower_is_better else float(value)


def ablate(
    suite_name: str,
    seeds: Sequence[int] | None = None,
    only: Sequence[str] | None = None,
    preset: str | None = None,
    out: str | Path = "runs",
    overrides: Sequence[str] = (),
    on_event: Event | None = None,
    report: bool = True,
    benchmarks: dict[str, str | Path] | None = None,
    limit: int | None = None,
    profile: Sequence[int] | None = None,
) -> dict[str, str]:
    """`tbi ablate SUITE`: every experiment x seed in critical-path order; returns {ID-seedS: status}.

    With `report`, the suite report is (re)written to `out/report/` at the end (`tbi_train.report`).
    With `profile` (image sides in pixels), each finished experiment without a profile yet is profiled at those
    sides into `out/profile/SUITE/ID.json` (`tbi_train.report.efficiency.record_profile`, once per experiment).

    Finished runs are skipped, unfinished ones resumed (their steps are in the store), a failure is recorded in
    the run's result.json and the suite goes on. The suite's rules apply: a SkipRule skips rows once its winner
    beat its rivals; a BestOfRule swaps the target rows for the variant of the best candidate.
    """
    on_event = on_event or (lambda kind, info: None)
    suite = get_suite(suite_name)
    out = Path(out)
    seeds = list(seeds) if seeds else [suite.seeds[0]]
    wanted = [e for e in suite.ordered() if not only or e.id in only]
    if only:
        unknown = set(only) - {e.id for e in suite.experiments}
        if unknown:
            raise ExperimentError(f"--only names {sorted(unknown)}, not in suite {suite.name}.")
    status: dict[str, str] = {}
    on_event("start", {"suite": suite.name, "total": len(wanted) * len(seeds)})
    for seed in seeds:
        for exp in wanted:
            name = f"{exp.id}-seed{seed}"
            run_dir = out / "runs" / suite.name / name
            done = _results(out, suite.name, seed)
            reason = _skip_reason(suite.rules, exp.id, done)
            if reason:
                status[name] = "skipped"
                run_dir.mkdir(parents=True, exist_ok=True)
                _write_json(run_dir / "result.json", {"status": "skipped", "suite": suite.name, "id": exp.id,
                                                      "seed": seed, "reason": reason})  # fmt: skip
                on_event("skipped", {"id": exp.id, "seed": seed, "reason": reason})
                continue
            exp = _best_of(suite.rules, exp, done)
            on_event("running", {"id": exp.id, "seed": seed})
            started = time.perf_counter()
            try:
                resolved = resolve_in_suite(suite, exp, preset, seed, tuple(overrides))
                run_resolved(resolved, out, on_event, benchmarks, limit)
                status[name] = "done"
                if profile:
                    _profile_once(resolved, out, profile)
                on_event("done", {"id": exp.id, "seed": seed, "seconds": time.perf_counter() - started})
            except Exception as exc:  # a failed experiment is recorded and the suite goes on
                status[name] = "failed"
                run_dir.mkdir(parents=True, exist_ok=True)
                _write_json(run_dir / "result.json", {
                    "status": "failed", "suite": suite.name, "id": exp.id, "seed": seed, "error": str(exc),
                    "traceback": traceback.format_exc(),
                })  # fmt: skip
                logger.warning("%s failed: %s", name, exc)
                on_event("failed", {"id": exp.id, "seed": seed, "error": str(exc)})
    if report:
        from tbi_train.report import write_report

        write_report(out)
    return status


def _profile_once(resolved: ResolvedExperiment, out: Path, sides: Sequence[int]) -> None:
    """Record the experiment's efficiency profile unless it exists; a failed profile is logged, the run stays
    done (the report then lacks that experiment's profile)."""
    from tbi_train.report.efficiency import profile_file, record_profile

    if profile_file(out, resolved.suite, resolved.id).is_file():
        return
    try:
        record_profile(resolved, out, sides)
    except Exception as exc:  # the trained run is valid without its profile
        logger.warning("profiling %s/%s failed: %s", resolved.suite, resolved.id, exc)


def _skip_reason(rules, exp_id: str, done: dict[str, dict]) -> str | None:
    for rule in rules:
        if not isinstance(rule, SkipRule) or exp_id not in rule.skip:
            continue
        if rule.winner in done and all(r in done for r in rule.rivals):
            win = _metric(done[rule.winner], rule.metric, rule.lower_is_better)
            if win > float("-inf") and all(
                win > _metric(done[r], rule.metric, rule.lower_is_better) for r in rule.rivals
            ):
                values = ", ".join(
                    f"{r} {_metric(done[r], rule.metric):.4g}" for r in (rule.winner, *rule.rivals)
                )
                side = "lowest" if rule.lower_is_better else "highest"
                return f"{rule.winner} beat {', '.join(rule.rivals)} on {rule.metric} ({side} wins: {values}): {rule.why}"
    return None


def _best_of(rules, exp, done: dict[str, dict]):
    for rule in rules:
        if not isinstance(rule, BestOfRule) or exp.id not in rule.targets:
            continue
        if all(c in done for c in rule.candidates):
            best = max(rule.candidates, key=lambda c: _metric(done[c], rule.metric))
            variants = dict(rule.variants)[best]
            return next(v for v in variants if v.id == exp.id)
    return exp
