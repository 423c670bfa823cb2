"""Seed 003: foveated VLM ablation sweeps (SmolLM2-135M + DINOv2-small): freeze F1-F3, learning-rate ratios
LR1-LR4, architecture A1/A6, multi-token baseline B1, image frames A8a/A8b, data mix D1."""

from __future__ import annotations

from tbi_train.experiments.parts import DataMix, DecoderStrategy, PhaseRecipe, ProjectorPart
from tbi_train.experiments.registry import Experiment, SkipRule, Suite

_FOVEATED = (("query_dim", 384),)
_FOVEATED_TINY = (("query_dim", 32), ("depth", 1))
TWO_PASS = "model.projector.query_from_lm=true"  # fine pass: the LM hidden state is the query
FOVEATED = ProjectorPart("foveated-query", _FOVEATED, _FOVEATED_TINY)
SHALLOW = ProjectorPart(
    "foveated-query", (*_FOVEATED, ("deep_query", False)), (*_FOVEATED_TINY, ("deep_query", False))
)
MULTI_TOKEN = ProjectorPart("multi-token", (("pool_grid", (4, 4)),), (("pool_grid", (2, 2)),))  # 16 tok/frame
NONE = DecoderStrategy("none")


def _stage1(connector, dino=None, llm=None, mix=None):
    mix = mix or DataMix()
    groups = (
        [("projector", connector)] + ([("vision", dino)] if dino else []) + ([("lm", llm)] if llm else [])
    )
    return PhaseRecipe(
        "stage1", "vision", tuple(g for g, _ in groups), tuple(groups), mix, loss_on="all_text"
    )


def _row(exp_id, phase, tests, projector=FOVEATED, overrides=(TWO_PASS,), same_as=None):
    return Experiment(
        exp_id, tests, (phase,), NONE, projector=projector, overrides=overrides, same_as=same_as
    )


F3 = _stage1(1e-4, 1e-5, 1e-5)  # baseline config = LR1 (10:1)


def suite() -> Suite:
    rows = (
        # Sweep 1: freeze                                                       | Frozen | LR |
        _row("F1", _stage1(1e-4), "Connector only (DINO + LLM frozen)"),
        _row("F2", _stage1(1e-4, 1e-5), "Connector + DINO (LLM frozen)"),
        _row("F3", F3, "Full unfreeze, 10:1 ratio (baseline)"),
        # Sweep 2: LR                                                           | Connector | DINO | LLM |
        _row("LR1", F3, "10:1 (= F3, no extra run)", same_as="F3"),
        _row("LR2", _stage1(1e-3, 1e-5, 1e-5), "100:1, aggressive connector"),
        _row("LR3", _stage1(3e-5, 1e-5, 1e-5), "3:1, near-uniform"),
        _row("LR4", _stage1(1e-5, 1e-5, 1e-5), "1:1 uniform"),
        # Sweep 3: architecture
        _row("A1", F3, "Shallow query (deep_query=False)", projector=SHALLOW),
        _row("A6", F3, "Coarse only (no fine pass)", overrides=()),
        # Sweep 5: multi-token baseline
        _row("B1", F3, "Multi-token, 16 tok/frame, no foveation", projector=MULTI_TOKEN, overrides=()),
        # Sweep 4: image handling + data mix
        _row("A8a", F3, "1-frame images", overrides=(TWO_PASS, "data.replicate_image_frames=1")),
        _row("A8b", F3, "16-frame replication", overrides=(TWO_PASS, "data.replicate_image_frames=16")),
        _row(
            "D1",
            _stage1(1e-4, 1e-5, 1e-5, DataMix(modalities=(("video", 0.55), ("image", 0.30), ("text", 0.15)))),
            "Video-heavy mix 55/30/15",
        ),
    )
    return Suite(
        name="foveated",
        seed_file="003_4829ff705f6c6a56.txt",
        title="Foveated VLM ablation sweeps (freeze, LR ratio, architecture, frames, mix, multi-token)",
        preset="smollm2-135m-dinov2-small",
        seeds=(42,),
        experiments=rows,
        # execution schedule: day 1 F1 F2 F3; day 2 LR2-4, A1; day 3 A6 B1 A8a A8b D1
        critical_path=("F1", "F2", "F3", "LR2", "LR3", "LR4", "A1", "A6", "B1", "A8a", "A8b", "D1"),
        gpu_days=tuple((r.id, 0.0 if r.same_as else 9 / 24) for r in rows),  # ~4.5 h on 2 GPUs per run
        phase_gpu_days=(("stage1", 9 / 24),),
        rules=(
            SkipRule(
                "F1",
                ("F2", "F3"),
                ("LR2", "LR3", "LR4"),
                metric="val_loss",  # seed 003: val_loss is the primary metric, the lowest wins
                lower_is_better=True,
                why="only the connector LR matters when backbones are frozen (seed 003 Sweep 2)",
            ),
        ),
        benchmarks=("val_loss", "Video-MME", "MVBench", "MLVU"),
    )
