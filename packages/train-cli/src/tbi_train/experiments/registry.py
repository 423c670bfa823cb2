"""Experiments and suites as typed data, and the registry of the five suites of `shared/seeds/`."""

from __future__ import annotations

from dataclasses import dataclass, field

from tbi_train.errors import TrainError
from tbi_train.experiments.parts import DecoderStrategy, PhaseRecipe, ProjectorPart, VisionSettings

__all__ = [
    "BestOfRule",
    "Experiment",
    "ExperimentError",
    "SkipRule",
    "Suite",
    "find_experiment",
    "get_suite",
    "list_suites",
]


class ExperimentError(TrainError):
    """An unknown suite or experiment, or an experiment the toolkit cannot realise yet; says what to do."""


@dataclass(frozen=True)
class Experiment:
    """One row of a seed's ablation table."""

    id: str
    """Row id as in the seed (A1, F4, LR2, ...)."""
    tests: str
    """What the row tests (the seed's 'Tests' / 'Purpose' column)."""
    phases: tuple[PhaseRecipe, ...]
    """Training phases before the decoder strategy's own steps."""
    decoder: DecoderStrategy
    """Decoder adaptation of the last phase (None/standard/LoRA/merge/FT→merge/FT→merge→MoLE)."""
    vision: VisionSettings = field(default_factory=VisionSettings)
    """Vision-tower modernisations."""
    projector: ProjectorPart = field(default_factory=ProjectorPart)
    """Projector."""
    overrides: tuple[str, ...] = ()
    """Further core `key=value` overrides (LoRA ranks, DoRA, ...)."""
    same_as: str | None = None
    """Another row of the suite this row is identical to (seed 003: LR1 = F3); it is never run twice."""
    rank_ratio: tuple[float, float, float] | None = None
    """vision:projector:language LoRA rank ratio at the suite's budget (seed 002); ranks come from
    `tbi_train.experiments.rank_budget`."""
    seed_ranks: tuple[int, int, int] | None = None
    """The ranks the seed lists for this ratio; used when the model cannot be measured (no local checkpoint)."""


@dataclass(frozen=True)
class SkipRule:
    """Skip `skip` when `winner` beats every one of `rivals` on `metric` (seed 003 Sweep 2 conditional)."""

    winner: str
    rivals: tuple[str, ...]
    skip: tuple[str, ...]
    metric: str = "overall"
    """Result value compared: a top-level result key (`val_loss`), an average (`overall`) or a benchmark."""
    lower_is_better: bool = False
    """True for losses (seed 003: the lowest validation loss wins); otherwise the highest value wins."""
    why: str = ""


@dataclass(frozen=True)
class BestOfRule:
    """`targets` take the spatial-feature setting of the best of `candidates` (seed 001: 'Best of A3')."""

    candidates: tuple[str, ...]
    targets: tuple[str, ...]
    variants: tuple[tuple[str, tuple[Experiment, ...]], ...] = ()
    """For each candidate, the rows that replace `targets` when it wins."""
    metric: str = "overall"
    why: str = ""


@dataclass(frozen=True)
class Suite:
    """A study: its experiments in the seed's order, seeds, preset, critical path, per-run cost and rules."""

    name: str
    seed_file: str
    """The seed document in `shared/seeds/`."""
    title: str
    preset: str
    """The real preset the seed uses (the tiny preset stands in for it on a CPU)."""
    seeds: tuple[int, ...]
    """Training seeds of the study."""
    experiments: tuple[Experiment, ...]
    critical_path: tuple[str, ...]
    """Run order (seed 000 section 9); experiments not listed follow in table order."""
    gpu_days: tuple[tuple[str, float], ...]
    """Seed's cost estimate per experiment in GPU-days (0 for evaluation only)."""
    phase_gpu_days: tuple[tuple[str, float], ...] = ()
    """Seed's cost per phase name, used to price phases that are shared between experiments."""
    rules: tuple[SkipRule | BestOfRule, ...] = ()
    benchmarks: tuple[str, ...] = ()
    """Benchmarks of the seed (its results-table columns on real runs)."""
    tiny_overrides: tuple[str, ...] = ()
    """Core overrides applied on random-init presets (e.g. synthetic videos for a video study)."""

    def experiment(self, exp_id: str) -> Experiment:
        for exp in self.experiments:
            if exp.id.lower() == exp_id.lower():
                return exp
        raise ExperimentError(
            f"suite {self.name} has no experiment {exp_id!r}; it has {', '.join(e.id for e in self.experiments)}."
        )

    def ordered(self) -> list[Experiment]:
        """Experiments in critical-path order, then the rest in table order."""
        first = [self.experiment(i) for i in self.critical_path]
        return first + [e for e in self.experiments if e.id not in self.critical_path]


def _suites() -> dict[str, Suite]:
    from tbi_train.experiments.suites import cmba, foveated, internvit_next, ko_video_caption, tbi_mllm

    built = [
        tbi_mllm.suite(),
        internvit_next.suite(),
        cmba.suite(),
        foveated.suite(),
        ko_video_caption.suite(),
    ]
    return {s.name: s for s in built}


def list_suites() -> list[str]:
    """Names of the built-in suites, in seed order."""
    return list(_suites())


def get_suite(name: str) -> Suite:
    """The suite called `name`."""
    suites = _suites()
    if name not in suites:
        from tbi_train.config.typed import suggest

        raise ExperimentError(f"unknown suite {name!r}.{suggest(name, suites)}")
    return suites[name]


def find_experiment(ref: str) -> tuple[Suite, Experiment]:
    """`SUITE/ID` or a bare id; a bare id is looked up in tbi-mllm first, then must be unique."""
    if "/" in ref:
        suite_name, exp_id = ref.split("/", 1)
        suite = get_suite(suite_name)
        return suite, suite.experiment(exp_id)
    suites = _suites()
    main = suites["tbi-mllm"]
    if any(e.id == ref for e in main.experiments):
        return main, main.experiment(ref)
    hits = [(s, e) for s in suites.values() for e in s.experiments if e.id.lower() == ref.lower()]
    if len(hits) == 1:
        return hits[0]
    if not hits:
        raise ExperimentError(f"no experiment {ref!r} in any suite; `tbi experiments list` shows them.")
    raise ExperimentError(
        f"experiment {ref!r} exists in {', '.join(s.name for s, _ in hits)}; write SUITE/{ref}."
    )
