"""The seeds' experiment suites as data, the resolver (experiment -> frozen config + keyed steps), plans."""

from tbi_train.experiments.parts import (
    DataMix,
    DecoderStrategy,
    MergeSpec,
    MoleSpec,
    PhaseRecipe,
    ProjectorPart,
    VisionSettings,
)
from tbi_train.experiments.plan import list_experiments, plan_suite, show_experiment, step_cost
from tbi_train.experiments.rank_budget import RankAllocation, allocate_ranks, lora_costs, rank_budget
from tbi_train.experiments.registry import (
    BestOfRule,
    Experiment,
    ExperimentError,
    SkipRule,
    Suite,
    find_experiment,
    get_suite,
    list_suites,
)
from tbi_train.experiments.resolve import (
    ResolvedExperiment,
    Step,
    resolve_experiment,
    resolve_in_suite,
    resolve_suite,
)

__all__ = [
    "BestOfRule",
    "DataMix",
    "DecoderStrategy",
    "Experiment",
    "ExperimentError",
    "MergeSpec",
    "MoleSpec",
    "PhaseRecipe",
    "ProjectorPart",
    "RankAllocation",
    "ResolvedExperiment",
    "SkipRule",
    "Step",
    "Suite",
    "VisionSettings",
    "allocate_ranks",
    "find_experiment",
    "get_suite",
    "list_experiments",
    "list_suites",
    "lora_costs",
    "plan_suite",
    "rank_budget",
    "resolve_experiment",
    "resolve_in_suite",
    "resolve_suite",
    "show_experiment",
    "step_cost",
]
