"""Seed 001: InternViT-Next, modernising the vision encoder (2D-RoPE, window attention, spatial features,
adaptive compression); ablation plan of section 4, trained with seed 000's three phases."""

from __future__ import annotations

from tbi_train.experiments.parts import DecoderStrategy, ProjectorPart, VisionSettings
from tbi_train.experiments.registry import BestOfRule, Experiment, Suite
from tbi_train.experiments.suites.tbi_mllm import MLP, THREE_PHASES

ROPE = VisionSettings(rope_2d=True)
ROPE_WIN = VisionSettings(rope_2d=True, window_attention=True)
ROPE_WIN_PIIP = VisionSettings(rope_2d=True, window_attention=True, multi_scale=(8, 16, 24))

SP = ProjectorPart("spatial-tokens", (("base", "mlp2x_gelu"),))  # LLaVA-SP: +6 spatial tokens
PIIP = ProjectorPart("pyramid-drop", (("drop_rates", (0.0, 0.0, 0.0)),))  # per-scale MLP, nothing dropped
SP_PIIP = ProjectorPart(
    "spatial-tokens", (("base", "pyramid-drop"), ("base_options", (("drop_rates", (0.0, 0.0, 0.0)),)))
)
ADAPTIVE = ProjectorPart("adaptive-compression")  # content-aware compression instead of pixel unshuffle
ADAPTIVE_SP = ProjectorPart("spatial-tokens", (("base", "adaptive-compression"),))
LORA = DecoderStrategy("lora_ft")
TBI_DECODER = DecoderStrategy("ft_merge_mole")


def _row(exp_id, vision, projector, tests, decoder=LORA):
    return Experiment(exp_id, tests, THREE_PHASES, decoder, vision, projector)


def _a4_a5(vision, projector):
    """A4 and A5 for one choice of spatial features ('Best of A3')."""
    return (
        _row("A4", vision, projector, "+ Adaptive compression"),
        _row("A5", vision, projector, "Full InternViT-Next (with the TBI-MLLM decoder, RQ5)", TBI_DECODER),
    )


def suite() -> Suite:
    a4_sp, a4_piip, a4_both = (
        _a4_a5(ROPE_WIN, ADAPTIVE_SP),
        _a4_a5(ROPE_WIN_PIIP, ADAPTIVE),
        _a4_a5(ROPE_WIN_PIIP, ADAPTIVE_SP),
    )
    rows = (
        # | Variant | 2D-RoPE | Window | Spatial | Adaptive | Purpose |          (seed 001 section 4)
        _row("A0", VisionSettings(), MLP, "InternVL 2.5 reproduction"),
        _row("A1", ROPE, MLP, "2D-RoPE only"),
        _row("A2", ROPE_WIN, MLP, "+ Window attention"),
        _row("A3a", ROPE_WIN, SP, "+ LLaVA-SP spatial tokens"),
        _row("A3b", ROPE_WIN_PIIP, PIIP, "+ PIIP pyramid features"),
        _row("A3c", ROPE_WIN_PIIP, SP_PIIP, "+ Both combined"),
        *a4_both,  # until the runner knows the best A3 (rule below)
    )
    return Suite(
        name="internvit-next",
        seed_file="001_122a7c5069f05dd1.txt",
        title="InternViT-Next: 2D-RoPE, window attention, spatial features, adaptive compression",
        preset="internvl2.5-8b",
        seeds=(42, 123, 456),
        experiments=rows,
        critical_path=("A0", "A1", "A2", "A3a", "A3b", "A3c", "A4", "A5"),
        # section 5: 8 variants, ~50-100 GPU-days, 3-7 days each on 4 GPUs
        gpu_days=tuple((r.id, 9.4) for r in rows),
        phase_gpu_days=(
            ("projector_pretrain", 2.0),
            ("vision_projector", 4.0),
            ("decoder_lora", 3.4),
            ("source_en", 0.0),
            ("source_ko", 0.0),
            ("korean_ft", 3.4),
            ("merge", 1.0),
            ("mole", 2.0),
        ),
        rules=(
            BestOfRule(
                candidates=("A3a", "A3b", "A3c"),
                targets=("A4", "A5"),
                variants=(("A3a", a4_sp), ("A3b", a4_piip), ("A3c", a4_both)),
                why="A4/A5 use the best spatial features of A3 (seed 001 table: 'Best of A3').",
            ),
        ),
        benchmarks=("DocVQA", "ChartQA", "OCRBench", "K-DTCBench", "MMBench-EN", "MMMU", "MathVista"),
    )
