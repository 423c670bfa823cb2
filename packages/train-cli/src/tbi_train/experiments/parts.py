"""Reusable parts an experiment is composed of: vision settings, projector, phase recipes, data mix, decoder strategy.

Every part spells itself as `key=value` overrides of the core's `RunConfig` (`tbi_train.config`), so an
experiment is "a preset plus overrides". Values are written at the seeds' scale; `scale_lr` maps a seed
learning rate onto a preset (the tiny preset trains random weights for a few dozen steps, so its rates are
higher by the ratio of the preset's phase rates to seed 000's).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

__all__ = [
    "DARE_TIES",
    "MOLE",
    "DataMix",
    "DecoderStrategy",
    "MergeSpec",
    "MoleSpec",
    "PhaseRecipe",
    "ProjectorPart",
    "VisionSettings",
]


@dataclass(frozen=True)
class VisionSettings:
    """Modernisations of the vision tower (seed 000 B*, seed 001 A*); all off = the original tower."""

    rope_2d: bool = False
    """Replace absolute position embeddings by 2D-RoPE (seed 000 `rope_config`: base 10000, linear interpolation)."""
    window_attention: bool = False
    """Window attention with a few global layers (seed 001: 8x8 windows, 4 global layers of 45)."""
    multi_scale: tuple[int, ...] = ()
    """Hidden layers tapped for multi-scale features, at a 24-layer tower's depth (seed 000: 8/16/24)."""
    pyramid_drop: tuple[float, ...] = ()
    """Per-scale drop rates of PyramidDrop (seed 000: 0.5/0.3/0.1); empty: no dropping."""

    def overrides(self, depth: int) -> tuple[str, ...]:
        """Core overrides; layer indexes are scaled from a 24-layer tower to `depth` layers."""
        out = []
        if self.rope_2d:
            out.append("model.vision.rope_2d=true")
        if self.window_attention:
            out.append("model.vision.window_attention=true")
        if self.multi_scale:
            layers = sorted({max(1, round(layer * depth / 24)) for layer in self.multi_scale})
            out.append(f"model.vision.feature_layers=[{','.join(map(str, layers))}]")
        if self.pyramid_drop:
            out.append(f"model.lm.pyramid_drop=[{','.join(map(str, self.pyramid_drop))}]")
        return tuple(out)

    def flags(self) -> dict[str, bool]:
        """The table columns of seed 000 2.2 (2D-RoPE, Multi-Scale, PyramidDrop) plus window attention."""
        return {
            "2D-RoPE": self.rope_2d,
            "Window": self.window_attention,
            "Multi-Scale": bool(self.multi_scale),
            "PyramidDrop": bool(self.pyramid_drop),
        }


@dataclass(frozen=True)
class ProjectorPart:
    """A projector of the `tbi_projectors` zoo with its options (seed scale) and its tiny-preset options."""

    name: str = "mlp2x_gelu"
    """Registry name."""
    options: tuple[tuple[str, object], ...] = ()
    """Options at the seed's scale, as (key, value) pairs."""
    tiny_options: tuple[tuple[str, object], ...] = ()
    """Options replacing `options` on the tiny preset (a 4x4 patch grid, width 64)."""

    def overrides(self, tiny: bool) -> tuple[str, ...]:
        options = dict(self.options)
        if tiny:
            options.update(dict(self.tiny_options))
        out = [f"model.projector.name={self.name}"]
        for key, value in sorted(options.items()):
            out.append(f"model.projector.options.{key}={_yaml(value)}")
        return tuple(out)


@dataclass(frozen=True)
class DataMix:
    """Which training samples a phase sees: task filter and language (or modality) shares."""

    languages: tuple[tuple[str, float], ...] = ()
    """Share per language, e.g. (("ko", 0.4), ("en", 0.6)); empty: the data as it is."""
    tasks: tuple[str, ...] = ()
    """Only these tasks (e.g. ("caption",)); empty: every task."""
    modalities: tuple[tuple[str, float], ...] = ()
    """Share per modality (video / image / text, seed 003 D1); empty: the data as it is."""

    def describe(self) -> str:
        parts = []
        if self.tasks:
            parts.append("+".join(self.tasks))
        if self.languages:
            parts.append(" ".join(f"{k} {v:.0%}" for k, v in self.languages))
        if self.modalities:
            parts.append(" ".join(f"{k} {v:.0%}" for k, v in self.modalities))
        return ", ".join(parts) or "all"


@dataclass(frozen=True)
class PhaseRecipe:
    """One training phase at the seed's scale; steps, batch and warmup come from the preset's phase of `role`."""

    name: str
    """Phase name (unique in an experiment; names checkpoint folders)."""
    role: Literal["projector", "vision", "decoder"]
    """Which preset phase supplies steps, batch size, warmup and the learning-rate scale (0, 1 or 2)."""
    trainable: tuple[str, ...]
    """Parameter groups that train (`tbi_train.config.COMPONENT_GROUPS`)."""
    lr: tuple[tuple[str, float], ...]
    """Seed-scale learning rate per trainable group."""
    mix: DataMix = field(default_factory=DataMix)
    """The phase's data."""
    loss_on: Literal["answers", "all_text"] = "answers"
    """Supervised tokens."""
    steps_factor: float = 1.0
    """Multiplier on the preset phase's steps (seed 004 stage 2 trains 5 epochs against stage 1's 2)."""


@dataclass(frozen=True)
class MergeSpec:
    """DARE+TIES merge of an English and a Korean model (seed 000 `dare_ties_config`)."""

    method: str = "dare_ties"
    drop_rate: float = 0.9
    """dare_drop_rate: drop 90% of the fine-tuned deltas."""
    rescale: bool = True
    """dare_rescale."""
    sign: str = "mass"
    """ties_elect_method."""
    lambda_en: float = 0.6
    lambda_ko: float = 0.4
    normalize: bool = True


@dataclass(frozen=True)
class MoleSpec:
    """MoLE upcycling and training (seed 000 `mole_config`)."""

    layers: tuple[int, ...] = (16, 20, 24, 28)
    """Decoder layers converted, at a 32-layer LM's depth (scaled to the model's depth)."""
    reference_depth: int = 32
    """Depth the `layers` are given for."""
    router_hidden_dim: int = 256
    router_temperature: float = 1.0
    load_balancing_loss_weight: float = 0.01
    capacity_factor: float = 1.25
    expert_lr: float = 5e-5
    """Seed-scale rate of experts and router (seed 000 phase 3 'MoLE experts: 5e-5')."""
    mix: DataMix = field(default_factory=lambda: DataMix(languages=(("ko", 0.5), ("en", 0.5))))
    """MoLE training data: 50% Korean, 50% English (routing signal)."""

    def scaled_layers(self, depth: int) -> tuple[int, ...]:
        """`layers` mapped onto a `depth`-layer LM (16/20/24/28 of 32 -> 2/2/3/3 -> {2, 3} of 4)."""
        return tuple(sorted({min(depth - 1, round(i * depth / self.reference_depth)) for i in self.layers}))


@dataclass(frozen=True)
class DecoderStrategy:
    """How the decoder is adapted in the last phase (seed 000 D1-D4)."""

    kind: Literal["none", "standard_ft", "lora_ft", "merge", "ft_merge", "ft_merge_mole"]
    """none: zero-shot; standard_ft: full LM fine-tune; lora_ft: LM LoRA; merge: DARE+TIES of an English and a
    Korean model; ft_merge: Korean LoRA FT then merge with the English model; ft_merge_mole: ft_merge then MoLE."""
    merge: MergeSpec = field(default_factory=MergeSpec)
    mole: MoleSpec = field(default_factory=MoleSpec)

    @property
    def label(self) -> str:
        return {
            "none": "None (zero-shot)",
            "standard_ft": "Standard FT",
            "lora_ft": "LoRA FT",
            "merge": "DARE+TIES",
            "ft_merge": "FT→Merge",
            "ft_merge_mole": "FT→Merge→MoLE",
        }[self.kind]


DARE_TIES = MergeSpec()
"""seed 000 `dare_ties_config`."""
MOLE = MoleSpec()
"""seed 000 `mole_config`."""


def _yaml(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, tuple | list):
        return "[" + ",".join(_yaml(v) for v in value) + "]"
    return str(value)
