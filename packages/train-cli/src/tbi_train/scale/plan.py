"""`tbi plan`: the per-GPU memory table of seed 000 section 7.3 for a model on given hardware, via `memory.py`.

    print(hardware_plan("tests/data/internvl2_5_8b_config.json", "2xA100-40GB").text)

The model is a VLM config.json (InternVL, LLaVA: vision + text sub-configs), a plain causal-LM config.json,
or a run config: a resolved `RunConfig`, a preset name or an experiment id (its tower and LM config files, or
its random-init sizes; the projector is built on the meta device to count it). Every candidate setting (ZeRO stage, optimizer offload, activation
checkpointing, micro-batch) gets a row; the cheapest that fits is named at the end.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from tbi_train.config import RunConfig
from tbi_train.errors import TrainError
from tbi_train.scale.memory import (
    Hardware,
    MemoryBreakdown,
    ModelShape,
    format_gib,
    language_model_shape,
    model_shape_from_config,
    smallest_fitting,
    vision_tower_shape,
)

__all__ = ["HardwarePlan", "hardware_plan", "model_shape_from_run_config"]


@dataclass(frozen=True)
class HardwarePlan:
    """The planner's answer: every candidate's breakdown, the cheapest fitting one, and the printable table."""

    shape: ModelShape
    """Parameter counts and stack sizes of the model."""
    hardware: Hardware
    """The parsed hardware spec."""
    rows: list[MemoryBreakdown]
    """One breakdown per candidate setting, cheapest first."""
    best: MemoryBreakdown | None
    """The first row that fits in 90 % of a GPU's memory, or None."""
    text: str
    """The table and the verdict, as `tbi plan` prints them."""


def _read_json(path: Path, key: str) -> dict:
    file = path / "config.json" if path.is_dir() or not path.suffix else path
    if not file.is_file():
        raise TrainError(f"{key}={path}: no config file {file}; point {key} at a local checkpoint folder.")
    return json.loads(file.read_text(encoding="utf-8"))


def _count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def model_shape_from_run_config(cfg: RunConfig) -> ModelShape:
    """The VLM of `cfg` as stacks: config files of local checkpoints, or the random-init sizes (no weights)."""
    from tbi_projectors import build_projector
    from tbi_train.model.lm import build_lm
    from tbi_train.model.vision import build_vision_tower

    if cfg.model.vision.path is not None:
        vision_cfg = _read_json(Path(cfg.model.vision.path), "model.vision.path")
        vision_cfg = vision_cfg.get("vision_config", vision_cfg)
    else:
        with torch.device("meta"):
            vision_cfg = build_vision_tower(cfg.model.vision).model.config.to_dict()
    if cfg.model.lm.path is not None:
        lm_cfg = _read_json(Path(cfg.model.lm.path), "model.lm.path")
        lm_cfg = lm_cfg.get("text_config") or lm_cfg.get("llm_config") or lm_cfg
    else:
        with torch.device("meta"):
            lm_cfg = build_lm(cfg.model.lm, vocab_size=cfg.model.tokenizer.vocab_size).config.to_dict()
    vision, tokens = vision_tower_shape(vision_cfg)
    language = language_model_shape(lm_cfg)
    with torch.device("meta"):
        projector = build_projector(
            cfg.model.projector.name,
            input_dim=vision.hidden,
            output_dim=language.hidden,
            **dict(cfg.model.projector.options),
        )
    return ModelShape(vision, _count(projector), language, vision_tokens_per_tile=tokens)


def hardware_plan(
    model: str | Path | RunConfig,
    hardware: str,
    seq_len: int = 2048,
    tiles: int = 1,
    train_vision: bool = True,
) -> HardwarePlan:
    """Memory per GPU for full fine-tuning of `model` on `hardware` (e.g. "2xA100-40GB"), every setting.

    Args:
        model: a config.json (or its folder), a resolved RunConfig, a preset name, or an experiment id
            (`F4`, `SUITE/ID`; resolved on its suite's real preset, checkpoints under $TBI_MODEL_ROOT).
        hardware: `NxNAME-MEMGB`, optionally `NODESx` in front (2x8xH100-80GB).
        seq_len: LM tokens per sample (seed 000 7.3: 2048).
        tiles: image tiles per sample feeding the vision tower (InternVL dynamic tiling: 1-12, plus a thumbnail).
        train_vision: the vision tower trains too (else its weights are frozen: 2 bytes each).
    """
    if _is_run(model):
        shape = model_shape_from_run_config(_as_run_config(model))
    else:
        shape = model_shape_from_config(model)
    hw = Hardware.parse(hardware)
    rows, best = smallest_fitting(shape, hw, seq_len=seq_len, tiles=tiles, train_vision=train_vision)
    return HardwarePlan(shape, hw, rows, best, _render(shape, hw, rows, best, seq_len, tiles))


def _is_run(model) -> bool:
    """A RunConfig, or a name that is not a file: a preset or an experiment id."""
    return isinstance(model, RunConfig) or (isinstance(model, str) and not Path(model).exists())


def _as_run_config(model: str | RunConfig) -> RunConfig:
    """A preset name (`tiny`, `internvl2.5-8b`) or an experiment (`F4`, `SUITE/ID`) on its suite's real preset."""
    if isinstance(model, RunConfig):
        return model
    from tbi_train.config import get_preset, list_presets

    if model in list_presets():
        return get_preset(model)
    from tbi_train.experiments import resolve_experiment

    return resolve_experiment(model).config


def _render(shape: ModelShape, hw: Hardware, rows, best, seq_len: int, tiles: int) -> str:
    vision = shape.vision.parameters if shape.vision else 0
    lines = [
        f"model: {shape.parameters / 1e9:.2f}B parameters (vision {vision / 1e9:.2f}B, projector "
        f"{shape.projector_parameters / 1e6:.1f}M, language {shape.language.parameters / 1e9:.2f}B)",
        f"hardware: {hw.gpus} x {hw.name} {hw.memory_gib:g} GB ({hw.nodes} node(s)); sequence {seq_len}, "
        f"{tiles} tile(s) per sample; GiB per GPU, bf16 weights, fp32 AdamW states",
        "",
    ]
    header = ["setting", "params", "grads", "optimizer", "activations", "total", "CPU offload", "fits"]
    table = [
        [
            r.setting.describe(),
            format_gib(r.parameters_gib),
            format_gib(r.gradients_gib),
            format_gib(r.optimizer_gib),
            format_gib(r.activations_gib),
            format_gib(r.total_gib),
            format_gib(r.cpu_offload_gib),
            "yes" if r.fits else "no",
        ]
        for r in rows
    ]
    widths = [max(len(row[i]) for row in [header, *table]) for i in range(len(header))]
    for row in [header, ["-" * w for w in widths], *table]:
        cells = [row[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(row[1:], widths[1:])]
        lines.append("  ".join(cells).rstrip())
    lines.append("")
    if best is None:
        lines.append(
            f"nothing fits in 90% of {hw.memory_gib:g} GB: add GPUs, shorten the sequence, or freeze parts."
        )
    else:
        lines.append(
            f"smallest setting that fits: {best.setting.describe()} ({format_gib(best.total_gib)} GB per GPU)"
        )
    return "\n".join(lines)
