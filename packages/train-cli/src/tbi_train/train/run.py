"""Train a resolved RunConfig: data -> model -> phases (through accelerate) -> checkpoints -> final model.

    result = train(resolve_config("tiny"), "runs/tiny")          # fresh run
    result = train(cfg, "runs/tiny", resume=True)                # continue from the last complete checkpoint

Run folder: config.json (resolved config, its hash in run.json), data/ (synthetic data when no paths are
given), tokenizer/ (trained BPE of a random LM), checkpoints/, log.jsonl, train_loss.png,
val_scores.png, final/ (the trained VLM).
"""

from __future__ import annotations

import json
import logging
import math
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import torch

from tbi_train.config import PhaseConfig, RunConfig, config_hash, save_config
from tbi_train.errors import TrainError
from tbi_train.eval import generate, score_predictions
from tbi_train.model import VLM, build_vlm, save_vlm
from tbi_train.train.checkpoint import CheckpointState, latest_checkpoint, prune_checkpoints, save_checkpoint
from tbi_train.train.log import JsonlLog, plot_curves
from tbi_train.train.loss import count_targets, token_loss_sum
from tbi_train.train.optim import build_optimizer, build_scheduler, set_trainable
from tbi_train.train.order import DataOrder

__all__ = ["RunResult", "TrainCallback", "train"]

logger = logging.getLogger(__name__)


class TrainCallback:
    """Hooks for progress display; every method is optional to override (the CLI draws rich bars)."""

    def on_phase_start(self, index: int, phase: PhaseConfig, total_steps: int, start_step: int) -> None:
        """A phase begins (or resumes at `start_step`)."""

    def on_step(self, record: dict) -> None:
        """An optimizer step finished; `record` is its log line."""

    def on_eval(self, record: dict) -> None:
        """A validation pass finished."""

    def on_phase_end(self, index: int, checkpoint: Path) -> None:
        """A phase finished and was checkpointed."""


@dataclass
class RunResult:
    """What a finished run left behind."""

    run_dir: Path
    """The run folder."""
    final_model: Path
    """The trained VLM (load with `tbi_train.model.load_vlm`)."""
    evals: list[dict] = field(default_factory=list)
    """Validation records in order (the first is the untrained model when eval.at_start)."""
    config_hash: str = ""
    """Stable hash of the resolved config."""


@dataclass
class _Data:
    train: object
    val: object


def train(
    cfg: RunConfig,
    out_dir: str | Path,
    resume: bool = False,
    callback: TrainCallback | None = None,
) -> RunResult:
    """Run every phase of `cfg` into `out_dir` and return where the results are.

    Args:
        cfg: the resolved config (frozen; its hash is recorded and checked on resume).
        out_dir: the run folder.
        resume: continue from the last complete checkpoint in `out_dir` (the final weights equal those of
            an uninterrupted run with the same config).
        callback: progress hooks.

    Raises:
        TrainError: `out_dir` holds another run, or resume was asked with a different config.
    """
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    callback = callback or TrainCallback()
    run_dir = Path(out_dir)
    _check_paths(cfg)
    digest = _claim_run_dir(cfg, run_dir, resume)
    log = JsonlLog(run_dir / "log.jsonl")
    latest = latest_checkpoint(run_dir) if resume else None
    if latest is not None:
        done = latest[0]
        log.keep(lambda r: (r["phase"], r["step"]) <= (done.phase_index, done.step))
        logger.info("resuming from %s", latest[1])
    elif log.path.exists():
        log.path.unlink()

    data = _datasets(cfg, run_dir)
    set_seed(cfg.seed)
    vlm = build_vlm(cfg.model, cache_dir=run_dir, corpus=_corpus(data.train))
    if latest is not None:
        _load_weights(vlm, latest[1] / "model" / "model.safetensors")

    val_samples = (
        [data.val[i] for i in range(min(cfg.eval.limit, len(data.val)))] if data.val is not None else []
    )
    evals = [r for r in log.read() if "eval" in r]
    offsets = _global_offsets(cfg, data.train)
    if latest is None and cfg.eval.at_start and val_samples:
        evals.append(_evaluate(vlm, val_samples, cfg, log, callback, phase=0, step=0, global_step=0))

    for index, phase in enumerate(cfg.phases):
        start_step, state_dir = 0, None
        if latest is not None:
            done = latest[0]
            if index < done.phase_index or (index == done.phase_index and done.phase_done):
                continue
            if index == done.phase_index:
                start_step, state_dir = done.step, latest[1] / "state"
        accelerator = Accelerator(
            mixed_precision=_mixed_precision(cfg.precision),
            step_scheduler_with_optimizer=False,
        )
        evals += _run_phase(
            cfg, index, phase, vlm, data.train, val_samples, accelerator, run_dir, log, callback,
            start_step, state_dir, offsets[index],
        )  # fmt: skip

    final = save_vlm(vlm, run_dir / "final")
    plot_curves(log.read(), run_dir)
    (run_dir / "summary.json").write_text(
        json.dumps(
            {"config_hash": digest, "evals": evals, "final_model": str(final)}, indent=2, ensure_ascii=False
        )
        + "\n"
    )
    return RunResult(run_dir, final, evals, digest)


def _check_paths(cfg: RunConfig) -> None:
    """Fail before any data is made or loaded when a checkpoint or data path does not exist."""
    folders = {
        "model.vision.path": cfg.model.vision.path,
        "model.lm.path": cfg.model.lm.path,
        "model.tokenizer.path": cfg.model.tokenizer.path,
    }
    for key, path in folders.items():
        if path is not None and not Path(path).is_dir():
            raise TrainError(
                f"{key}={path} is not a folder; point it at a local checkpoint (set TBI_MODEL_ROOT)."
            )
    for key, path in {"data.train": cfg.data.train, "data.val": cfg.data.val}.items():
        if path is not None and not Path(path).is_file():
            raise TrainError(f"{key}={path} does not exist; pass a LLaVA-style .json/.jsonl file.")


def _claim_run_dir(cfg: RunConfig, run_dir: Path, resume: bool) -> str:
    digest = config_hash(cfg)
    marker = run_dir / "run.json"
    if marker.is_file():
        previous = json.loads(marker.read_text()).get("config_hash")
        if resume and previous != digest:
            raise TrainError(
                f"{run_dir} was trained with config {previous}, not {digest}; resume with the same config "
                f"(see {run_dir / 'config.json'}) or choose another --out."
            )
        if not resume:
            raise TrainError(
                f"{run_dir} already holds a run; pass --resume to continue it or choose another --out."
            )
    run_dir.mkdir(parents=True, exist_ok=True)
    save_config(cfg, run_dir / "config.json")
    marker.write_text(json.dumps({"config_hash": digest, "name": cfg.name}) + "\n")
    return digest


def _datasets(cfg: RunConfig, run_dir: Path) -> _Data:
    """cfg.data.train/val, or synthetic bilingual data generated once into run_dir/data."""
    from tbi_train.data import load_conversations

    train_path, val_path = cfg.data.train, cfg.data.val
    if train_path is None:
        from tbi_train.synth import generate_synthetic

        synth = run_dir / "data"
        if not (synth / "train.json").is_file():
            options = {
                "image_size": cfg.data.synthetic_image_size,
                "val_fraction": cfg.data.synthetic_val_fraction,
            }
            if cfg.data.synthetic_task_weights:
                options["task_weights"] = dict(cfg.data.synthetic_task_weights)
            generate_synthetic(
                synth, n=cfg.data.synthetic_n, seed=cfg.data.synthetic_seed, overwrite=True, **options
            )
        train_path = synth / "train.json"
        val_path = val_path or synth / "val.json"
    kwargs = {"image_root": cfg.data.image_root, "max_bad_fraction": cfg.data.max_bad_fraction}
    train_ds = load_conversations(train_path, **kwargs)
    val_ds = load_conversations(val_path, **kwargs) if val_path is not None else None
    return _Data(train_ds, val_ds)


def _corpus(dataset) -> list[str]:
    """Texts of every turn, for training the tiny preset's BPE (no pixels decoded)."""
    return [
        t["value"].replace("<image>", " ")
        for i in range(len(dataset))
        for t in dataset.describe(i).conversations
    ]


def _phase_dataset(dataset, phase: PhaseConfig, index: int):
    if not phase.tasks:
        return dataset
    keep = [i for i in range(len(dataset)) if dataset.describe(i).task in phase.tasks]
    if not keep:
        raise TrainError(
            f"phases.{index}.tasks={list(phase.tasks)} matches no training sample; change the tasks."
        )
    return dataset.select(keep)


def _total_steps(phase: PhaseConfig, n: int, world: int) -> int:
    if phase.steps is not None:
        return phase.steps
    return max(1, math.ceil(phase.epochs * n / (phase.batch_size * phase.grad_accum * world)))


def _global_offsets(cfg: RunConfig, dataset) -> list[int]:
    """Global step at the start of each phase (for curves across phases)."""
    offsets, total = [], 0
    for index, phase in enumerate(cfg.phases):
        offsets.append(total)
        total += _total_steps(phase, len(_phase_dataset(dataset, phase, index)), 1)
    return offsets


def _mixed_precision(precision: str) -> str:
    if precision == "fp32":
        return "no"
    if precision == "bf16":
        return "bf16"
    return "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "no"


def _load_weights(vlm: VLM, path: Path) -> None:
    from safetensors.torch import load_model

    load_model(vlm, str(path), strict=True)


def _run_phase(
    cfg: RunConfig,
    index: int,
    phase: PhaseConfig,
    vlm: VLM,
    train_ds,
    val_samples: list,
    accelerator,
    run_dir: Path,
    log: JsonlLog,
    callback: TrainCallback,
    start_step: int,
    state_dir: Path | None,
    offset: int,
) -> list[dict]:
    """One phase: freeze, optimizer + schedule, the step loop with accumulation, evals, checkpoints."""
    from accelerate.utils import set_seed

    from tbi_train.data import Collator, preflight_check

    # Every phase starts from a seed of its own, so resuming at a phase boundary needs no saved RNG.
    set_seed(cfg.seed + 1000 * (index + 1))
    dataset = _phase_dataset(train_ds, phase, index)
    groups = vlm.parameter_groups()
    n_trainable = set_trainable(groups, phase)
    collator = Collator(
        vlm.tokenizer,
        vlm.image_transform,
        vlm.tokens_per_image,
        phase.loss_on,
        max_length=cfg.max_length,
        image_token=cfg.model.tokenizer.image_pad_token,
    )
    if start_step == 0:
        preflight_check(dataset, collator, max_samples=256, seed=cfg.seed)
    world, rank = accelerator.num_processes, accelerator.process_index
    total = _total_steps(phase, len(dataset), world)
    optimizer = build_optimizer(groups, phase, cfg.optim)
    scheduler = build_scheduler(optimizer, total, phase, cfg.optim)
    model, optimizer, scheduler = accelerator.prepare(vlm, optimizer, scheduler)
    if state_dir is not None:
        accelerator.load_state(str(state_dir))
    trainable = [p for p in vlm.parameters() if p.requires_grad]
    order = DataOrder(
        len(dataset), phase.batch_size, seed=cfg.seed * 7919 + index, world_size=world, rank=rank
    )
    logger.info("phase %d %s: %d steps, %d trainable parameters", index, phase.name, total, n_trainable)
    callback.on_phase_start(index, phase, total, start_step)
    evals: list[dict] = []
    model.train()
    started = time.perf_counter()
    for step in range(start_step, total):
        micro = [
            collator([dataset[i] for i in order.indices(step * phase.grad_accum + k)])
            for k in range(phase.grad_accum)
        ]
        n_tokens = torch.tensor(
            float(sum(count_targets(b["labels"]) for b in micro)), device=accelerator.device
        )
        n_tokens = accelerator.reduce(n_tokens, reduction="sum")
        if n_tokens.item() == 0:
            ids = [i for b in micro for i in b["sample_ids"]]
            raise TrainError(f"phase {phase.name} step {step}: no supervised tokens in samples {ids[:8]}.")
        loss_sum = torch.zeros((), device=accelerator.device)
        for k, batch in enumerate(micro):
            # Gradients of all micro-batches (and processes) sum to d(total loss / total tokens).
            sync = accelerator.no_sync(model) if k < len(micro) - 1 else nullcontext()
            with sync, accelerator.autocast():
                logits = model(
                    input_ids=batch["input_ids"].to(accelerator.device),
                    attention_mask=batch["attention_mask"].to(accelerator.device),
                    pixel_values=batch["pixel_values"].to(accelerator.device),
                    image_token_mask=batch["image_token_mask"].to(accelerator.device),
                )  # [B, L, V]
                part = token_loss_sum(logits, batch["labels"].to(accelerator.device))
                accelerator.backward(part * world / n_tokens)
            loss_sum += part.detach()
        grad_norm = accelerator.clip_grad_norm_(trainable, cfg.optim.max_grad_norm)
        lrs = {g["name"]: g["lr"] for g in optimizer.param_groups if not g["name"].endswith("/no_decay")}
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        loss = accelerator.reduce(loss_sum, reduction="sum").item() / n_tokens.item()
        done_steps = step + 1
        record = {
            "phase": index,
            "phase_name": phase.name,
            "step": done_steps,
            "global_step": offset + done_steps,
            "loss": loss,
            "lr": lrs,
            "grad_norm": float(grad_norm),
            "tokens": int(n_tokens.item()),
            "epoch": order.epoch_of(done_steps * phase.grad_accum),
            "elapsed_s": round(time.perf_counter() - started, 3),
        }
        if done_steps % cfg.log_every == 0 or done_steps == total:
            log.write(record)
        callback.on_step(record)
        if done_steps == total:
            break
        if cfg.eval.every_steps and done_steps % cfg.eval.every_steps == 0 and val_samples:
            evals.append(
                _evaluate(vlm, val_samples, cfg, log, callback, index, done_steps, offset + done_steps)
            )
        if cfg.checkpoint.every_steps and done_steps % cfg.checkpoint.every_steps == 0:
            save_checkpoint(
                run_dir, CheckpointState(index, phase.name, done_steps, False), accelerator, model
            )
            prune_checkpoints(run_dir, index, cfg.checkpoint.keep_last)
    if val_samples:
        evals.append(_evaluate(vlm, val_samples, cfg, log, callback, index, total, offset + total))
    path = save_checkpoint(run_dir, CheckpointState(index, phase.name, total, True), accelerator, model)
    prune_checkpoints(run_dir, index, 0)
    callback.on_phase_end(index, path)
    return evals


def _evaluate(
    vlm: VLM, samples: list, cfg: RunConfig, log: JsonlLog, callback, phase, step, global_step
) -> dict:
    predictions = generate(
        vlm, samples, max_new_tokens=cfg.eval.max_new_tokens, batch_size=cfg.eval.batch_size
    )
    scores = score_predictions(predictions, [s.answers for s in samples], [s.id for s in samples])
    record = {"phase": phase, "step": step, "global_step": global_step, "eval": scores}
    log.write(record)
    callback.on_eval(record)
    return record
