"""Attention and token maps of a VLM on a fixed, seeded set of samples; attention entropy per vision layer.

For each sample (its first image or frame) `record_maps` keeps:

- vision: the tower's attention probabilities P [H_sel, T, T] of the chosen layers and heads, computed from
  hooked q/k (`eval._hooks`; windows and 2D-RoPE of modernised towers included: zero outside a window);
- projector: `out.attention` (Perceiver / query-attn cross-attention [M, N], foveated-query maps [T, N] of
  the coarse pass and of the LM-query fine pass, pyramid-drop masses [ΣN_s], adaptive-compression block
  densities), the pooling region of every output token of adaptive-pooling projectors (c-abstractor, ldp:
  [M, N], row m = the weights of output cell m over the input patches), and the kept-token mask [N_in] of
  projectors that drop tokens (from `out.kept_indices`);
- lm_drop: the image tokens the in-LM PyramidDrop keeps after each stage, [N_image_tokens] bool per stage.

`save_maps` writes maps.safetensors + index.json + heatmap PNGs (attention received per patch averaged over
queries and the chosen heads; the attention of one query patch; projector maps; kept-token masks) into a
folder, atomically. `attention_entropy` gives, per vision layer l, the mean over images, heads and query
tokens i of H_i = -Σ_j P_ij log P_ij (nats), which training logs at evaluation points (seed 003 Fig 6).
"""

from __future__ import annotations

import copy
import json
import random
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from tbi_train.errors import TrainError
from tbi_train.eval._hooks import AttentionCapture, attention_layers

__all__ = [
    "SampleMaps",
    "attention_entropy",
    "entropy",
    "make_maps",
    "record_maps",
    "render_maps",
    "save_maps",
    "select_samples",
]

FORMAT_VERSION = 1
_POOLING_PROJECTORS = ("c-abstractor", "ldp")
"""Projectors that average-pool the patch grid to `output_grid` (adaptive_avg_pool2d)."""


@dataclass
class SampleMaps:
    """The maps of one sample (its first image or frame)."""

    sample_id: str
    """The sample's id."""
    image: np.ndarray
    """[H, W, 3] uint8: the image as the tower saw it (normalisation undone)."""
    grid: tuple[int, int]
    """Patch grid (h, w) of the tower."""
    num_prefix: int
    """Tokens before the patches in the tower's sequence (CLS/registers); T = num_prefix + h·w."""
    heads: list[int]
    """Heads kept in `vision` (indexes into the tower's heads)."""
    vision: dict[int, torch.Tensor] = field(default_factory=dict)
    """layer -> attention probabilities [len(heads), T, T] (rows: queries, columns: keys)."""
    windows: dict[int, int] = field(default_factory=dict)
    """layer -> window side in patches (0: global attention over the image)."""
    projector: dict[str, torch.Tensor] = field(default_factory=dict)
    """attention / fine_attention / pooling / kept_indices / kept_mask (see the module docstring)."""
    projector_grid: tuple[int, int] | None = None
    """Grid of the projector's output tokens (for the LM drop masks), or None."""
    lm_drop: list[torch.Tensor] = field(default_factory=list)
    """Per in-LM PyramidDrop stage: kept mask [N_image_tokens] bool."""


def entropy(probs: torch.Tensor) -> torch.Tensor:
    """-Σ_j p_j log p_j over the last axis (0 log 0 = 0), in float64 when the input is float64."""
    return -torch.special.xlogy(probs, probs).sum(dim=-1)


def select_samples(count: int, n: int, seed: int) -> list[int]:
    """`n` sample indexes out of `count`, drawn without replacement by `random.Random(seed)`, sorted."""
    if n < 1:
        raise TrainError(f"--samples {n}: ask for at least one sample.")
    if count == 0:
        raise TrainError("the validation set is empty; pass --data with samples to map.")
    return sorted(random.Random(seed).sample(range(count), min(n, count)))


def _collator(vlm):
    from tbi_train.data import Collator

    return Collator(
        vlm.tokenizer,
        vlm.image_transform,
        vlm.tokens_per_image,
        image_token=vlm.config.tokenizer.image_pad_token,
    )


def _pixels(collator, sample) -> tuple[torch.Tensor, list[int]]:
    """[N_img, 3, H, W] pixel values of a prepared sample and its frames per placeholder."""
    frames = list(sample.meta.get("media_frames", [1] * len(sample.images)))
    pixels = collator.transform_images(sample.images)
    values = collator.pixel_inputs(pixels)["pixel_values"]
    if values.dim() != 4:
        raise TrainError(
            "attention maps need fixed-size images [N, 3, H, W]; packed native-resolution towers "
            "(Qwen2.5-VL) are not supported."
        )
    return values, frames


def attention_entropy(vlm, samples: Sequence, batch_size: int = 8) -> dict[str, float]:
    """Mean attention entropy (nats) of every vision layer on the images of `samples`: {"0": H_0, ...}.

    H_l = mean over images, heads h and query tokens i (prefix tokens included) of -Σ_j P_hij log P_hij.
    One image's [H, T, T] is held at a time. The model's training mode is restored afterwards.
    """
    collator = _collator(vlm)
    sums: dict[int, float] = {}
    counts: dict[int, int] = {}

    def sink(layer: int, _b: int, probs: torch.Tensor) -> None:
        sums[layer] = sums.get(layer, 0.0) + float(entropy(probs).mean())
        counts[layer] = counts.get(layer, 0) + 1

    try:
        capture = AttentionCapture(_tower(vlm), sink, None, grid=getattr(vlm.vision, "grid", None))
        images = [image for s in samples for image in _pixels(collator, collator.prepare(s))[0]]
    except TrainError as exc:
        raise TrainError(f"eval.attention_entropy: {exc} Or set eval.attention_entropy=false.") from exc
    was_training = vlm.training
    vlm.eval()
    device = next(vlm.parameters()).device
    try:
        with torch.no_grad(), capture:
            for start in range(0, len(images), batch_size):
                vlm.vision(torch.stack(images[start : start + batch_size]).to(device))
    finally:
        vlm.train(was_training)
    return {str(layer): sums[layer] / counts[layer] for layer in sorted(sums)}


def _tower(vlm):
    """The transformers vision model inside the VLM's tower wrapper."""
    return getattr(vlm.vision, "model", vlm.vision)


def _as_uint8(pixel_values: torch.Tensor, transform) -> np.ndarray:
    """[3, H, W] normalised pixels -> [H, W, 3] uint8 (the transform's mean/std undone when it has them)."""
    mean, std = getattr(transform, "mean", None), getattr(transform, "std", None)
    x = pixel_values.detach().float().cpu()
    if mean is not None and std is not None and len(mean) == 3 and len(std) == 3:
        x = x * torch.tensor(std).view(3, 1, 1) + torch.tensor(mean).view(3, 1, 1)
    else:
        x = (x - x.min()) / (x.max() - x.min()).clamp_min(1e-12)
    return (x.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()


def _pooling_matrix(grid: tuple[int, int], output_grid: tuple[int, int]) -> torch.Tensor:
    """[gh·gw, h·w]: adaptive_avg_pool2d applied to the one-hot map of every input patch."""
    h, w = grid
    eye = torch.eye(h * w, dtype=torch.float64).reshape(h * w, 1, h, w)
    pooled = torch.nn.functional.adaptive_avg_pool2d(eye, tuple(output_grid))  # [h*w, 1, gh, gw]
    return pooled.reshape(h * w, -1).T.contiguous()  # [gh*gw, h*w]


def _input_tokens(features) -> int:
    """Input tokens per frame the projector saw (summed over scales)."""
    maps = features if isinstance(features, list | tuple) else [features]
    return sum(int(f.shape[-2]) for f in maps)


@torch.no_grad()
def record_maps(
    vlm,
    samples: Sequence,
    layers: Sequence[int] | None = None,
    heads: Sequence[int] | None = None,
) -> list[SampleMaps]:
    """The maps of each sample (see the module docstring), one sample at a time, in eval mode.

    Args:
        vlm: a `tbi_train.model.VLM` with a CLIP / SigLIP / DINOv2 / InternViT tower (plain or modernised).
        samples: objects with id, images, conversations, meta (`tbi_train.data.Sample`).
        layers: 0-based tower layers (negative from the end); None: first, middle and last.
        heads: heads to keep; None: all.

    Raises:
        TrainError: unsupported tower, layers or heads out of range, a sample without an image.
    """
    modules = attention_layers(_tower(vlm))
    depth = len(modules)
    if layers is None:
        layers = sorted({0, depth // 2, depth - 1})
    num_heads = int(getattr(modules[0], "num_heads", None) or modules[0].num_attention_heads)
    heads = list(range(num_heads)) if heads is None else [int(h) for h in heads]
    bad = [h for h in heads if not 0 <= h < num_heads]
    if bad or not heads:
        raise TrainError(f"--heads {heads}: the tower has heads 0..{num_heads - 1}.")
    info = getattr(_tower(vlm), "tbi_vision_rope", None)
    collator = _collator(vlm)
    was_training = vlm.training
    vlm.eval()
    device = next(vlm.parameters()).device
    try:
        return [_record_one(vlm, collator, s, layers, heads, info, modules, device) for s in samples]
    finally:
        vlm.train(was_training)


def _record_one(vlm, collator, sample, layers, heads, info, modules, device) -> SampleMaps:
    prepared = collator.prepare(sample)
    if not prepared.images:
        raise TrainError(f"sample {sample.id!r} has no image; attention maps need image samples.")
    pixel_values, frames = _pixels(collator, prepared)
    prompt = collator.encode_prompt(
        prepared.conversations, frames, collator.media_tokens(list(pixel_values), frames)
    ).input_ids
    input_ids = torch.tensor([prompt], device=device)  # [1, L]
    attention_mask = torch.ones_like(input_ids)
    grid = tuple(vlm.vision.grid)
    vision: dict[int, torch.Tensor] = {}
    index = torch.tensor(heads)

    def sink(layer: int, b: int, probs: torch.Tensor) -> None:
        if b == 0:  # the first image/frame of the sample
            vision[layer] = probs[index.to(probs.device)].float().cpu()  # [H_sel, T, T]

    outputs, inputs = [], []

    def projector_hook(_module, args, kwargs, output):
        inputs.append(args[0] if args else kwargs["features"])
        outputs.append(output)

    handle = vlm.projector.register_forward_hook(projector_hook, with_kwargs=True)
    try:
        with AttentionCapture(_tower(vlm), sink, layers, grid=grid) as capture:
            embeds = vlm.embed(input_ids, pixel_values.to(device), attention_mask=attention_mask)  # [1, L, D]
    finally:
        handle.remove()
    num_prefix = next(iter(vision.values())).shape[-1] - grid[0] * grid[1]
    windows = {}
    for layer in capture.layers:
        module = modules[layer]
        is_global = info is None or info.window == 0 or bool(module.global_attention)
        windows[layer] = 0 if is_global else int(info.window)
    maps = SampleMaps(
        sample_id=str(sample.id),
        image=_as_uint8(pixel_values[0], vlm.image_transform),
        grid=grid,
        num_prefix=int(num_prefix),
        heads=list(heads),
        vision=vision,
        windows=windows,
    )
    _projector_maps(vlm, maps, inputs, outputs)
    if getattr(vlm, "pyramid_drop", None) is not None:
        maps.lm_drop = _lm_drop_masks(vlm, embeds, input_ids, attention_mask)
    return maps


def _projector_maps(vlm, maps: SampleMaps, inputs: list, outputs: list) -> None:
    """Row 0 of the projector's attention / kept indices (coarse pass, and the fine pass when there is one)."""
    first = outputs[0]
    per_frame = _input_tokens(inputs[0])
    if first.attention is not None:
        maps.projector["attention"] = first.attention[0].float().cpu()
    if len(outputs) > 1 and outputs[-1].attention is not None:
        maps.projector["fine_attention"] = outputs[-1].attention[0].float().cpu()
    if first.kept_indices is not None:
        kept = first.kept_indices[0].cpu()  # [M] into the frame-major input tokens
        kept = kept[kept >= 0]
        mask = torch.zeros(max([per_frame, *(kept + 1).tolist()]), dtype=torch.bool)
        mask[kept] = True
        maps.projector["kept_indices"] = kept
        maps.projector["kept_mask"] = mask[:per_frame]  # the first frame's input tokens
    config = getattr(vlm.projector, "config", None)
    if getattr(vlm.projector, "name", "") in _POOLING_PROJECTORS and hasattr(config, "output_grid"):
        maps.projector["pooling"] = _pooling_matrix(maps.grid, tuple(config.output_grid)).float()
    maps.projector_grid = tuple(first.grid) if first.grid is not None else None


def _lm_drop_masks(vlm, embeds, input_ids, attention_mask) -> list[torch.Tensor]:
    """Kept image tokens after each PyramidDrop stage: the drop truncated to stages 1..s is run for each s."""
    drop = vlm.pyramid_drop
    image = input_ids == vlm.image_pad_id  # [1, L]
    query = vlm.instruction_index(input_ids, attention_mask, image)  # [1]
    positions = torch.arange(input_ids.shape[1], device=input_ids.device).expand_as(input_ids)  # [1, L]
    image_positions = image[0].nonzero()[:, 0]  # [N_image]
    masks = []
    for stage in range(1, len(drop.layers) + 1):
        partial = copy.copy(drop)
        partial.layers = drop.layers[:stage]
        partial.rates = drop.rates[:stage]
        partial.keep_fractions = drop.keep_fractions[:stage]
        _, original, _ = partial.run(vlm.lm, embeds, attention_mask, image, query, positions)
        kept = original[0][original[0] >= 0]  # [L'] positions still in the sequence
        masks.append(torch.isin(image_positions, kept).cpu())  # [N_image]
    return masks


def _tensors(index: int, maps: SampleMaps) -> dict[str, torch.Tensor]:
    out = {f"{index}.image": torch.from_numpy(np.ascontiguousarray(maps.image))}
    for layer, probs in maps.vision.items():
        out[f"{index}.vision.layer{layer}"] = probs.contiguous()
    for name, value in maps.projector.items():
        out[f"{index}.projector.{name}"] = value.contiguous()
    for stage, mask in enumerate(maps.lm_drop, start=1):
        out[f"{index}.lm_drop.stage{stage}"] = mask.contiguous()
    return out


def save_maps(
    maps: list[SampleMaps],
    out: str | Path,
    query_patch: tuple[int, int] | None = None,
    meta: dict | None = None,
) -> Path:
    """Write `out/` = maps.safetensors + index.json + PNGs (into a temp folder, then renamed); return it."""
    from safetensors.torch import save_file

    out = Path(out)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        tensors: dict[str, torch.Tensor] = {}
        entries = []
        for i, m in enumerate(maps):
            tensors.update(_tensors(i, m))
            pngs = render_maps(m, tmp, prefix=f"{i:02d}", query_patch=query_patch)
            entries.append({
                "index": i, "id": m.sample_id, "grid": list(m.grid), "num_prefix": m.num_prefix,
                "heads": m.heads, "image": f"{i}.image",
                "vision": {str(layer): {"key": f"{i}.vision.layer{layer}", "window": m.windows[layer],
                                        "shape": list(p.shape)} for layer, p in m.vision.items()},
                "projector": {name: {"key": f"{i}.projector.{name}", "shape": list(v.shape)}
                              for name, v in m.projector.items()},
                "projector_grid": list(m.projector_grid) if m.projector_grid else None,
                "lm_drop": [f"{i}.lm_drop.stage{s}" for s in range(1, len(m.lm_drop) + 1)],
                "pngs": [p.name for p in pngs],
            })  # fmt: skip
        save_file(tensors, str(tmp / "maps.safetensors"))
        index = {"format_version": FORMAT_VERSION, **(meta or {}), "samples": entries}
        (tmp / "index.json").write_text(
            json.dumps(index, indent=2, ensure_ascii=False) + "\n", encoding="utf-8"
        )
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _panels(vector: torch.Tensor, grid: tuple[int, int]) -> list[np.ndarray]:
    """A per-token vector as maps: one [h, w] per scale when its length is a multiple of h·w, else the
    block grid of a factor-f merge (ceil(h/f) x ceil(w/f)), else one row."""
    v = vector.detach().double().cpu().numpy()
    h, w = grid
    if v.size % (h * w) == 0:
        return [p.reshape(h, w) for p in np.split(v, v.size // (h * w))]
    for f in range(2, max(h, w) + 1):
        bh, bw = -(-h // f), -(-w // f)
        if bh * bw == v.size:
            return [v.reshape(bh, bw)]
    return [v.reshape(1, -1)]


def _figure(panels: list[tuple[str, np.ndarray | None, np.ndarray | None]], image: np.ndarray, path: Path):
    """One row of panels: (title, heatmap or None, categorical map or None) over the image."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(2.2 * (len(panels) + 1), 2.4), dpi=80)
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(panels) + 1, squeeze=False)[0]
    height, width = image.shape[:2]
    axes[0].imshow(image)
    axes[0].set_title("image", fontsize=8)
    for ax, (title, heat, cats) in zip(axes[1:], panels):
        ax.imshow(image)
        if heat is not None:
            im = ax.imshow(
                heat, cmap="inferno", alpha=0.6, extent=(0, width, height, 0), interpolation="nearest"
            )
            fig.colorbar(im, ax=ax, fraction=0.046, pad=0.02)
        if cats is not None:
            ax.imshow(cats, cmap="tab20", alpha=0.55, extent=(0, width, height, 0), interpolation="nearest")
        ax.set_title(title, fontsize=8)
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    fig.savefig(path)
    return path


def render_maps(
    maps: SampleMaps, folder: str | Path, prefix: str = "00", query_patch: tuple[int, int] | None = None
) -> list[Path]:
    """Heatmap PNGs of one sample into `folder`; returns their paths.

    Per vision layer: attention received per patch (mean over the chosen heads and every query) and the
    attention of `query_patch` (row, column; default the centre patch), both over the patch keys. Projector:
    the query-averaged map, the first query's map, the LM-query (fine) map, pooling regions (each patch
    coloured by the output cell it pools into, and the centre cell's weights), the kept-token mask. LM drop:
    the kept image tokens of each stage over the projector's output grid.
    """
    folder = Path(folder)
    h, w = maps.grid
    qr, qc = query_patch if query_patch is not None else (h // 2, w // 2)
    if not (0 <= qr < h and 0 <= qc < w):
        raise TrainError(f"--query-patch {qr},{qc} is outside the {h}x{w} patch grid.")
    query = maps.num_prefix + qr * w + qc
    written = []
    for layer, probs in maps.vision.items():
        keys = probs[:, :, maps.num_prefix :]  # [H_sel, T, P] attention to the patches
        received = keys.mean(dim=(0, 1)).reshape(h, w).numpy()
        one = keys[:, query].mean(dim=0).reshape(h, w).numpy()
        kind = "global" if maps.windows.get(layer, 0) == 0 else f"window {maps.windows[layer]}"
        panels = [(f"layer {layer} ({kind}): received", received, None),
                  (f"layer {layer}: query patch ({qr},{qc})", one, None)]  # fmt: skip
        path = folder / f"{prefix}-vision-layer{layer}.png"
        written.append(_figure(panels, maps.image, path))
    panels = []
    for name in ("attention", "fine_attention"):
        att = maps.projector.get(name)
        if att is None:
            continue
        label = "LM-query" if name == "fine_attention" else "projector"
        if att.dim() == 2:
            panels += [
                (f"{label}: mean over queries", p, None) for p in _panels(att.mean(dim=0), maps.grid)[:1]
            ]
            panels += [(f"{label}: query 0", p, None) for p in _panels(att[0], maps.grid)[:1]]
        else:
            panels += [(f"{label}: scale {s}", p, None) for s, p in enumerate(_panels(att, maps.grid))]
    pooling = maps.projector.get("pooling")
    if pooling is not None:
        region = pooling.argmax(dim=0).reshape(h, w).numpy().astype(float)
        centre = pooling.shape[0] // 2
        panels += [("pooling regions", None, region),
                   (f"pooled by cell {centre}", pooling[centre].reshape(h, w).numpy(), None)]  # fmt: skip
    kept = maps.projector.get("kept_mask")
    if kept is not None:
        panels += [
            (f"kept tokens, scale {s}", p, None) for s, p in enumerate(_panels(kept.float(), maps.grid))
        ]
    if panels:
        written.append(_figure(panels, maps.image, folder / f"{prefix}-projector.png"))
    if maps.lm_drop:
        grid = maps.projector_grid or maps.grid
        per_image = grid[0] * grid[1]
        drop_panels = [(f"LM drop stage {s}: kept", m[:per_image].float().reshape(grid).numpy(), None)
                       for s, m in enumerate(maps.lm_drop, start=1) if m.numel() >= per_image]  # fmt: skip
        if drop_panels:
            written.append(_figure(drop_panels, maps.image, folder / f"{prefix}-lm-drop.png"))
    return written


def _default_data(folder: Path) -> Path:
    """The validation file of a run folder: its config's data.val, else the synthetic split it trained on."""
    config = folder / "config.json"
    if config.is_file():
        data = json.loads(config.read_text(encoding="utf-8")).get("data", {})
        if isinstance(data, dict) and data.get("val"):
            return Path(data["val"])
    candidates = [folder / "data" / "val.json"]
    if (folder / "result.json").is_file():  # a suite run: out/runs/<suite>/<id>-seed<s>/
        candidates += sorted(folder.parents[2].glob("data/synthetic-*/val.json"))
    found = [c for c in candidates if c.is_file()]
    if len(found) != 1:
        raise TrainError(
            f"cannot tell which validation file {folder} was evaluated on ({len(found)} candidates); "
            "pass --data VAL.json."
        )
    return found[0]


def make_maps(
    target: str | Path,
    out: str | Path | None = None,
    samples: int = 4,
    seed: int = 0,
    layers: Sequence[int] | None = None,
    heads: Sequence[int] | None = None,
    data: str | Path | None = None,
    query_patch: tuple[int, int] | None = None,
    image_root: str | Path | None = None,
) -> Path:
    """`tbi maps`: load a run folder or saved VLM, map `samples` seeded validation samples, save; return the folder.

    Default `out`: TARGET/maps (where `tbi report` finds them for a suite run folder).
    """
    from tbi_train.data import load_conversations
    from tbi_train.run.evaluate import load_any_vlm

    target = Path(target)
    if not target.is_dir():
        raise TrainError(f"{target} is not a folder; pass a run folder or a saved VLM folder.")
    data_path = Path(data) if data is not None else _default_data(target)
    vlm = load_any_vlm(target)
    dataset = load_conversations(data_path, image_root=image_root)
    chosen = select_samples(len(dataset), samples, seed)
    picked = [dataset[i] for i in chosen]
    maps = record_maps(vlm, picked, layers, heads)
    meta = {"target": str(target), "data": str(data_path), "seed": seed, "sample_indexes": chosen}
    return save_maps(maps, out if out is not None else target / "maps", query_patch, meta)
