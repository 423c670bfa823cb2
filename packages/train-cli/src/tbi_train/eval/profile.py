"""Efficiency profile of a VLM per input resolution, against the vanilla tower (seed 001's efficiency criteria).

For each square resolution R (pixels per side) and for two pipelines — the candidate (the experiment's or
checkpoint's tower, with 2D-RoPE and window attention when it asks for them) and the baseline (by default the
same projector and LM behind the vanilla tower: no RoPE, no windows, absolute positions interpolated):

    pixels [1, 3, R, R] -> tower -> features [1, h·w, C] -> projector -> tokens [1, M, D]
                        -> LM prefill over M visual + T text tokens (logits of the last position)

it measures FLOPs per stage (`torch.utils.flop_counter`, cross-checked by the formulas of
`tbi_train.eval.flops`), visual tokens M, peak activation memory of the whole pipeline and median latency
per stage; with a memory budget, the largest resolution whose weights + peak activations fit, found by
measurement. Seed 001's three efficiency criteria are then evaluated from these numbers:

| criterion | target | met when |
|---|---|---|
| vision FLOPs | ≤ 70% of vanilla | measured tower FLOPs ratio ≤ 0.70 at every profiled resolution |
| max practical resolution | ≥ 2× vanilla | largest fitting side (measured) ≥ 2× the baseline's |
| tokens per image | ≤ 80% of current | measured visual tokens ratio ≤ 0.80 at every profiled resolution |

Peak memory on the CPU is the torch allocator's high-water mark over the pass, replayed from the profiler's
allocation events (`torch.profiler.profile(profile_memory=True)`: every allocation and free, scratch inside
kernels included, in time order). tracemalloc cannot see torch's C++ allocations, and a process's RSS keeps
freed pages and the import/model-building peaks (it would need a fresh child process per measurement and is
noisy on a shared machine). On CUDA it is `torch.cuda.max_memory_allocated` over the pass.
"""

from __future__ import annotations

import copy
import csv
import dataclasses
import inspect
import logging
import os
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
from torch import nn

from tbi_train.errors import TrainError
from tbi_train.eval.flops import (
    count_flops,
    lm_prefill_flops,
    lm_shape,
    projector_flops,
    tower_shape,
    vit_flops,
)

__all__ = [
    "Criterion",
    "EfficiencyProfile",
    "MaxResolution",
    "ResolutionProfile",
    "TowerVariant",
    "peak_memory_bytes",
    "profile_efficiency",
]

logger = logging.getLogger(__name__)

FLOPS_TARGET = 0.70
"""Seed 001: inference FLOPs <= 70% of vanilla InternViT at the same resolution."""
RESOLUTION_TARGET = 2.0
"""Seed 001: max practical resolution >= 2x improvement."""
TOKENS_TARGET = 0.80
"""Seed 001: tokens per image <= 80% of current."""

_MEMORY_METHOD_CPU = "torch profiler allocation events (torch CPU allocator high-water mark)"
_MEMORY_METHOD_CUDA = "torch.cuda.max_memory_allocated"
_FLOP_METHOD = "torch.utils.flop_counter.FlopCounterMode (+ CPU flash attention), matmul FLOPs"


@dataclass(frozen=True)
class TowerVariant:
    """How the candidate's tower is modernised (seed 001 section 4: 8×8 windows, 4 global layers of 45)."""

    rope: bool = False
    """2D-RoPE instead of absolute position embeddings."""
    window: int = 0
    """Window side in patches; 0: every layer global."""
    global_layers: tuple[int, ...] = ()
    """0-based global-attention layers when `window` > 0."""

    @property
    def vanilla(self) -> bool:
        return not self.rope and not self.window

    def describe(self) -> str:
        if self.vanilla:
            return "vanilla (absolute positions, global attention)"
        parts = ["2D-RoPE"] if self.rope else []
        if self.window:
            parts.append(f"{self.window}x{self.window} windows, global layers {list(self.global_layers)}")
        return ", ".join(parts)


@dataclass(frozen=True)
class ResolutionProfile:
    """Measurements of one pipeline at one square resolution (FLOPs are per image)."""

    resolution: int
    grid: tuple[int, int]
    visual_tokens: int
    """Tokens the projector emitted (the measured output length)."""
    vision_flops: int
    vision_flops_formula: int | None
    projector_flops: int
    projector_flops_formula: int | None
    lm_prefill_flops: int
    lm_prefill_flops_formula: int | None
    peak_activation_bytes: int
    """Peak memory of the whole pass above what was allocated before it."""
    vision_ms: float
    projector_ms: float
    lm_prefill_ms: float

    @property
    def total_flops(self) -> int:
        return self.vision_flops + self.projector_flops + self.lm_prefill_flops


@dataclass(frozen=True)
class MaxResolution:
    """The largest square side (pixels) whose weights + peak activations fit the budget, by measurement."""

    resolution: int
    """Largest side measured to fit (0: not even one patch fits)."""
    kind: Literal["exact", "at_least"]
    """exact: `resolution` fits and `resolution + step` was measured not to; at_least: the search stopped at
    the largest profiled resolution, which fits."""
    step: int
    """Search granularity in pixels (the patch size)."""
    probes: tuple[tuple[int, int], ...] = ()
    """(side, total bytes) of every measurement the search made."""

    def monotone(self, budget: int) -> bool:
        """Whether every probed side up to `resolution` fit (False: memory is not monotone in the side, e.g.
        edge windows that need extra copies, so a smaller side can need more than `resolution`)."""
        return all(b <= budget for s, b in self.probes if s <= self.resolution)


@dataclass(frozen=True)
class Criterion:
    """One of seed 001's efficiency criteria, evaluated from measured numbers."""

    name: str
    target: str
    status: Literal["met", "not met", "undetermined"]
    value: str
    """The measured ratio(s) the status is based on."""
    detail: str


@dataclass
class EfficiencyProfile:
    """The profile: candidate and baseline rows per resolution, budget search, criteria."""

    target: str
    candidate: str
    baseline: str
    resolutions: tuple[int, ...]
    text_length: int
    repeats: int
    device: str
    candidate_rows: list[ResolutionProfile]
    baseline_rows: list[ResolutionProfile]
    candidate_weight_bytes: int
    baseline_weight_bytes: int
    memory_budget_bytes: int | None
    candidate_max: MaxResolution | None
    baseline_max: MaxResolution | None
    criteria: list[Criterion]
    memory_method: str
    flop_method: str = _FLOP_METHOD
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        """JSON-able dict (every number as measured; ratios under `criteria`)."""
        out = dataclasses.asdict(self)
        for key in ("candidate_rows", "baseline_rows"):
            for row, obj in zip(out[key], getattr(self, key)):
                row["total_flops"] = obj.total_flops
        for key in ("candidate_max", "baseline_max"):
            found = getattr(self, key)
            if found is not None and self.memory_budget_bytes is not None:
                out[key]["monotone"] = found.monotone(self.memory_budget_bytes)
        return out

    def rows(self) -> list[dict]:
        """One flat dict per (pipeline, resolution): the CSV rows."""
        out = []
        for name, rows in (("candidate", self.candidate_rows), ("baseline", self.baseline_rows)):
            for r in rows:
                row = {"pipeline": name, **dataclasses.asdict(r), "total_flops": r.total_flops}
                row["grid"] = f"{r.grid[0]}x{r.grid[1]}"
                out.append(row)
        return out

    def write_csv(self, path: str | Path) -> Path:
        """Write `rows()` to `path` (temp file, then rename)."""
        path = Path(path)
        rows = self.rows()
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
        try:
            with os.fdopen(fd, "w", newline="") as handle:
                writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
                writer.writeheader()
                writer.writerows(rows)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return path

    def table(self):
        """A rich Table: one row per resolution and pipeline, the criteria in the caption."""
        from rich.table import Table

        table = Table(title=f"Efficiency profile: {self.target}")
        for col in ("side", "pipeline", "tokens", "vision GFLOPs", "proj GFLOPs", "LM prefill GFLOPs",
                    "peak MiB", "vision ms", "proj ms", "LM ms"):  # fmt: skip
            table.add_column(col, justify="left" if col == "pipeline" else "right")
        base = {r.resolution: r for r in self.baseline_rows}
        for row in self.candidate_rows:
            for name, r in (("candidate", row), ("baseline", base[row.resolution])):
                table.add_row(
                    str(r.resolution),
                    name,
                    str(r.visual_tokens),
                    f"{r.vision_flops / 1e9:.3f}",
                    f"{r.projector_flops / 1e9:.3f}",
                    f"{r.lm_prefill_flops / 1e9:.3f}",
                    f"{r.peak_activation_bytes / 2**20:.1f}",
                    f"{r.vision_ms:.1f}",
                    f"{r.projector_ms:.1f}",
                    f"{r.lm_prefill_ms:.1f}",
                )
        table.caption = "; ".join(f"{c.name}: {c.status} ({c.value})" for c in self.criteria)
        return table

    def criteria_table(self):
        """A rich Table of seed 001's three criteria (met / not met / undetermined)."""
        from rich.table import Table

        table = Table(title="Seed 001 efficiency criteria")
        for col in ("criterion", "target", "measured", "status", "detail"):
            table.add_column(col)
        for c in self.criteria:
            table.add_row(c.name, c.target, c.value, c.status, c.detail)
        return table


def peak_memory_bytes(fn: Callable[[], object], device: torch.device | str = "cpu") -> int:
    """Peak bytes allocated by torch while `fn()` runs, above what was allocated when it started.

    CPU: the profiler's allocation/free events replayed in time order (scratch inside kernels included);
    CUDA: `torch.cuda.max_memory_allocated` around the call.
    """
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        start = torch.cuda.memory_allocated(device)
        fn()
        torch.cuda.synchronize(device)
        return int(torch.cuda.max_memory_allocated(device) - start)
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = sorted(
        (e.start_ns(), e.nbytes())
        for e in prof.profiler.kineto_results.events()
        if e.name() == "[memory]" and e.device_type() == torch.autograd.DeviceType.CPU
    )
    running = peak = 0
    for _, delta in events:
        running += delta
        peak = max(peak, running)
    return int(peak)


# ---- the pipeline ----------------------------------------------------------------------------------------


@dataclass
class _Pipeline:
    """Tower + projector + LM as measured here (plain modules, eval mode, adapters merged)."""

    tower: nn.Module
    projector: nn.Module
    lm: nn.Module
    feature_layers: tuple[int, ...]
    variant: TowerVariant
    tower_kwargs: dict = field(default_factory=dict)

    def weight_bytes(self) -> int:
        seen, total = set(), 0
        for module in (self.tower, self.projector, self.lm):
            for t in [*module.parameters(), *module.buffers()]:
                if id(t) not in seen:
                    seen.add(id(t))
                    total += t.numel() * t.element_size()
        return total

    def vision(self, pixels: torch.Tensor, grid: tuple[int, int]) -> list[torch.Tensor]:
        out = self.tower(pixel_values=pixels, output_hidden_states=True, **self.tower_kwargs)
        patches = grid[0] * grid[1]
        feats = []
        for layer in self.feature_layers:
            hidden = out.hidden_states[layer]  # [1, prefix + h*w, C]
            feats.append(hidden[:, hidden.shape[1] - patches :])  # [1, h*w, C]
        return feats

    def project(self, feats: list[torch.Tensor], grid: tuple[int, int]) -> torch.Tensor:
        if getattr(self.projector, "multi_scale", False):
            return self.projector(feats, grid=[grid] * len(feats)).tokens  # [1, M, D]
        return self.projector(feats[0], grid=grid).tokens  # [1, M, D]

    def prefill(self, tokens: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        embeds = self.lm.get_input_embeddings()(text)  # [1, T, D]
        embeds = torch.cat([tokens.to(embeds.dtype), embeds], dim=1)  # [1, M + T, D]
        return self.lm(inputs_embeds=embeds, use_cache=False, logits_to_keep=1).logits  # [1, 1, V]


def _patch_size(tower: nn.Module) -> int:
    patch = getattr(tower.config, "patch_size", None)
    patch = patch[0] if isinstance(patch, list | tuple) else patch
    if not isinstance(patch, int):
        raise TrainError(
            f"the {type(tower).__name__} tower has no integer config.patch_size; it is not a ViT."
        )
    return patch


def _inputs(pipe: _Pipeline, side: int, text_length: int, device: torch.device, seed: int):
    """(grid, a random image [1, 3, side, side], random text ids [1, T]) for one measurement."""
    patch = _patch_size(pipe.tower)
    gen = torch.Generator().manual_seed(seed)
    pixels = torch.randn(1, 3, side, side, generator=gen).to(device)
    vocab = pipe.lm.get_input_embeddings().num_embeddings
    text = torch.randint(0, vocab, (1, text_length), generator=gen).to(device)
    return (side // patch, side // patch), pixels, text


def _measure(pipe: _Pipeline, side: int, text_length: int, repeats: int, device: torch.device, seed: int):
    grid, pixels, text = _inputs(pipe, side, text_length, device, seed)

    with torch.inference_mode():
        v_flops, _ = count_flops(lambda: pipe.vision(pixels, grid))
        feats = pipe.vision(pixels, grid)
        p_flops, _ = count_flops(lambda: pipe.project(feats, grid))
        tokens = pipe.project(feats, grid)
        l_flops, _ = count_flops(lambda: pipe.prefill(tokens, text))
        times = {"vision": [], "projector": [], "lm": []}
        for _ in range(repeats):
            times["vision"].append(_timed(lambda: pipe.vision(pixels, grid), device))
            times["projector"].append(_timed(lambda: pipe.project(feats, grid), device))
            times["lm"].append(_timed(lambda: pipe.prefill(tokens, text), device))
        peak = peak_memory_bytes(
            lambda: pipe.prefill(pipe.project(pipe.vision(pixels, grid), grid), text), device
        )

    try:
        v_formula = vit_flops(tower_shape(pipe.tower), grid)
    except TrainError:
        v_formula = None
    return ResolutionProfile(
        resolution=side,
        grid=grid,
        visual_tokens=int(tokens.shape[1]),
        vision_flops=v_flops,
        vision_flops_formula=v_formula,
        projector_flops=p_flops,
        projector_flops_formula=projector_flops(pipe.projector, grid)
        if len(pipe.feature_layers) == 1
        else None,
        lm_prefill_flops=l_flops,
        lm_prefill_flops_formula=lm_prefill_flops(lm_shape(pipe.lm), int(tokens.shape[1]) + text_length),
        peak_activation_bytes=peak,
        vision_ms=statistics.median(times["vision"]),
        projector_ms=statistics.median(times["projector"]),
        lm_prefill_ms=statistics.median(times["lm"]),
    )


def _timed(fn: Callable[[], object], device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return (time.perf_counter() - start) * 1e3


def _total_bytes(pipe: _Pipeline, side: int, text_length: int, device: torch.device, seed: int) -> int:
    grid, pixels, text = _inputs(pipe, side, text_length, device, seed)
    with torch.inference_mode():
        peak = peak_memory_bytes(
            lambda: pipe.prefill(pipe.project(pipe.vision(pixels, grid), grid), text), device
        )
    return pipe.weight_bytes() + peak


def _max_resolution(
    pipe: _Pipeline,
    measured: dict[int, int],
    budget: int,
    text_length: int,
    device: torch.device,
    seed: int,
    max_probes: int,
) -> MaxResolution:
    """Bisection by measurement between the largest fitting and the smallest non-fitting side.

    Assumes memory grows with the side (true of every tower here); `measured` maps profiled sides to
    total bytes (weights + peak activations).
    """
    step = _patch_size(pipe.tower)
    probes = dict(measured)
    fits = [s for s, b in probes.items() if b <= budget]
    over = [s for s, b in probes.items() if b > budget]
    if not over:
        return MaxResolution(max(fits), "at_least", step, tuple(sorted(probes.items())))
    hi = min(over) // step
    lo = max((s for s in fits if s < hi * step), default=0) // step
    for _ in range(max_probes):
        if hi - lo <= 1:
            break
        mid = (lo + hi) // 2
        probes[mid * step] = _total_bytes(pipe, mid * step, text_length, device, seed)
        if probes[mid * step] <= budget:
            lo = mid
        else:
            hi = mid
    if hi - lo > 1:
        # out of probes: report what was shown to fit, as a lower bound
        return MaxResolution(lo * step, "at_least", step, tuple(sorted(probes.items())))
    return MaxResolution(lo * step, "exact", step, tuple(sorted(probes.items())))


# ---- building the two pipelines ---------------------------------------------------------------------------


def _seed001_variant(num_layers: int, window: int, num_global: int | None) -> TowerVariant:
    from tbi_vision_rope import default_global_layers

    if num_global is None:  # seed 001: 4 global layers of 45, the same share on other depths
        num_global = max(1, round(4 * num_layers / 45))
    return TowerVariant(True, window, tuple(default_global_layers(num_layers, num_global)))


def _merge_adapters(module: nn.Module) -> None:
    """Fold LoRA/DoRA adapters into their base weights: inference runs merged, without the adapter matmuls."""
    for child in module.modules():
        if hasattr(child, "merge") and hasattr(child, "lora_A") and not getattr(child, "merged", True):
            child.merge()


def _tower_kwargs(tower: nn.Module) -> dict:
    params = inspect.signature(type(tower).forward).parameters
    return {"interpolate_pos_encoding": True} if "interpolate_pos_encoding" in params else {}


def _as_pipeline(tower: nn.Module, projector: nn.Module, lm: nn.Module, feature_layers, variant) -> _Pipeline:
    """The measured pipeline; a vanilla tower is modernised (on a copy) when `variant` asks for it."""
    info = getattr(tower, "tbi_vision_rope", None)
    if info is None and variant is not None and not variant.vanilla:
        from tbi_vision_rope import modernize

        tower = modernize(
            copy.deepcopy(tower),
            rope=variant.rope,
            window=variant.window,
            global_layers=list(variant.global_layers) if variant.window else None,
        )
    info = getattr(tower, "tbi_vision_rope", None)
    if info is not None:
        variant = TowerVariant(
            info.rope is not None, info.window, tuple(info.global_layers) if info.window else ()
        )
    if getattr(projector, "multi_scale", False) and len(feature_layers) < 2:
        raise TrainError(
            f"the {projector.name} projector reads several tower layers but the model names only "
            f"{list(feature_layers)}; set model.vision.feature_layers."
        )
    for part in (tower, projector, lm):
        _merge_adapters(part)
        part.eval()
    return _Pipeline(
        tower, projector, lm, tuple(feature_layers), variant or TowerVariant(), _tower_kwargs(tower)
    )


def _vanilla_of(pipe: _Pipeline) -> _Pipeline:
    """The same projector and LM behind a fresh vanilla tower of the same architecture (random weights)."""
    tower = type(pipe.tower)(pipe.tower.config).to(next(pipe.tower.parameters()).device).eval()
    return dataclasses.replace(pipe, tower=tower, variant=TowerVariant(), tower_kwargs=_tower_kwargs(tower))


def _load(
    target, preset: str | None, seed: int, window: int, num_global: int | None
) -> tuple[str, _Pipeline]:
    """(label, pipeline) of a VLM, a RunConfig/ModelConfig, a saved-model folder or an experiment id."""
    from tbi_train.model import VLM, load_vlm

    if isinstance(target, VLM):
        layers = tuple(getattr(target.config.vision, "feature_layers", ()) or (target.vision.feature_layer,))
        return "model", _as_pipeline(target.vision.model, target.projector, target.lm, layers, None)
    from tbi_train.config import ModelConfig, RunConfig

    if isinstance(target, RunConfig | ModelConfig):
        cfg = target.model if isinstance(target, RunConfig) else target
        wants = (
            bool(getattr(cfg.vision, "rope_2d", False)),
            bool(getattr(cfg.vision, "window_attention", False)),
        )
        layers = tuple(getattr(cfg.vision, "feature_layers", ()) or ())
        return "config", _from_config(cfg, seed, layers, wants, window, num_global)
    path = Path(str(target))
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise TrainError(f"{path} has no config.json: pass a saved model folder or an experiment id.")
        vlm = load_vlm(path)
        vision_cfg = vlm.config.vision
        wants = (
            bool(getattr(vision_cfg, "rope_2d", False)),
            bool(getattr(vision_cfg, "window_attention", False)),
        )
        layers = tuple(getattr(vision_cfg, "feature_layers", ()) or (vlm.vision.feature_layer,))
        variant = _variant_for(vlm.vision.model, wants, window, num_global)
        return str(path), _as_pipeline(vlm.vision.model, vlm.projector, vlm.lm, layers, variant)
    from tbi_train.experiments import find_experiment, resolve_experiment

    suite, exp = find_experiment(str(target))
    cfg = resolve_experiment(f"{suite.name}/{exp.id}", preset=preset, seed=seed).config.model
    wants = exp.vision.rope_2d, exp.vision.window_attention
    pipe = _from_config(cfg, seed, (), wants, window, num_global, exp.vision.multi_scale)
    return f"{suite.name}/{exp.id}", pipe


def _from_config(
    cfg,
    seed: int,
    layers: tuple[int, ...],
    wants,
    window: int,
    num_global: int | None,
    layers_at_24: tuple[int, ...] = (),
) -> _Pipeline:
    """Random-init (or local-checkpoint) parts of a ModelConfig; no tokenizer is needed to profile.

    `layers_at_24`: multi-scale taps given at a 24-layer tower's depth (an experiment's `multi_scale`).
    """
    from tbi_projectors import ProjectorError, build_projector
    from tbi_train.model.lm import build_lm
    from tbi_train.model.vision import build_vision_tower

    torch.manual_seed(seed)
    vision = build_vision_tower(cfg.vision, trust_remote_code=cfg.lm.trust_remote_code)
    # a random LM gets the vocabulary size its trained BPE would have
    lm = build_lm(cfg.lm, vocab_size=cfg.tokenizer.vocab_size if cfg.lm.path is None else 0)
    try:
        projector = build_projector(
            cfg.projector.name,
            input_dim=vision.hidden_size,
            output_dim=lm.config.hidden_size,
            **dict(cfg.projector.options),
        )
    except (ProjectorError, TypeError) as exc:
        raise TrainError(
            f"model.projector ({cfg.projector.name}): {exc}; fix model.projector.options."
        ) from exc
    variant = _variant_for(vision.model, wants, window, num_global)
    if layers_at_24:
        depth = int(vision.model.config.num_hidden_layers)
        layers = tuple(sorted({max(1, round(i * depth / 24)) for i in layers_at_24}))
    return _as_pipeline(vision.model, projector, lm, layers or (vision.feature_layer,), variant)


def _variant_for(tower: nn.Module, wants: tuple[bool, bool], window: int, num_global: int | None):
    rope, windows = wants
    if not rope and not windows:
        return None
    layers = int(tower.config.num_hidden_layers)
    variant = _seed001_variant(layers, window if windows else 0, num_global)
    return TowerVariant(rope, variant.window, variant.global_layers if windows else ())


def _criteria(
    cand: list[ResolutionProfile],
    base: list[ResolutionProfile],
    cand_max: MaxResolution | None,
    base_max: MaxResolution | None,
    budget: int | None,
) -> list[Criterion]:
    flops = {c.resolution: c.vision_flops / b.vision_flops for c, b in zip(cand, base)}
    tokens = {c.resolution: c.visual_tokens / b.visual_tokens for c, b in zip(cand, base)}
    out = [
        _per_resolution("vision FLOPs vs vanilla", f"<= {FLOPS_TARGET:.0%}", flops, FLOPS_TARGET),
        _resolution_criterion(cand_max, base_max, budget),
        _per_resolution("tokens per image vs baseline", f"<= {TOKENS_TARGET:.0%}", tokens, TOKENS_TARGET),
    ]
    return out


def _per_resolution(name: str, target: str, ratios: dict[int, float], limit: float) -> Criterion:
    passing = [r for r, v in ratios.items() if v <= limit]
    failing = [r for r, v in ratios.items() if v > limit]
    value = ", ".join(f"{r}px {v:.1%}" for r, v in ratios.items())
    detail = f"met at {passing or 'none'}; not met at {failing or 'none'}"
    return Criterion(name, target, "met" if not failing else "not met", value, detail)


def _resolution_criterion(
    cand: MaxResolution | None, base: MaxResolution | None, budget: int | None
) -> Criterion:
    criterion = _resolution_status(cand, base)
    if cand is None or base is None or budget is None:
        return criterion
    odd = [name for name, m in (("candidate", cand), ("baseline", base)) if not m.monotone(budget)]
    if not odd:
        return criterion
    note = f" Memory is not monotone in the side for the {' and '.join(odd)} (a smaller probed side did not fit)."
    return dataclasses.replace(criterion, detail=criterion.detail + note)


def _resolution_status(cand: MaxResolution | None, base: MaxResolution | None) -> Criterion:
    name, target = "max practical resolution vs vanilla", f">= {RESOLUTION_TARGET:g}x (side)"
    if cand is None or base is None:
        return Criterion(name, target, "undetermined", "n/a", "no memory budget given (--memory-budget GB).")
    if base.resolution == 0:
        return Criterion(
            name, target, "undetermined", "baseline fits nothing", "the baseline does not fit even one patch."
        )
    ratio = cand.resolution / base.resolution
    value = f"{cand.resolution}px ({cand.kind}) / {base.resolution}px ({base.kind}) = {ratio:.2f}x"
    if base.kind == "exact" and ratio >= RESOLUTION_TARGET:
        return Criterion(name, target, "met", value, "the candidate fits at least twice the baseline's side.")
    if cand.kind == "exact" and ratio < RESOLUTION_TARGET:
        bound = (
            ""
            if base.kind == "exact"
            else " (the baseline's side is a lower bound, so the ratio is at most this)"
        )
        return Criterion(
            name, target, "not met", value, f"the candidate's largest fitting side is below 2x{bound}."
        )
    return Criterion(
        name,
        target,
        "undetermined",
        value,
        "a search stopped at the largest profiled side: add larger --resolutions or lower the budget.",
    )


def profile_efficiency(
    target,
    resolutions: Sequence[int] = (448, 896, 1344, 1792),
    *,
    memory_budget_gb: float | None = None,
    baseline=None,
    preset: str | None = None,
    seed: int = 42,
    text_length: int = 64,
    repeats: int = 3,
    window: int = 8,
    num_global_layers: int | None = None,
    device: str = "cpu",
    max_probes: int = 6,
) -> EfficiencyProfile:
    """Profile `target` against the vanilla tower at square `resolutions` (what `tbi profile` runs).

    Args:
        target: an experiment id (`SUITE/ID` or a bare id, e.g. `internvit-next/A2`), a saved model folder
            (`save_vlm` / a run's checkpoint), a `VLM`, or a `RunConfig` / `ModelConfig` (random-init parts).
        resolutions: image sides in pixels; each must be a multiple of the tower's patch size.
        memory_budget_gb: search the largest side whose weights + peak activations fit (GiB = 2**30 bytes).
        baseline: another target to compare with; None: the candidate's projector and LM behind a fresh
            vanilla tower of the same architecture (no RoPE, no windows).
        preset: preset an experiment id is resolved on (None: the suite's own; `tiny` on a CPU).
        seed: seed of the random-init weights and of the random image and text.
        text_length: text tokens after the visual tokens in the LM prefill.
        repeats: timed runs per stage; latency is their median (after one untimed run).
        window, num_global_layers: the window side in patches and the number of global layers used when the
            target asks for window attention and its tower is not modernised yet (default: seed 001's
            8x8 windows and 4 global layers of 45, the same share on other depths, at least one).
        device: "cpu" or "cuda".
        max_probes: extra measurements the budget search may make per pipeline.

    Raises:
        TrainError: bad resolutions, targets, budgets (the message says which and how to fix it).
    """
    if not resolutions or any(int(r) != r or r <= 0 for r in resolutions):
        raise TrainError(
            f"--resolutions {list(resolutions)}: pass positive pixel sides, e.g. 448,896,1344,1792."
        )
    if memory_budget_gb is not None and memory_budget_gb <= 0:
        raise TrainError(f"--memory-budget {memory_budget_gb}: pass a positive size in GB.")
    if repeats < 1:
        raise TrainError(f"repeats={repeats}: time at least one run.")
    dev = torch.device(device)
    label, cand = _load(target, preset, seed, window, num_global_layers)
    if baseline is None:
        base = _vanilla_of(cand)
        base_label = "vanilla tower + the same projector and LM"
    else:
        base_label, base = _load(baseline, preset, seed, window, num_global_layers)
    for pipe in (cand, base):
        for part in (pipe.tower, pipe.projector, pipe.lm):
            part.to(dev)
    sides = sorted({int(r) for r in resolutions})
    for pipe, name in ((cand, "target"), (base, "baseline")):
        patch = _patch_size(pipe.tower)
        bad = [r for r in sides if r % patch]
        if bad:
            raise TrainError(
                f"--resolutions {bad} are not multiples of the {name} tower's patch size {patch}; "
                f"use e.g. {[max(patch, r // patch * patch) for r in bad]}."
            )
    rows = {}
    for pipe, name in ((cand, "candidate"), (base, "baseline")):
        rows[name] = []
        for side in sides:
            logger.info("profiling the %s at %dpx", name, side)
            rows[name].append(_measure(pipe, side, text_length, repeats, dev, seed))
    budget = None if memory_budget_gb is None else int(memory_budget_gb * 2**30)
    maxes = {"candidate": None, "baseline": None}
    if budget is not None:
        for pipe, name in ((cand, "candidate"), (base, "baseline")):
            measured = {r.resolution: pipe.weight_bytes() + r.peak_activation_bytes for r in rows[name]}
            maxes[name] = _max_resolution(pipe, measured, budget, text_length, dev, seed, max_probes)
    notes = []
    if dev.type == "cpu":
        notes.append("latency on the CPU of a shared machine: compare ratios, not absolute times.")
    return EfficiencyProfile(
        target=label,
        candidate=cand.variant.describe(),
        baseline=f"{base_label}: {base.variant.describe()}",
        resolutions=tuple(sides),
        text_length=text_length,
        repeats=repeats,
        device=str(dev),
        candidate_rows=rows["candidate"],
        baseline_rows=rows["baseline"],
        candidate_weight_bytes=cand.weight_bytes(),
        baseline_weight_bytes=base.weight_bytes(),
        memory_budget_bytes=budget,
        candidate_max=maxes["candidate"],
        baseline_max=maxes["baseline"],
        criteria=_criteria(
            rows["candidate"], rows["baseline"], maxes["candidate"], maxes["baseline"], budget
        ),
        memory_method=_MEMORY_METHOD_CUDA if dev.type == "cuda" else _MEMORY_METHOD_CPU,
        notes=notes,
    )
