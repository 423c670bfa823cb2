"""Seed 000 (EXP-20260211-001): TBI-MLLM systematic ablation, 17 rows x 3 seeds x 3 phases.

The table below is seed 000 section 2.2; phases are section 3.1, configs section 3.3, costs section 7.1,
order and checkpoint reuse section 9.
"""

from __future__ import annotations

from tbi_train.experiments.parts import DataMix, DecoderStrategy, PhaseRecipe, ProjectorPart, VisionSettings
from tbi_train.experiments.registry import Experiment, Suite

# ---- parts (seed 000 section 3.3) -------------------------------------------------------------------------
PLAIN = VisionSettings()
ROPE = VisionSettings(rope_2d=True)  # rope_config
ROPE_MS = VisionSettings(rope_2d=True, multi_scale=(8, 16, 24))  # + pyramid_config
ROPE_MS_DROP = VisionSettings(rope_2d=True, multi_scale=(8, 16, 24), pyramid_drop=(0.5, 0.3, 0.1))
# C2's pyramid projector reads the tower's layers 8/16/24 (its "multi-scale input") without 2D-RoPE.
TAPS = VisionSettings(multi_scale=(8, 16, 24))

MLP = ProjectorPart("mlp2x_gelu")
_C_ABS = (
    ("num_blocks", 6),
    ("hidden_dim", 2048),
    ("output_grid", (16, 16)),
    ("kernel_size", 3),
    ("se_reduction", 16),
)
_C_ABS_TINY = (
    ("num_blocks", 2),
    ("blocks_before_pool", 1),
    ("hidden_dim", 64),
    ("output_grid", (2, 2)),
    ("se_reduction", 4),
)
C_ABSTRACTOR = ProjectorPart("c-abstractor", _C_ABS, _C_ABS_TINY)  # c_abstractor_config
PYRAMID_C_ABSTRACTOR = ProjectorPart(  # pyramid_c_abstractor_config
    "pyramid-c-abstractor",
    (*_C_ABS[1:], ("num_scales", 3), ("branch_dim", 1024)),
    (("hidden_dim", 64), ("output_grid", (2, 2)), ("se_reduction", 4), ("num_scales", 3), ("branch_dim", 32)),
)

# ---- phases (section 3.1) and data mixes (section 4.1) ----------------------------------------------------
PHASE1 = PhaseRecipe(
    "projector_pretrain", "projector", ("projector",), (("projector", 1e-3),),
    DataMix(languages=(("ko", 0.5), ("en", 0.5)), tasks=("caption",)),
)  # fmt: skip
PHASE2 = PhaseRecipe(
    "vision_projector", "vision", ("vision", "projector"), (("vision", 2e-5), ("projector", 5e-5)),
    DataMix(languages=(("en", 0.7), ("ko", 0.3))),
)  # fmt: skip
THREE_PHASES = (PHASE1, PHASE2)  # phase 3 is the decoder strategy's

NONE = DecoderStrategy("none")
STANDARD = DecoderStrategy("standard_ft")
LORA = DecoderStrategy("lora_ft")
MERGE = DecoderStrategy("merge")  # dare_ties_config
FT_MERGE = DecoderStrategy("ft_merge")
FT_MERGE_MOLE = DecoderStrategy("ft_merge_mole")  # + mole_config


def _row(exp_id, vision, projector, decoder, tests):
    phases = () if decoder.kind == "none" else THREE_PHASES
    return Experiment(exp_id, tests, phases, decoder, vision, projector)


def suite() -> Suite:
    # | Exp | vision | projector | decoder | Tests |                      (seed 000 table 2.2)
    rows = (
        _row("A0", PLAIN, MLP, NONE, "Baseline capability"),
        _row("A1", PLAIN, MLP, STANDARD, "Data-driven baseline"),
        _row("B1", ROPE, MLP, STANDARD, "RoPE benefit"),
        _row("B2", ROPE_MS, MLP, STANDARD, "Multi-scale benefit"),
        _row("B3", ROPE_MS_DROP, MLP, STANDARD, "PyramidDrop tradeoff"),
        _row("C1", PLAIN, C_ABSTRACTOR, STANDARD, "C-Abstractor vs MLP"),
        _row("C2", TAPS, PYRAMID_C_ABSTRACTOR, STANDARD, "Pyramid projector"),
        _row("D1", PLAIN, MLP, LORA, "Decoder FT baseline"),
        _row("D2", PLAIN, MLP, MERGE, "Merging without FT"),
        _row("D3", PLAIN, MLP, FT_MERGE, "Hybrid approach"),
        _row("D4", PLAIN, MLP, FT_MERGE_MOLE, "Full decoder pipeline"),
        _row("E1", ROPE_MS, C_ABSTRACTOR, STANDARD, "Vision+Projector synergy"),
        _row("E2", ROPE_MS_DROP, PYRAMID_C_ABSTRACTOR, STANDARD, "Full vision pipeline"),
        _row("F1", ROPE_MS_DROP, PYRAMID_C_ABSTRACTOR, LORA, "TBI-MLLM (LoRA variant)"),
        _row("F2", ROPE_MS_DROP, PYRAMID_C_ABSTRACTOR, MERGE, "TBI-MLLM (merge variant)"),
        _row("F3", ROPE_MS_DROP, PYRAMID_C_ABSTRACTOR, FT_MERGE, "TBI-MLLM (hybrid variant)"),
        _row("F4", ROPE_MS_DROP, PYRAMID_C_ABSTRACTOR, FT_MERGE_MOLE, "TBI-MLLM (full)"),
    )
    # section 7.1 (GPU-days; 2 GPUs, so twice the calendar days)
    gpu_days = {"A0": 0, "A1": 20, "B1": 22, "B2": 22, "B3": 22, "C1": 24, "C2": 24, "D1": 10, "D2": 2,
                "D3": 12, "D4": 16, "E1": 26, "E2": 26, "F1": 26, "F2": 18, "F3": 28, "F4": 32}  # fmt: skip
    return Suite(
        name="tbi-mllm",
        seed_file="000_0f88acc41a9df068.txt",
        title="TBI-MLLM systematic ablation (vision encoder, projector, decoder)",
        preset="internvl2.5-8b",
        seeds=(42, 123, 456),
        experiments=rows,
        # section 9: A0 -> A1 -> E2 -> F4, then B3, C2, D4, then the rest
        critical_path=("A0", "A1", "E2", "F4", "B3", "C2", "D4"),
        gpu_days=tuple(gpu_days.items()),
        phase_gpu_days=(
            # (experiment family, phase) calendar days x 2 GPUs, section 7.1
            ("A/D:projector_pretrain", 4),
            ("A/D:vision_projector", 6),
            ("B:projector_pretrain", 4),
            ("B:vision_projector", 8),
            ("C:projector_pretrain", 6),
            ("C:vision_projector", 8),
            ("E/F:projector_pretrain", 6),
            ("E/F:vision_projector", 10),
            ("decoder_ft", 10),
            ("decoder_lora", 10),
            ("source_en", 0),
            ("source_ko", 0),
            ("korean_ft", 10),
            ("merge", 2),
            ("mole", 4),
        ),
        benchmarks=(
            "MMBench-EN",
            "MMBench-KO",
            "MMStar",
            "SEED-Bench",
            "OCRBench",
            "TextVQA",
            "ChartQA",
            "CharXiv",
            "WTQ",
            "TabFact",
            "DocVQA",
            "InfoVQA",
            "MathVista",
            "K-DTCBench",
        ),
    )
