"""What each eval point of a run scores: the validation split and the `eval.benchmarks` files.

    eval_set = load_eval_set(cfg, val_samples)          # benchmark files read once, before training
    scores   = score_benchmarks(vlm, eval_set, cfg.eval)  # {benchmark name: score} at one eval point

Benchmarks are read by tbi-evalbench's loaders and scored by its official metric exactly as `tbi eval`
does for a finished checkpoint (`tbi_train.run.evaluate.load_benchmark_questions` / `score_benchmark`):
greedy generation with `eval.max_new_tokens` and `eval.batch_size`, the first `eval.limit` samples of each.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from tbi_train.config import EvalConfig, RunConfig
from tbi_train.errors import TrainError
from tbi_train.eval import generate

__all__ = ["EvalSet", "check_benchmarks", "load_eval_set", "score_benchmarks"]


@dataclass
class EvalSet:
    """The samples every eval point scores; false when there is nothing to evaluate."""

    samples: list = field(default_factory=list)
    """The first `eval.limit` validation samples (tbi_train.data Samples), scored by exact match / token F1."""
    benchmarks: list[tuple[str, list, list]] = field(default_factory=list)
    """(name, tbi-evalbench samples, generation questions) per `eval.benchmarks` entry."""

    def __bool__(self) -> bool:
        return bool(self.samples) or bool(self.benchmarks)


def check_benchmarks(cfg: EvalConfig) -> None:
    """Fail before training when an `eval.benchmarks` name is not a tbi-evalbench loader or its file is missing."""
    from tbi_evalbench import BENCHMARKS

    for name, path in cfg.benchmarks:
        loader = name.partition(":")[0]
        if loader not in BENCHMARKS:
            from tbi_train.config.typed import suggest

            raise TrainError(
                f"eval.benchmarks.{name}: unknown benchmark loader '{loader}'.{suggest(loader, BENCHMARKS)} "
                f"Loaders: {', '.join(BENCHMARKS)}."
            )
        if not Path(path).exists():
            raise TrainError(
                f"eval.benchmarks.{name}={path} does not exist; point it at the benchmark's file."
            )


def load_eval_set(cfg: RunConfig, samples: list) -> EvalSet:
    """`samples` (the validation split) plus every `eval.benchmarks` file read through tbi-evalbench."""
    from tbi_evalbench import EvalbenchError
    from tbi_train.run.evaluate import load_benchmark_questions

    check_benchmarks(cfg.eval)
    benchmarks = []
    for name, path in cfg.eval.benchmarks:
        try:
            loaded, questions = load_benchmark_questions(name, path, limit=cfg.eval.limit)
        except EvalbenchError as exc:
            raise TrainError(f"eval.benchmarks.{name}={path}: {exc}") from exc
        if not loaded:
            raise TrainError(f"eval.benchmarks.{name}={path} holds no samples; check the file.")
        benchmarks.append((name, loaded, questions))
    return EvalSet(list(samples), benchmarks)


def score_benchmarks(vlm, eval_set: EvalSet, cfg: EvalConfig) -> dict[str, float]:
    """{benchmark name: score under its official metric} for the current weights of `vlm`."""
    from tbi_train.run.evaluate import score_benchmark

    scores = {}
    for name, samples, questions in eval_set.benchmarks:
        answers = generate(vlm, questions, max_new_tokens=cfg.max_new_tokens, batch_size=cfg.batch_size)
        scores[name] = float(score_benchmark(samples, answers).score)
    return scores
