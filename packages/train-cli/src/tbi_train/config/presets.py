"""Named starting configs: `tiny` (random models, CPU minutes) and the seeds' real models (local paths).

Real presets take their checkpoint folders from `model_root` (the `TBI_MODEL_ROOT` environment variable
at resolve time, default `./models`); nothing is downloaded. Override any path with `model.lm.path=...`.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from tbi_train.config.schema import (
    CheckpointConfig,
    ComponentLR,
    DataConfig,
    EvalConfig,
    LMConfig,
    LoraSpec,
    ModelConfig,
    PeftConfig,
    PhaseConfig,
    ProjectorSpec,
    RunConfig,
    VisionConfig,
)
from tbi_train.config.typed import ConfigError, suggest

__all__ = ["get_preset", "list_presets", "model_root", "seed000_phases"]


def model_root() -> str:
    """Folder holding local checkpoints of the real presets: $TBI_MODEL_ROOT, default ./models."""
    return os.environ.get("TBI_MODEL_ROOT", "models")


def seed000_phases() -> tuple[PhaseConfig, ...]:
    """The three phases of seed 000 section 3.1 at full scale (per-device batch 2)."""
    return (
        PhaseConfig(
            name="projector_pretrain",
            trainable=("projector",),
            lr=ComponentLR(projector=1e-3),
            steps=10_000,
            warmup_steps=500,
            batch_size=2,
            grad_accum=64,
            tasks=("caption",),
        ),
        PhaseConfig(
            name="vision_projector",
            trainable=("vision", "projector"),
            lr=ComponentLR(vision=2e-5, projector=5e-5),
            steps=20_000,
            warmup_steps=1000,
            batch_size=2,
            grad_accum=32,
        ),
        PhaseConfig(
            name="lm_lora",
            trainable=("lm_lora",),
            lr=ComponentLR(lm_lora=2e-4),
            steps=50_000,
            warmup_steps=2000,
            batch_size=2,
            grad_accum=16,
        ),
    )


def _tiny(root: str) -> RunConfig:
    """Random 4-layer SigLIP-like tower + mlp2x_gelu + random 4-layer Qwen2-like LM + trained BPE.

    Same three phases as seed 000, scaled to a 2-core CPU: a few dozen steps each, higher rates
    because the models start from random weights, LoRA rank 8. The data are the synthetic colour and
    counting scenes (short bilingual answers a 64-wide model can learn in minutes); the LM's initial
    weights are wider than transformers' 0.02 so its tied embeddings do not cap the logits near uniform.
    """
    del root
    return RunConfig(
        name="tiny",
        model=ModelConfig(
            vision=VisionConfig(gradient_checkpointing=False),
            projector=ProjectorSpec("mlp2x_gelu"),
            lm=LMConfig(initializer_range=0.125),
            peft=PeftConfig(lm=LoraSpec(enabled=True, r=8, alpha=16, dropout=0.05)),
        ),
        data=DataConfig(
            synthetic_n=240, synthetic_image_size=96, synthetic_task_weights=(("color", 1.0), ("count", 1.0))
        ),
        phases=(
            PhaseConfig(
                name="projector_pretrain",
                trainable=("projector",),
                lr=ComponentLR(projector=3e-3),
                steps=30,
                warmup_steps=3,
                batch_size=8,
            ),
            PhaseConfig(
                name="vision_projector",
                trainable=("vision", "projector"),
                lr=ComponentLR(vision=1e-3, projector=1e-3),
                steps=30,
                warmup_steps=3,
                batch_size=8,
            ),
            PhaseConfig(
                name="lm_lora",
                trainable=("lm_lora",),
                lr=ComponentLR(lm_lora=3e-3),
                steps=60,
                warmup_steps=6,
                batch_size=8,
            ),
        ),
        eval=EvalConfig(every_steps=0, limit=32, batch_size=16, max_new_tokens=16),
        checkpoint=CheckpointConfig(every_steps=20),
        max_length=256,
    )


def _real(name: str, vision: str, lm: str, projector: str, feature_layer: int) -> Callable[[str], RunConfig]:
    def build(root: str) -> RunConfig:
        return RunConfig(
            name=name,
            model=ModelConfig(
                vision=VisionConfig(path=str(Path(root) / vision), feature_layer=feature_layer),
                projector=ProjectorSpec(projector),
                lm=LMConfig(path=str(Path(root) / lm), gradient_checkpointing=True),
            ),
            phases=seed000_phases(),
            max_length=4096,
        )

    build.__doc__ = (
        f"{vision} + {projector} + {lm} from $TBI_MODEL_ROOT, seed 000 phases and hyper-parameters."
    )
    return build


def _registry() -> dict[str, Callable[[str], RunConfig]]:
    return {
        "tiny": _tiny,
        "internvl2.5-8b": _real(
            "internvl2.5-8b", "InternViT-300M-448px-V2_5", "internlm2_5-7b-chat", "pixel-shuffle-mlp", -1
        ),
        "clip-l336-qwen3-8b": _real(
            "clip-l336-qwen3-8b", "clip-vit-large-patch14-336", "Qwen3-8B", "mlp2x_gelu", -2
        ),
        "smollm2-135m-dinov2-small": _real(
            "smollm2-135m-dinov2-small", "dinov2-small", "SmolLM2-135M", "mlp2x_gelu", -1
        ),
        "llava-7b": _real("llava-7b", "clip-vit-large-patch14-336", "vicuna-7b-v1.5", "mlp2x_gelu", -2),
    }


def list_presets() -> list[str]:
    """Names of the built-in presets."""
    return sorted(_registry())


def get_preset(name: str, root: str | None = None) -> RunConfig:
    """The preset's config, real checkpoint paths under `root` (default: `model_root()`)."""
    registry = _registry()
    if name not in registry:
        raise ConfigError(f"unknown preset '{name}'.{suggest(name, registry)}")
    return registry[name](root if root is not None else model_root())
