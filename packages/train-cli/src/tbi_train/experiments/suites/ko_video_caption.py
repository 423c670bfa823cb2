"""Seed 004: Korean video captioning with CLIP-ViT-L/14-336 + Qwen3-8B: 4 projectors x LoRA/DoRA (E1-E8),
8 frames, 2 stages; METEOR (primary), CIDEr, BERTScore."""

from __future__ import annotations

from tbi_train.experiments.parts import DataMix, DecoderStrategy, PhaseRecipe, ProjectorPart
from tbi_train.experiments.registry import Experiment, Suite

VIDEO_KO = DataMix(languages=(("ko", 1.0),), tasks=("caption",), modalities=(("video", 1.0),))
STAGE1 = PhaseRecipe(
    "projector_warmup", "projector", ("projector",), (("projector", 1e-3),), VIDEO_KO
)  # 2 epochs
STAGE2 = PhaseRecipe(
    "joint_ft", "decoder", ("projector", "lm_lora"), (("projector", 5e-5), ("lm_lora", 5e-5)), VIDEO_KO,
    steps_factor=2.5,  # 5 epochs against stage 1's 2
)  # fmt: skip
PEFT = ("model.peft.lm.r=16", "model.peft.lm.alpha=32", "model.peft.lm.dropout=0.05")
LORA = (*PEFT, "model.peft.lm.use_dora=false")
DORA = (*PEFT, "model.peft.lm.use_dora=true")

P1 = ProjectorPart("linear")
P2 = ProjectorPart("mlp2x_gelu")
P3 = ProjectorPart("c-abstractor", (("output_grid", (8, 8)),),
                   (("num_blocks", 2), ("blocks_before_pool", 1), ("hidden_dim", 64), ("output_grid", (2, 2)), ("se_reduction", 4)))  # fmt: skip
P4 = ProjectorPart("perceiver", (("num_latents", 64), ("depth", 2)),
                   (("num_latents", 4), ("depth", 1), ("heads", 2), ("dim_head", 16)))  # fmt: skip


def _row(exp_id, projector, peft, tests):
    return Experiment(
        exp_id, tests, (STAGE1, STAGE2), DecoderStrategy("none"), projector=projector, overrides=peft
    )


def suite() -> Suite:
    rows = (
        # | ID | Projector | PEFT |                                            (seed 004 section 4.1)
        _row("E1", P1, LORA, "Linear + LoRA"),
        _row("E2", P1, DORA, "Linear + DoRA"),
        _row("E3", P2, LORA, "MLP-2L + LoRA"),
        _row("E4", P2, DORA, "MLP-2L + DoRA"),
        _row("E5", P3, LORA, "C-Abstractor + LoRA"),
        _row("E6", P3, DORA, "C-Abstractor + DoRA"),
        _row("E7", P4, LORA, "Perceiver + LoRA"),
        _row("E8", P4, DORA, "Perceiver + DoRA"),
    )
    return Suite(
        name="ko-video-caption",
        seed_file="004_976bc914e58312aa.txt",
        title="Korean video captioning: 4 projectors x LoRA/DoRA",
        preset="clip-l336-qwen3-8b",
        seeds=(42,),
        experiments=rows,
        critical_path=("E1", "E2", "E4", "E3", "E5", "E6", "E7", "E8"),  # section 7.3
        gpu_days=tuple((r.id, 1.75 / 24) for r in rows),  # 3-4 h per pair on one A100
        phase_gpu_days=(("projector_warmup", 0.5 / 24), ("joint_ft", 1.25 / 24)),
        benchmarks=("METEOR", "CIDEr", "BERTScore"),
        # the tiny preset's synthetic data are still images; this study needs 8-frame Korean clips
        tiny_overrides=("data.synthetic_task_weights={video: 1.0}",),
    )
