"""Run one experiment or a suite: the step store (checkpoint reuse by key), rules, failures, evaluation."""

from tbi_train.run.data import SuiteData, prepare_data
from tbi_train.run.evaluate import (
    BENCHMARK_NAMES,
    aggregate,
    benchmark_aggregates,
    evaluate_benchmarks,
    evaluate_model,
    load_any_vlm,
)
from tbi_train.run.progress import SuiteProgress
from tbi_train.run.runner import ablate, run_experiment, run_resolved
from tbi_train.run.store import StepStore

__all__ = [
    "BENCHMARK_NAMES",
    "StepStore",
    "SuiteData",
    "SuiteProgress",
    "ablate",
    "aggregate",
    "benchmark_aggregates",
    "evaluate_benchmarks",
    "evaluate_model",
    "load_any_vlm",
    "prepare_data",
    "run_experiment",
    "run_resolved",
]
