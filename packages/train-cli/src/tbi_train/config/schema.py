"""The typed run configuration: every field with its seed-000 default and what it means.

A `RunConfig` is frozen (hashable, usable as a cache key) and made only of dataclasses, scalars and tuples,
so `dataclasses.asdict` gives a JSON-able tree whose canonical dump is the config's stable hash.
Defaults are the values of seed 000 (section 3); the `tiny` preset scales them down for a CPU.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = [
    "COMPONENT_GROUPS",
    "CheckpointConfig",
    "ComponentLR",
    "DataConfig",
    "EvalConfig",
    "LMConfig",
    "LogConfig",
    "LoraSpec",
    "ModelConfig",
    "OptimConfig",
    "PeftConfig",
    "PhaseConfig",
    "ProjectorSpec",
    "RunConfig",
    "TokenizerConfig",
    "VisionConfig",
]

COMPONENT_GROUPS: tuple[str, ...] = (
    "vision",
    "projector",
    "lm",
    "vision_lora",
    "projector_lora",
    "lm_lora",
)
"""Names of the parameter groups a phase can train: base weights of each component, or its LoRA/DoRA adapter."""


@dataclass(frozen=True)
class VisionConfig:
    """The vision tower: a local Hugging Face checkpoint, or a random SigLIP-like tower (tiny preset)."""

    path: str | None = None
    """Local folder of any transformers vision tower (CLIP, SigLIP, DINOv2, ...). None: random init from the fields below."""
    hidden_size: int = 64
    """Random init only: width of the tower."""
    num_layers: int = 4
    """Random init only: number of encoder layers."""
    num_heads: int = 4
    """Random init only: attention heads."""
    intermediate_size: int = 128
    """Random init only: MLP width."""
    image_size: int = 64
    """Random init only: input side in pixels (checkpoints bring their own)."""
    patch_size: int = 16
    """Random init only: patch side in pixels; the grid is image_size / patch_size per side."""
    feature_layer: int = -1
    """Which hidden state feeds the projector (-1: last encoder layer, LLaVA uses -2)."""
    image_mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    """Per-channel normalisation mean when the checkpoint has no preprocessor config."""
    image_std: tuple[float, float, float] = (0.5, 0.5, 0.5)
    """Per-channel normalisation std when the checkpoint has no preprocessor config."""
    gradient_checkpointing: bool = True
    """Recompute tower activations in backward (seed 000 3.2: enabled for the vision encoder)."""
    rope_2d: bool = False
    """2D-RoPE instead of absolute position embeddings (`tbi_vision_rope.modernize`, seed 000 `rope_config`:
    axial, base 10000, half the head dim per axis, linear interpolation); the position embedding is removed."""
    window_attention: bool = False
    """Attention inside W x W patch windows with a few global layers (seed 001): W = 8, or half the grid side
    on grids under 16 patches (tiny: 2 x 2 of 4 x 4); global layers `default_global_layers(L, n)` with
    n = min(4, max(1, L // 8)) (32 layers: 7/15/23/31; tiny 4 layers: the last)."""
    feature_layers: tuple[int, ...] = ()
    """Multi-scale taps: indexes into the tower's `hidden_states` (seed 000: 8/16/24) whose patch features go to
    a multi-scale projector as a list; empty: the single `feature_layer`."""


@dataclass(frozen=True)
class ProjectorSpec:
    """The projector, built by `tbi_projectors.build_projector(name, input_dim, output_dim, **options)`."""

    name: str = "mlp2x_gelu"
    """Registry name (`tbi_projectors.list_projectors()`): mlp2x_gelu, c-abstractor, pixel-shuffle-mlp, ..."""
    options: tuple[tuple[str, Any], ...] = ()
    """Extra keyword options of the projector as (key, value) pairs; override with `model.projector.options.KEY=V`."""
    query_from_lm: bool = False
    """Foveated fine pass (seed 003): the projector also gets `query=` the LM's final hidden state at the last
    instruction token (computed over the prompt with the coarse image tokens); needs a projector taking `query`."""


@dataclass(frozen=True)
class LMConfig:
    """The causal language model: a local checkpoint, or a random Qwen2-like LM (tiny preset)."""

    path: str | None = None
    """Local folder of any AutoModelForCausalLM checkpoint. None: random init from the fields below."""
    trust_remote_code: bool = False
    """Run checkpoints' own Python code (InternLM2, InternViT) for the LM and the tower; only the user sets it."""
    hidden_size: int = 64
    """Random init only: model width."""
    num_layers: int = 4
    """Random init only: decoder layers."""
    num_heads: int = 4
    """Random init only: attention heads."""
    num_kv_heads: int = 2
    """Random init only: key/value heads (grouped-query attention)."""
    intermediate_size: int = 128
    """Random init only: MLP width."""
    max_position_embeddings: int = 2048
    """Random init only: longest sequence."""
    initializer_range: float = 0.02
    """Random init only: std of the initial weights (tied embeddings of this scale bound the logits)."""
    gradient_checkpointing: bool = False
    """Recompute decoder activations in backward (non-reentrant, so frozen inputs still work)."""
    pyramid_drop: tuple[float, ...] = ()
    """In-LM PyramidDrop drop rate per stage (seed 000 `pyramid_drop_config`: 0.5/0.3/0.1): after decoder layer
    round(s * L / (S + 1)) stage s keeps floor(N * prod_{i<=s}(1 - r_i)) image tokens, ranked by the last
    instruction token's attention (uniform r = PyramidDrop's floor(N * lambda^s), lambda = 1 - r); empty: off."""
    quantize: Literal["none", "nf4"] = "none"
    """QLoRA base (seed 004): "nf4" loads the LM's linear layers 4-bit NormalFloat with double quantisation
    through bitsandbytes (transformers' BitsAndBytesConfig, compute dtype = the run precision) and prepares it
    with peft's prepare_model_for_kbit_training; the base stays frozen, train `lm_lora`. Needs bitsandbytes."""


@dataclass(frozen=True)
class TokenizerConfig:
    """The tokenizer; a random-init LM gets a small byte-level BPE trained offline and cached in the run dir."""

    path: str | None = None
    """Local tokenizer folder. None: the LM checkpoint's tokenizer, or (random LM) a trained BPE."""
    vocab_size: int = 768
    """Trained BPE only: vocabulary size including the 256 byte symbols and the special tokens."""
    image_pad_token: str = "<|image_pad|>"
    """The token the `<image>` placeholder expands to; its positions receive the projector's tokens."""


@dataclass(frozen=True)
class LoraSpec:
    """LoRA/DoRA on one component (peft): W x + (alpha / r) B A x, B zero-initialised."""

    enabled: bool = False
    """Attach an adapter to this component."""
    r: int = 64
    """Rank (seed 000 3.3: 64; seed 004: 16)."""
    alpha: int = 16
    """Scale numerator; the update is scaled by alpha / r (seed 000: 16, i.e. 0.25)."""
    dropout: float = 0.05
    """Dropout on the adapter input (seed 000: 0.05)."""
    target_modules: tuple[str, ...] = (
        "q_proj",
        "k_proj",
        "v_proj",
        "o_proj",
        "gate_proj",
        "up_proj",
        "down_proj",
    )
    """Module names to adapt; ("all-linear",) adapts every linear layer."""
    use_dora: bool = False
    """Weight-decomposed LoRA (DoRA, seed 004 E5-E8)."""


@dataclass(frozen=True)
class PeftConfig:
    """Adapters per component, each with its own rank (seed 002 allocates ranks per component)."""

    lm: LoraSpec = field(default_factory=lambda: LoraSpec(enabled=True))
    """The LM adapter (seed 000 D1/F1: rank 64, alpha 16, dropout 0.05 on q,k,v,o,gate,up,down)."""
    vision: LoraSpec = field(
        default_factory=lambda: LoraSpec(
            r=16, alpha=32, target_modules=("q_proj", "k_proj", "v_proj", "out_proj")
        )
    )
    """The vision-tower adapter (seed 000 phase 2 'vision encoder LoRA'), off by default."""
    projector: LoraSpec = field(
        default_factory=lambda: LoraSpec(r=16, alpha=32, target_modules=("all-linear",))
    )
    """The projector adapter, off by default."""


@dataclass(frozen=True)
class ModelConfig:
    """VLM = vision tower + projector + causal LM (+ tokenizer and adapters)."""

    vision: VisionConfig = field(default_factory=VisionConfig)
    """The vision tower."""
    projector: ProjectorSpec = field(default_factory=ProjectorSpec)
    """The projector between tower and LM."""
    lm: LMConfig = field(default_factory=LMConfig)
    """The causal LM."""
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    """The tokenizer."""
    peft: PeftConfig = field(default_factory=PeftConfig)
    """LoRA/DoRA adapters per component."""
    pretrained: str | None = None
    """Local folder of an existing InternVL-hf / llava-hf / Qwen2.5-VL checkpoint to start from: its tower,
    projector (with trained weights), LM, tokenizer and image preprocessing replace vision/projector/lm/tokenizer
    (whose random-init fields are then unused); peft and gradient checkpointing still apply. None: compose."""
    frozen_dtype: Literal["auto", "bf16", "fp32"] = "auto"
    """Storage of the base weights no phase of the run trains (e.g. the LM under LoRA): "bf16" halves their
    memory, trained parts keep fp32 masters and each part's inputs are cast to its dtype; "auto": bf16 when
    the run's precision is bf16 (a bf16 GPU), fp32 otherwise (this CPU). A part any phase trains stays fp32."""


@dataclass(frozen=True)
class DataConfig:
    """Where the training and validation conversations come from (LLaVA JSON/JSONL)."""

    train: str | None = None
    """LLaVA-style JSON/JSONL of training conversations. None: synthetic data generated into the run dir."""
    val: str | None = None
    """Validation JSON/JSONL. None: the synthetic validation split."""
    image_root: str | None = None
    """Folder image paths are relative to (default: the JSON file's folder)."""
    synthetic_n: int = 2000
    """Number of synthetic samples to generate when `train` is None."""
    synthetic_seed: int = 0
    """Seed of the synthetic generator (fixed apart from the training seed, so seeds share data)."""
    synthetic_val_fraction: float = 0.1
    """Share of the synthetic records in the fixed validation split."""
    synthetic_image_size: int = 224
    """Side of the synthetic images in pixels (the tower resizes them to its own input size)."""
    synthetic_task_weights: tuple[tuple[str, float], ...] = ()
    """Relative share of each synthetic scene kind, e.g. {color: 1, count: 1}; empty: the generator's mix."""
    max_bad_fraction: float = 0.05
    """Stop with an error if more than this fraction of samples is unusable."""
    replicate_image_frames: int = 1
    """Each image becomes this many identical frames (seed 003 A8a: 1, A8b: 16); videos are unaffected."""


@dataclass(frozen=True)
class ComponentLR:
    """Learning rate per parameter group; a trainable group without a rate is a config error."""

    vision: float | None = None
    """Vision tower base weights (seed 000 phase 2: 2e-5 full fine-tune)."""
    projector: float | None = None
    """Projector (seed 000: 1e-3 phase 1, 5e-5 phase 2)."""
    lm: float | None = None
    """LM base weights (seed 000 phase 3 full model: 1e-5)."""
    vision_lora: float | None = None
    """Vision adapter (seed 000 phase 2 'if LoRA': 1e-4)."""
    projector_lora: float | None = None
    """Projector adapter."""
    lm_lora: float | None = None
    """LM adapter (seed 000 phase 3 LoRA: 2e-4)."""


@dataclass(frozen=True)
class PhaseConfig:
    """One training phase: what trains, at which rates, for how long, on which loss (seed 000 section 3.1)."""

    name: str = "phase"
    """Name used in logs and checkpoint folders."""
    trainable: tuple[str, ...] = ("projector",)
    """Parameter groups that train (see COMPONENT_GROUPS); everything else is frozen."""
    lr: ComponentLR = field(default_factory=ComponentLR)
    """Learning rate per trainable group."""
    steps: int | None = None
    """Optimizer steps (seed 000: 10k / 20k / 50k). Exactly one of steps and epochs is set."""
    epochs: float | None = None
    """Passes over the phase's data, converted to optimizer steps (rounded up)."""
    warmup_steps: int = 0
    """Linear warmup steps before the cosine decay (seed 000: 500 / 1000 / 2000)."""
    batch_size: int = 2
    """Samples per device per micro-batch (seed 000: per-device 2)."""
    grad_accum: int = 1
    """Micro-batches per optimizer step (seed 000: 64 / 32 / 16)."""
    loss_on: Literal["answers", "all_text"] = "answers"
    """Supervise answers only, or all text (images always masked; seed 003 stage 1 uses all_text)."""
    tasks: tuple[str, ...] = ()
    """Only samples of these tasks (e.g. ("caption",) for projector pre-training); empty: all tasks."""


@dataclass(frozen=True)
class OptimConfig:
    """AdamW with cosine-with-warmup decay and gradient clipping (seed 000 section 3.2)."""

    betas: tuple[float, float] = (0.9, 0.95)
    """AdamW betas."""
    eps: float = 1e-8
    """AdamW epsilon."""
    weight_decay: float = 0.05
    """Decoupled weight decay on matrices (biases and norms get none)."""
    max_grad_norm: float = 1.0
    """Clip the global gradient norm to this value."""
    schedule: Literal["cosine", "constant"] = "cosine"
    """Decay after warmup (seed 000: cosine)."""
    min_lr_ratio: float = 0.0
    """Final LR as a fraction of the peak (seed 000: 0, full decay)."""


@dataclass(frozen=True)
class EvalConfig:
    """Validation during training: greedy generation scored against the gold answers."""

    every_steps: int = 0
    """Evaluate every N optimizer steps of each phase (0: only at phase ends)."""
    limit: int = 64
    """Validation samples used (the first N of the fixed split)."""
    batch_size: int = 8
    """Samples per generation batch."""
    max_new_tokens: int = 512
    """Generation length cap (seed 000 5.3: 512, greedy)."""
    at_start: bool = True
    """Also score the untrained model before the first phase (the baseline the curves rise from)."""
    attention_entropy: bool = False
    """Also log the vision tower's attention entropy per layer at every eval point (seed 003 Fig 6): mean over
    the validation images, heads and query tokens of -Σ_j p_j log p_j (nats), as "attention_entropy":
    {layer: value} in log.jsonl. CLIP / SigLIP / DINOv2 / InternViT towers (plain or modernised)."""
    benchmarks: tuple[tuple[str, str], ...] = ()
    """tbi-evalbench benchmark files scored at every eval point next to the validation split, as
    {loader name: local file} like `tbi eval --benchmark NAME=PATH` (`mmbench:ko` passes a language); media
    paths are relative to the file's folder; the first `limit` samples of each; logged as eval.<name>."""


@dataclass(frozen=True)
class LogConfig:
    """Where training records go besides the always-on log.jsonl (rank 0 only)."""

    sinks: tuple[Literal["jsonl", "tensorboard", "wandb"], ...] = ("jsonl",)
    """Sinks: "jsonl" (always on), "tensorboard" (run/tensorboard/, pip extra tbi-train[tensorboard]),
    "wandb" (offline run under run/wandb/, never online; pip extra tbi-train[wandb])."""
    wandb_project: str = "tbi"
    """W&B project name recorded in the offline run (used when it is synced later with `wandb sync`)."""


@dataclass(frozen=True)
class CheckpointConfig:
    """When to write checkpoints (always at each phase end)."""

    every_steps: int = 0
    """Also checkpoint every N optimizer steps within a phase (0: phase ends only)."""
    keep_last: int = 2
    """Mid-phase checkpoints kept while a phase runs; they are deleted once its phase-end checkpoint exists."""


@dataclass(frozen=True)
class RunConfig:
    """Everything a run needs; resolved from a preset, a config file and `key=value` overrides."""

    name: str = "run"
    """Human name of the run (experiment id)."""
    seed: int = 42
    """Training seed (seed 000: 42 / 123 / 456)."""
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    """auto: bf16 where the hardware has it (CUDA with bf16), fp32 otherwise (CPU)."""
    max_length: int = 512
    """Longest tokenised sample: longer text is truncated; a sample whose image tokens would be cut is dropped and counted."""
    log_every: int = 1
    """Write a JSONL log line every N optimizer steps."""
    log: LogConfig = field(default_factory=LogConfig)
    """Log sinks (TensorBoard, W&B offline) besides log.jsonl."""
    model: ModelConfig = field(default_factory=ModelConfig)
    """The model."""
    data: DataConfig = field(default_factory=DataConfig)
    """The data."""
    phases: tuple[PhaseConfig, ...] = ()
    """The training phases, in order."""
    optim: OptimConfig = field(default_factory=OptimConfig)
    """Optimiser and schedule shared by all phases."""
    eval: EvalConfig = field(default_factory=EvalConfig)
    """Validation."""
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    """Checkpointing."""
    nonfinite_loss: Literal["stop", "skip"] = "stop"
    """A NaN/Inf loss: stop the run (naming the step and batch ids), or skip that optimizer step and go on."""
    compile: bool = False
    """torch.compile the LM and the vision tower for training and evaluation (`--compile`); when compilation
    fails the run logs why and goes on eagerly. Numerics equal eager to float tolerance."""
