"""Per-GPU training memory of a VLM, from its config files alone (no weights), and the cheapest setting that fits.

Model states follow DeepSpeed's accounting for mixed-precision AdamW (the one its own estimators use), per
trainable parameter: 2 bytes 16-bit weights + 2 bytes 16-bit gradients + 4 bytes fp32 gradients + 4 bytes fp32
master weights + 8 bytes Adam moments = 20 bytes; a frozen parameter costs its 2 bytes of 16-bit weights.
With N data-parallel GPUs:

    ZeRO-0 (DDP)  2Ψ + 18Ψ                 ZeRO-2          2Ψ + 18Ψ/N
    ZeRO-1        2Ψ + 2Ψ + 16Ψ/N          ZeRO-3          4·Ψ_largest_layer + 18Ψ/N
    ZeRO-2 + optimizer offload: 2Ψ on the GPU, the rest in CPU memory.

Activations (16-bit) follow Korthikanti et al. 2022 ("Reducing Activation Recomputation in Large Transformer
Models", eq. 2) per transformer layer of hidden h, heads a, sequence s, micro-batch b:

    s·b·h·(34 + 5·a·s/h) bytes      (the 5·a·s/h term is the attention matrix; flash attention does not store it)
    2·s·b·h bytes                     with full activation checkpointing (the layer input), plus one layer recomputed

plus the fp32 logits of the LM head (4·s·b·V bytes). The vision tower's sequence is its patch count per tile times
the tiles per sample.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

from tbi_train.errors import TrainError

GIB = 1024**3

# Attention without flash-attn stores the a·s·s score matrices; the seeds use flash attention for the decoder.
_KNOWN_GPUS = {"A100": 80, "H100": 80, "H200": 141, "A6000": 48, "L40S": 48, "RTX4090": 24, "V100": 32}


@dataclass(frozen=True)
class TransformerShape:
    """What the memory formulas need of one transformer stack."""

    name: str
    parameters: int
    layers: int
    hidden: int
    heads: int
    largest_layer_parameters: int
    vocab: int = 0  # LM head size for the logits term; 0 for a vision tower


@dataclass(frozen=True)
class ModelShape:
    """A VLM as stacks: vision tower, projector (as a parameter count), language model."""

    vision: TransformerShape | None
    projector_parameters: int
    language: TransformerShape
    vision_tokens_per_tile: int = 0

    @property
    def parameters(self) -> int:
        vision = self.vision.parameters if self.vision else 0
        return vision + self.projector_parameters + self.language.parameters


def _get(cfg: dict, *keys: str, default=None):
    for key in keys:
        if key in cfg and cfg[key] is not None:
            return cfg[key]
    if default is not None:
        return default
    raise TrainError(f"model config has none of the keys {list(keys)}; is this a transformer config.json?")


def language_model_shape(cfg: dict) -> TransformerShape:
    """Parameter count of a LLaMA-family decoder (LLaMA, Qwen2/Qwen3, Mistral, InternLM2) from its config.json."""
    h = _get(cfg, "hidden_size")
    layers = _get(cfg, "num_hidden_layers")
    heads = _get(cfg, "num_attention_heads")
    kv_heads = _get(cfg, "num_key_value_heads", default=heads)
    head_dim = cfg.get("head_dim") or h // heads
    inter = _get(cfg, "intermediate_size")
    vocab = _get(cfg, "vocab_size")
    model_type = cfg.get("model_type", "")
    qkv_bias = bool(cfg.get("attention_bias", False) or cfg.get("bias", False)) or model_type == "qwen2"
    o_bias = bool(cfg.get("attention_bias", False) or cfg.get("bias", False))
    mlp_bias = bool(cfg.get("mlp_bias", False))

    q, kv = heads * head_dim, kv_heads * head_dim
    attention = h * (q + 2 * kv) + q * h + (q + 2 * kv if qkv_bias else 0) + (h if o_bias else 0)
    mlp = 3 * h * inter + ((2 * inter + h) if mlp_bias else 0)
    qk_norm = 2 * head_dim if model_type == "qwen3" else 0
    layer = attention + mlp + 2 * h + qk_norm
    embeddings = vocab * h * (1 if cfg.get("tie_word_embeddings", False) else 2)
    return TransformerShape(
        name=model_type or "llm",
        parameters=embeddings + layers * layer + h,
        layers=layers,
        hidden=h,
        heads=heads,
        largest_layer_parameters=max(layer, vocab * h),
        vocab=vocab,
    )


def vision_tower_shape(cfg: dict) -> tuple[TransformerShape, int]:
    """Parameter count of a ViT tower (CLIP, SigLIP, InternViT) and its tokens per tile, from its config."""
    h = _get(cfg, "hidden_size")
    layers = _get(cfg, "num_hidden_layers")
    heads = _get(cfg, "num_attention_heads")
    inter = _get(cfg, "intermediate_size")
    patch = _get(cfg, "patch_size")
    image = _get(cfg, "image_size")
    channels = cfg.get("num_channels", 3)
    model_type = cfg.get("model_type", "")
    grid = (image // patch) ** 2
    layer = 4 * h * h + 4 * h + 2 * h * inter + inter + h + 4 * h  # qkv+o with biases, fc1+fc2, two norms
    if model_type in ("intern_vit_6b", "internvl_vision", ""):
        layer += 2 * h  # layer scale ls1, ls2
        if cfg.get("qk_normalization", False):
            layer += 2 * h
        if not cfg.get("qkv_bias", True):
            layer -= 3 * h
    if model_type == "clip_vision_model":
        embeddings = (
            channels * patch * patch * h + h + (grid + 1) * h + 2 * h + 2 * h
        )  # no conv bias; cls; pre/post LN
    elif model_type == "siglip_vision_model":
        embeddings = channels * patch * patch * h + h + grid * h + 2 * h
        if cfg.get("vision_use_head", True):  # attention-pooling head: probe, MHA, LayerNorm, MLP
            embeddings += h + (3 * h * h + 3 * h) + (h * h + h) + 2 * h + (2 * h * inter + inter + h)
    else:  # InternViT: conv with bias, class token, position embedding with class slot
        embeddings = channels * patch * patch * h + h + h + (grid + 1) * h
    shape = TransformerShape(
        name=model_type or "vit",
        parameters=embeddings + layers * layer,
        layers=layers,
        hidden=h,
        heads=heads,
        largest_layer_parameters=layer,
    )
    return shape, grid + (0 if model_type == "siglip_vision_model" else 1)


def model_shape_from_config(path_or_dict: str | Path | dict) -> ModelShape:
    """Read a config.json: a plain causal LM, or a VLM with vision and text sub-configs (InternVL, LLaVA, ...)."""
    if isinstance(path_or_dict, dict):
        cfg = path_or_dict
    else:
        path = Path(path_or_dict)
        path = path / "config.json" if path.is_dir() else path
        if not path.is_file():
            raise TrainError(f"{path}: no such config file; pass a model directory or its config.json")
        try:
            cfg = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise TrainError(f"{path}: not valid JSON ({err})") from err
    text_cfg = cfg.get("llm_config") or cfg.get("text_config")
    if text_cfg is None:
        return ModelShape(vision=None, projector_parameters=0, language=language_model_shape(cfg))
    language = language_model_shape(text_cfg)
    vision, tokens = vision_tower_shape(_get(cfg, "vision_config"))
    ratio = cfg.get("downsample_ratio")
    if ratio:  # InternVL: pixel shuffle then LayerNorm + Linear + GELU + Linear
        width = int(vision.hidden / (ratio * ratio))
        projector = (
            2 * width + width * language.hidden + language.hidden + language.hidden**2 + language.hidden
        )
    else:  # LLaVA mlp2x_gelu
        projector = vision.hidden * language.hidden + language.hidden + language.hidden**2 + language.hidden
    return ModelShape(
        vision=vision, projector_parameters=projector, language=language, vision_tokens_per_tile=tokens
    )


@dataclass(frozen=True)
class Hardware:
    """`NxNAME-MEMGB`, optionally `NODESx` in front: 2xA100-40GB, 8xH100, 2x8xA100-80GB."""

    nodes: int
    gpus_per_node: int
    name: str
    memory_gib: float

    @property
    def gpus(self) -> int:
        return self.nodes * self.gpus_per_node

    @classmethod
    def parse(cls, spec: str) -> Hardware:
        m = re.fullmatch(r"(?:(\d+)x)?(\d+)x([A-Za-z0-9]+?)(?:-(\d+(?:\.\d+)?)GB)?", spec.strip())
        if not m or (m.group(4) is None and m.group(3).upper() not in _KNOWN_GPUS):
            raise TrainError(
                f"hardware {spec!r} not understood; write GPUSxNAME-MEMGB such as 2xA100-40GB or 2x8xH100-80GB "
                f"(known names without a size: {', '.join(_KNOWN_GPUS)})"
            )
        nodes, per_node, name, mem = m.groups()
        memory = float(mem) if mem else float(_KNOWN_GPUS[name.upper()])
        return cls(int(nodes or 1), int(per_node), name, memory)


@dataclass(frozen=True)
class Setting:
    zero_stage: int
    offload_optimizer: bool
    checkpointing: bool
    micro_batch: int

    def describe(self) -> str:
        parts = [f"ZeRO-{self.zero_stage}"]
        parts += ["optimizer offload"] if self.offload_optimizer else []
        parts += ["activation checkpointing"] if self.checkpointing else []
        return " + ".join(parts) + f", micro-batch {self.micro_batch}"


@dataclass(frozen=True)
class MemoryBreakdown:
    setting: Setting
    parameters_gib: float
    gradients_gib: float
    optimizer_gib: float
    activations_gib: float
    cpu_offload_gib: float
    fits: bool = field(default=False)

    @property
    def total_gib(self) -> float:
        return self.parameters_gib + self.gradients_gib + self.optimizer_gib + self.activations_gib


def model_state_bytes(
    trainable: int, frozen: int, largest_layer: int, gpus: int, stage: int, offload: bool
) -> tuple[float, float, float, float]:
    """(weights, gradients, optimizer states, CPU) bytes per GPU in DeepSpeed's accounting (module docstring).

    Gradients are 16-bit (2 B) + fp32 (4 B); optimizer states are fp32 master weights + two moments (12 B).
    """
    if stage not in (0, 1, 2, 3):
        raise TrainError(f"ZeRO stage {stage} does not exist; use 0, 1, 2 or 3")
    if offload and stage not in (2, 3):
        raise TrainError(f"optimizer offload needs ZeRO-2 or ZeRO-3, not ZeRO-{stage}")
    n = gpus
    if stage == 0:
        weights, grads, states = 2 * (trainable + frozen), 6 * trainable, 12 * trainable
    elif stage == 1:
        weights, grads, states = (
            2 * (trainable + frozen),
            2 * trainable + 4 * trainable / n,
            12 * trainable / n,
        )
    elif stage == 2:
        weights, grads, states = 2 * (trainable + frozen), 6 * trainable / n, 12 * trainable / n
    else:  # the 16-bit weights are sharded too; one layer at a time is gathered (fp16 weights + grads)
        weights, grads, states = (
            4 * largest_layer + 2 * (trainable + frozen) / n,
            4 * trainable / n,
            12 * trainable / n,
        )
    cpu = 0.0
    if offload:  # fp32 gradients and optimizer states live in CPU memory; 16-bit weights stay on the GPU
        cpu, grads, states = (grads + states) * n, 0.0, 0.0
    return weights, grads, states, cpu


def activation_bytes(
    stack: TransformerShape, seq: int, micro_batch: int, checkpointing: bool, flash: bool = True
) -> float:
    """Korthikanti et al. 2022, eq. 2 (16-bit activations), per GPU; see the module docstring."""
    h, a = stack.hidden, stack.heads
    per_layer = seq * micro_batch * h * (34 + (0 if flash else 5 * a * seq / h))
    layers = (
        2 * seq * micro_batch * h * stack.layers + per_layer if checkpointing else per_layer * stack.layers
    )
    logits = 4 * seq * micro_batch * stack.vocab
    return layers + logits


def plan(
    shape: ModelShape,
    hardware: Hardware,
    setting: Setting,
    seq_len: int = 2048,
    tiles: int = 1,
    train_vision: bool = True,
    headroom: float = 0.9,
) -> MemoryBreakdown:
    """Memory per GPU for full training of the LM and projector (and the vision tower when `train_vision`)."""
    vision = shape.vision.parameters if shape.vision else 0
    trainable = shape.language.parameters + shape.projector_parameters + (vision if train_vision else 0)
    frozen = 0 if train_vision else vision
    largest = max(
        shape.language.largest_layer_parameters, shape.vision.largest_layer_parameters if shape.vision else 0
    )
    w, g, o, cpu = model_state_bytes(
        trainable, frozen, largest, hardware.gpus, setting.zero_stage, setting.offload_optimizer
    )
    act = activation_bytes(shape.language, seq_len, setting.micro_batch, setting.checkpointing)
    if shape.vision is not None:
        vision_seq = shape.vision_tokens_per_tile * tiles
        act += activation_bytes(shape.vision, vision_seq, setting.micro_batch, setting.checkpointing)
    b = MemoryBreakdown(setting, w / GIB, g / GIB, o / GIB, act / GIB, cpu / GIB)
    return MemoryBreakdown(**{**b.__dict__, "fits": b.total_gib <= headroom * hardware.memory_gib})


# Cheapest first: each step trades speed for memory (sharding, recomputation, PCIe traffic, smaller batches).
_LADDER = [
    (0, False, False),
    (1, False, False),
    (2, False, False),
    (2, False, True),
    (3, False, True),
    (2, True, True),
    (3, True, True),
]


def candidate_settings(micro_batches: tuple[int, ...] = (2, 1)) -> list[Setting]:
    return [Setting(z, off, ck, mb) for mb in micro_batches for (z, off, ck) in _LADDER]


def smallest_fitting(
    shape: ModelShape, hardware: Hardware, **kwargs
) -> tuple[list[MemoryBreakdown], MemoryBreakdown | None]:
    """Every candidate's breakdown, and the first (cheapest) that fits, or None."""
    rows = [plan(shape, hardware, s, **kwargs) for s in candidate_settings()]
    return rows, next((r for r in rows if r.fits), None)


def format_gib(x: float) -> str:
    return f"{x:,.1f}" if math.isfinite(x) else "inf"
