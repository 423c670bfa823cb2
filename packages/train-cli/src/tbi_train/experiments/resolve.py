"""Experiment -> frozen core config + the steps that produce its final model, each keyed for reuse.

    resolved = resolve_experiment("tbi-mllm/F4", preset="tiny", seed=42)
    resolved.config        # RunConfig: the preset + the experiment's overrides, main chain's phases
    resolved.steps         # train / merge / mole steps in dependency order; the last is the final model

A step's key is a hash of (the resolved config up to and including that step, seed): the config without
its phases (name and data paths blanked), the overrides the core cannot express yet, and every step on the
path to this one. Two experiments whose paths agree up to a step share that step's checkpoint.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from tbi_train.config import (
    ComponentLR,
    PhaseConfig,
    RunConfig,
    apply_overrides,
    get_preset,
    seed000_phases,
    to_dict,
)
from tbi_train.experiments.parts import DataMix, DecoderStrategy, PhaseRecipe
from tbi_train.experiments.registry import Experiment, ExperimentError, Suite, find_experiment, get_suite

__all__ = ["ResolvedExperiment", "Step", "resolve_experiment", "resolve_in_suite"]

_LANG_40_60 = DataMix(languages=(("ko", 0.4), ("en", 0.6)))  # seed 000 4.1: standard FT
_EN = DataMix(languages=(("en", 1.0),))
_KO = DataMix(languages=(("ko", 1.0),))  # Korean FT for merging: 100% Korean


@dataclass(frozen=True)
class Step:
    """One unit of work whose output (a saved VLM) is cached under `key`."""

    key: str
    kind: Literal["train", "merge", "mole"]
    name: str
    parent: str | None = None
    """train: the step whose checkpoint this phase continues from (None: from scratch)."""
    config: RunConfig | None = None
    """train: the core config whose last phase this step trains (earlier phases = the parent chain)."""
    mix: DataMix | None = None
    """train / mole: the data mix of the phase."""
    inputs: tuple[tuple[str, str], ...] = ()
    """merge: base/en/ko -> step key; mole: ko/en/shared -> step key."""
    spec: tuple[tuple[str, object], ...] = ()
    """merge / mole options (seed 000 dare_ties_config / mole_config, scaled)."""

    def describe(self) -> str:
        if self.kind == "train" and not self.config.phases:
            return "init: the untrained model (zero-shot)"
        if self.kind == "train":
            phase = self.config.phases[-1]
            return f"{phase.name}: train {'+'.join(phase.trainable)} on {self.mix.describe()}"
        if self.kind == "merge":
            return "merge: " + " ".join(f"{r}={k[:8]}" for r, k in self.inputs)
        return "mole: experts " + " ".join(f"{r}={k[:8]}" for r, k in self.inputs)


@dataclass(frozen=True)
class ResolvedExperiment:
    """An experiment made concrete for a preset and a seed."""

    suite: str
    id: str
    seed: int
    preset: str
    config: RunConfig
    """The core's resolved config (main chain's training phases)."""
    steps: tuple[Step, ...]
    pending: tuple[str, ...] = ()
    """Overrides the core's config does not have yet: the experiment cannot run until it does."""
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def final(self) -> Step | None:
        return self.steps[-1] if self.steps else None

    @property
    def init_key(self) -> str:
        """Key of the untrained model (the zero-shot row and every chain's starting point)."""
        return _digest({"init": self._base_tree()})

    def _base_tree(self) -> dict:
        return _base(self.config, self.pending, self.seed)


def _digest(tree: object) -> str:
    blob = json.dumps(tree, sort_keys=True, separators=(",", ":"), ensure_ascii=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _base(cfg: RunConfig, pending: tuple[str, ...], seed: int) -> dict:
    tree = to_dict(dataclasses.replace(cfg, name="", phases=()))
    tree["data"]["train"] = tree["data"]["val"] = tree["data"]["image_root"] = None
    return {"config": tree, "pending": sorted(pending), "seed": seed}


def _key_exists(path: list[str]) -> bool:
    node: object = to_dict(RunConfig())
    for part in path:
        if isinstance(node, list):
            return part.isdigit()
        if not isinstance(node, dict) or part not in node:
            return False
        if part == "options":
            return True
        node = node[part]
    return True


def _split_pending(overrides: list[str]) -> tuple[list[str], list[str]]:
    ok, pending = [], []
    for text in overrides:
        key = text.split("=", 1)[0]
        (ok if _key_exists(key.split(".")) else pending).append(text)
    return ok, pending


def _lm_depth(cfg: RunConfig) -> int:
    if cfg.model.lm.path is None:
        return cfg.model.lm.num_layers
    config = Path(cfg.model.lm.path) / "config.json"
    if config.is_file():
        return int(json.loads(config.read_text()).get("num_hidden_layers", 32))
    return 32


def _vision_depth(cfg: RunConfig) -> int:
    if cfg.model.vision.path is None:
        return cfg.model.vision.num_layers
    config = Path(cfg.model.vision.path) / "config.json"
    if config.is_file():
        values = json.loads(config.read_text())
        values = values.get("vision_config", values)
        return int(values.get("num_hidden_layers", 24))
    return 24


_ROLE_INDEX = {"projector": 0, "vision": 1, "decoder": 2}


def _scaled_phase(recipe: PhaseRecipe, preset: RunConfig) -> PhaseConfig:
    """The recipe at the preset's scale: steps/batch/warmup of the preset phase of the same role, and each seed
    learning rate times (preset rate / seed 000 rate) of that role (1 on full-scale presets)."""
    index = _ROLE_INDEX[recipe.role]
    if len(preset.phases) <= index:
        raise ExperimentError(
            f"preset {preset.name} has {len(preset.phases)} phases; phase {recipe.name} needs its phase {index}."
        )
    ref, seed_ref = preset.phases[index], seed000_phases()[index]
    ratios = {
        g: getattr(ref.lr, g) / getattr(seed_ref.lr, g)
        for g in seed_ref.trainable
        if getattr(ref.lr, g) is not None and getattr(seed_ref.lr, g)
    }
    anchor = next(iter(ratios.values()), 1.0)
    lrs = {}
    for group, lr in recipe.lr:
        component = group.removesuffix("_lora")
        lrs[group] = lr * ratios.get(group, ratios.get(component, anchor))
    steps = ref.steps if ref.steps is None else max(1, math.ceil(ref.steps * recipe.steps_factor))
    epochs = None if ref.epochs is None else ref.epochs * recipe.steps_factor
    return PhaseConfig(
        name=recipe.name,
        trainable=recipe.trainable,
        lr=ComponentLR(**lrs),
        steps=steps,
        epochs=epochs,
        warmup_steps=ref.warmup_steps,
        batch_size=ref.batch_size,
        grad_accum=ref.grad_accum,
        loss_on=recipe.loss_on,
        tasks=recipe.mix.tasks,
    )


def _decoder_recipes(decoder: DecoderStrategy) -> dict[str, PhaseRecipe]:
    """Phase-3 recipes of seed 000 3.1: full model 1e-5, LoRA 2e-4 (rank 64, alpha 16)."""
    return {
        "standard_ft": PhaseRecipe("decoder_ft", "decoder", ("lm",), (("lm", 1e-5),), _LANG_40_60),
        "lora_ft": PhaseRecipe("decoder_lora", "decoder", ("lm_lora",), (("lm_lora", 2e-4),), _LANG_40_60),
        # The "English model" and "Korean model" merged by D2: full fine-tunes on one language each.
        "source_en": PhaseRecipe("source_en", "decoder", ("lm",), (("lm", 1e-5),), _EN),
        "source_ko": PhaseRecipe("source_ko", "decoder", ("lm",), (("lm", 1e-5),), _KO),
        # D3/D4: the experiment's own Korean fine-tune (LoRA recipe) before merging.
        "korean_ft": PhaseRecipe("korean_ft", "decoder", ("lm_lora",), (("lm_lora", 2e-4),), _KO),
    }


def resolve_in_suite(
    suite: Suite,
    exp: Experiment,
    preset: str | None = None,
    seed: int | None = None,
    overrides: tuple[str, ...] = (),
) -> ResolvedExperiment:
    """Resolve `exp` of `suite` on `preset` (default: the suite's real preset) with `seed` (default: first)."""
    preset = preset or suite.preset
    seed = suite.seeds[0] if seed is None else seed
    if exp.same_as:
        return dataclasses.replace(
            resolve_in_suite(suite, suite.experiment(exp.same_as), preset, seed, overrides), id=exp.id
        )
    base = get_preset(preset)
    tiny = base.model.lm.path is None
    wanted = [
        *exp.projector.overrides(tiny),
        *exp.vision.overrides(_vision_depth(base)),
        *exp.overrides,
    ]
    recipes = list(exp.phases)
    decoder = _decoder_recipes(exp.decoder)
    for group in {g for r in recipes for g in r.trainable} | (
        {"lm_lora"} if exp.decoder.kind != "none" else set()
    ):
        if group.endswith("_lora"):
            wanted.append(f"model.peft.{group.removesuffix('_lora')}.enabled=true")
    ok, pending = _split_pending(wanted)
    tiny_over = list(suite.tiny_overrides) if tiny else []
    cfg = apply_overrides(base, [*tiny_over, *ok, f"seed={seed}", f"name={exp.id}", *overrides])
    notes: list[str] = []
    alloc = None
    if exp.rank_ratio is not None:
        from tbi_train.experiments.rank_budget import rank_budget

        try:
            alloc = rank_budget(cfg, exp.rank_ratio)
        except ExperimentError as exc:
            if exp.seed_ranks is None:
                raise
            ranks = dict(zip(("vision", "projector", "lm"), exp.seed_ranks))
            notes.append(f"ranks {':'.join(map(str, exp.seed_ranks))} as the seed lists them ({exc})")
        else:
            ranks = alloc.ranks
        rank_over = []
        for comp, r in ranks.items():
            rank_over += [f"model.peft.{comp}.r={r}", f"model.peft.{comp}.alpha={r}"]
        cfg = apply_overrides(cfg, rank_over)
    if alloc is not None:
        notes.append(
            "ranks "
            + ":".join(str(alloc.ranks[c]) for c in ("vision", "projector", "lm"))
            + f" -> {alloc.total} adapter parameters (budget {alloc.budget}, {alloc.deviation:+.1%})"
        )
    steps: list[Step] = []
    base_tree = _base(cfg, tuple(pending), seed)
    chain_phases: list[PhaseConfig] = []
    chain_mixes: list[DataMix] = []

    available: set[str] = set()
    if cfg.data.train is None:
        for kind, weight in cfg.data.synthetic_task_weights:
            if weight > 0:  # synthetic videos carry the task caption or color
                available |= {"caption", "color"} if kind == "video" else {kind}

    def train(
        recipe: PhaseRecipe, parent: Step | None, phases: list[PhaseConfig], mixes: list[DataMix]
    ) -> Step:
        if available and recipe.mix.tasks and not set(recipe.mix.tasks) & available:
            # The preset's synthetic data has none of these tasks: the phase trains on all of it, and says so.
            notes.append(
                f"{recipe.name}: no {'/'.join(recipe.mix.tasks)} samples in the preset's synthetic data "
                f"({', '.join(sorted(available))}); the phase trains on every task"
            )
            recipe = dataclasses.replace(recipe, mix=dataclasses.replace(recipe.mix, tasks=()))
        phase = _scaled_phase(recipe, cfg)
        phases, mixes = [*phases, phase], [*mixes, recipe.mix]
        key = _digest(
            {"base": base_tree, "phases": [to_dict(p) for p in phases], "mixes": [to_dict(m) for m in mixes]}
        )
        step = Step(key, "train", recipe.name, parent.key if parent else None,
                    dataclasses.replace(cfg, phases=tuple(phases)), recipe.mix)  # fmt: skip
        steps.append(step)
        return step

    last = None
    for recipe in recipes:
        last = train(recipe, last, chain_phases, chain_mixes)
        chain_phases.append(last.config.phases[-1])
        chain_mixes.append(last.mix)
    kind = exp.decoder.kind
    if kind in ("merge", "ft_merge", "ft_merge_mole") and last is None:
        raise ExperimentError(f"{exp.id}: a merge strategy needs the training phases before it.")
    main_phases = list(chain_phases)
    if kind in ("standard_ft", "lora_ft"):
        last = train(decoder[kind], last, chain_phases, chain_mixes)
        main_phases = list(last.config.phases)
    elif kind != "none":
        trunk = last
        en = train(decoder["source_en"], trunk, chain_phases, chain_mixes)
        ko = train(decoder["korean_ft" if kind != "merge" else "source_ko"], trunk, chain_phases, chain_mixes)
        main_phases = list(ko.config.phases)
        m = exp.decoder.merge
        spec = tuple(sorted(dataclasses.asdict(m).items()))
        inputs = (("base", trunk.key), ("en", en.key), ("ko", ko.key))
        merged = Step(
            _digest({"merge": inputs, "spec": spec, "seed": seed}), "merge", "merge", inputs=inputs, spec=spec
        )
        steps.append(merged)
        last = merged
        if kind == "ft_merge_mole":
            mole = exp.decoder.mole
            ref = _scaled_phase(
                PhaseRecipe("mole", "decoder", ("lm",), (("lm", mole.expert_lr),), mole.mix), cfg
            )
            spec = (
                ("layers", mole.scaled_layers(_lm_depth(cfg))),
                ("router_hidden_dim", mole.router_hidden_dim if not tiny else 16),
                ("router_temperature", mole.router_temperature),
                ("load_balancing_loss_weight", mole.load_balancing_loss_weight),
                ("capacity_factor", mole.capacity_factor),
                ("phase", to_dict(ref)),
            )
            inputs = (("ko", ko.key), ("en", trunk.key), ("shared", merged.key))
            key = _digest({"mole": inputs, "spec": spec, "mix": to_dict(mole.mix), "base": base_tree})
            last = Step(key, "mole", "mole", inputs=inputs, spec=spec, mix=mole.mix)
            steps.append(last)
    full = dataclasses.replace(cfg, phases=tuple(main_phases))
    if not steps:
        init = Step(
            _digest({"init": base_tree}),
            "train",
            "init",
            config=dataclasses.replace(cfg, phases=()),
            mix=DataMix(),
        )
        steps.append(init)
    return ResolvedExperiment(
        suite.name, exp.id, seed, preset, full, tuple(steps), tuple(pending), tuple(notes)
    )


def resolve_experiment(
    ref: str, preset: str | None = None, seed: int | None = None, overrides: tuple[str, ...] = ()
) -> ResolvedExperiment:
    """Resolve `SUITE/ID` (or a bare id; tbi-mllm first) on `preset` with `seed`."""
    suite, exp = find_experiment(ref)
    return resolve_in_suite(suite, exp, preset, seed, overrides)


def resolve_suite(suite_name: str, preset: str | None = None, seed: int | None = None, overrides=()) -> list:
    """Every experiment of a suite, resolved, in critical-path order."""
    suite = get_suite(suite_name)
    return [resolve_in_suite(suite, e, preset, seed, tuple(overrides)) for e in suite.ordered()]
