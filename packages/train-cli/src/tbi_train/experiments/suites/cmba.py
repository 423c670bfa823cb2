"""Seed 002: Cross-Modal Budget Allocation (CMBA) pilot: LoRA rank ratios vision:projector:language at a fixed
total parameter budget (uniform rank 8 on every component)."""

from __future__ import annotations

from tbi_train.experiments.parts import DataMix, DecoderStrategy, PhaseRecipe
from tbi_train.experiments.registry import Experiment, Suite
from tbi_train.experiments.suites.tbi_mllm import PHASE1

CMBA_PHASE = PhaseRecipe(
    "cmba_lora", "decoder", ("vision_lora", "projector_lora", "lm_lora"),
    (("vision_lora", 2e-4), ("projector_lora", 2e-4), ("lm_lora", 2e-4)), DataMix(),
)  # fmt: skip
NONE = DecoderStrategy("none")


def _row(exp_id, ratio, seed_ranks, tests):
    ranks = tuple(int(r) for r in seed_ranks.split(":"))
    return Experiment(
        exp_id,
        f"{tests} (seed ranks {seed_ranks})",
        (PHASE1, CMBA_PHASE),
        NONE,
        rank_ratio=ratio,
        seed_ranks=ranks,
    )


def suite() -> Suite:
    rows = (
        # | allocation | vision:projector:language |                            (seed 002 pilot design)
        _row("U111", (1, 1, 1), "8:8:8", "Uniform (baseline)"),
        _row("P121", (1, 2, 1), "6:12:6", "Projector-heavy 1:2:1"),
        _row("P141", (1, 4, 1), "4:16:4", "Projector-heavy 1:4:1"),
        _row("V211", (2, 1, 1), "12:6:6", "Vision-heavy 2:1:1"),
        _row("L112", (1, 1, 2), "6:6:12", "Language-heavy 1:1:2"),
        _row("B241", (2, 4, 1), "8:16:4", "Balanced-high-projector 2:4:1"),
    )
    return Suite(
        name="cmba",
        seed_file="002_0efb21a791b2a972.txt",
        title="CMBA: LoRA rank allocation across vision, projector and language at a fixed budget",
        preset="llava-7b",
        seeds=(42,),
        experiments=rows,
        # revised pilot: uniform, 1:4:1, 2:1:1, 1:1:2 first
        critical_path=("U111", "P141", "V211", "L112"),
        gpu_days=tuple((r.id, 1.5 / 24) for r in rows),  # 1.5 GPU-hours per ratio
        phase_gpu_days=(("projector_pretrain", 0.0), ("cmba_lora", 1.5 / 24)),
        benchmarks=("VQAv2",),
    )
