"""Train a resolved RunConfig: data -> model -> phases (through accelerate) -> checkpoints -> final model.

    result = train(resolve_config("tiny"), "runs/tiny")          # fresh run
    result = train(cfg, "runs/tiny", resume=True)                # continue from the last complete checkpoint
    result = train(cfg, "runs/tiny", engine=EngineConfig("deepspeed", zero_stage=2))  # in each torchrun worker

Under torchrun (or the deepspeed / accelerate launchers) every process calls `train` with the same arguments:
rank 0 writes the run folder, data, tokenizer, logs and checkpoints; all ranks train data-parallel.

Run folder: config.json (resolved config, its hash in run.json), data/ (synthetic data when no paths are
given), tokenizer/ (trained BPE of a random LM), checkpoints/, log.jsonl, train_loss.png,
val_scores.png, final/ (the trained VLM).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from tbi_train.config import PhaseConfig, RunConfig, config_hash, save_config
from tbi_train.errors import TrainError
from tbi_train.eval import generate, score_predictions
from tbi_train.model import VLM, build_vlm, save_vlm
from tbi_train.model.frozen_dtype import cast_frozen_parts, frozen_dtype_for, frozen_groups
from tbi_train.model.lm import check_quantization
from tbi_train.scale.engines import make_engine
from tbi_train.train.checkpoint import CheckpointState, latest_checkpoint, prune_checkpoints, save_checkpoint
from tbi_train.train.evaluation import EvalSet, check_benchmarks, load_eval_set, score_benchmarks
from tbi_train.train.log import JsonlLog, RunLog, plot_curves
from tbi_train.train.loss import count_targets, token_loss_sum
from tbi_train.train.optim import build_optimizer, build_scheduler, set_trainable
from tbi_train.train.order import DataOrder
from tbi_train.train.sinks import check_sinks, open_sinks

if TYPE_CHECKING:
    from tbi_train.scale.engines import EngineConfig

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
    engine: EngineConfig | None = None,
) -> RunResult:
    """Run every phase of `cfg` into `out_dir` and return where the results are.

    Args:
        cfg: the resolved config (frozen; its hash is recorded and checked on resume).
        out_dir: the run folder.
        resume: continue from the last complete checkpoint in `out_dir` (the final weights equal those of
            an uninterrupted run with the same config).
        callback: progress hooks.
        engine: how the phases train across processes (`tbi_train.scale.EngineConfig`; default: accelerate,
            i.e. plain on one process and DDP under torchrun). Not part of the config hash: a checkpoint
            of one engine and world size resumes under another.

    Raises:
        TrainError: `out_dir` holds another run, or resume was asked with a different config.
    """
    from accelerate import PartialState
    from accelerate.utils import set_seed

    callback = callback or TrainCallback()
    run_dir = Path(out_dir)
    _check_paths(cfg)
    check_quantization(cfg)  # model.lm.quantize: refused here, before any folder or model exists
    check_sinks(cfg.log.sinks)
    check_benchmarks(cfg.eval)
    # Joins torchrun's process group (gloo on the CPU); one process: a no-op.
    state = PartialState(cpu=not torch.cuda.is_available())
    main = state.is_main_process
    digest = _check_run_dir(cfg, run_dir, resume, state.num_processes)
    state.wait_for_everyone()
    if main:
        _claim_run_dir(cfg, run_dir, digest, state.num_processes)
    log = JsonlLog(run_dir / "log.jsonl") if main else _NullLog()
    latest = latest_checkpoint(run_dir) if resume else None
    if latest is not None:
        done = latest[0]
        log.keep(lambda r: (r["phase"], r["step"]) <= (done.phase_index, done.step))
        logger.info("resuming from %s", latest[1])
    elif main and log.path.exists():
        log.path.unlink()
    if main:
        log = _with_sinks(cfg, log, run_dir, resume)

    # Rank 0 generates the synthetic data and trains the tokenizer; the others read them afterwards.
    if main:
        data = _datasets(cfg, run_dir)
        set_seed(cfg.seed)
        vlm = build_vlm(cfg.model, cache_dir=run_dir, corpus=_corpus(data.train))
    state.wait_for_everyone()
    if not main:
        data = _datasets(cfg, run_dir)
        set_seed(cfg.seed)
        vlm = build_vlm(cfg.model, cache_dir=run_dir, corpus=_corpus(data.train))
    if latest is not None:
        _load_weights(vlm, latest[1] / "model" / "model.safetensors")
    _cast_frozen(cfg, vlm)

    val_samples = load_eval_set(
        cfg, [data.val[i] for i in range(min(cfg.eval.limit, len(data.val)))] if data.val is not None else []
    )
    evals = [r for r in log.read() if "eval" in r]
    offsets = _global_offsets(cfg, data.train)
    if main and latest is None and cfg.eval.at_start and val_samples:
        evals.append(_evaluate(vlm, val_samples, cfg, log, callback, phase=0, step=0, global_step=0))

    for index, phase in enumerate(cfg.phases):
        start_step, state_dir = 0, None
        if latest is not None:
            done = latest[0]
            if index < done.phase_index or (index == done.phase_index and done.phase_done):
                continue
            if index == done.phase_index:
                start_step, state_dir = done.step, latest[1] / "state"
        evals += _run_phase(
            cfg, index, phase, vlm, data.train, val_samples, make_engine(engine, cfg, phase), run_dir, log,
            callback, start_step, state_dir, offsets[index],
        )  # fmt: skip

    final = run_dir / "final"
    if main:
        save_vlm(vlm, final)
        plot_curves(log.read(), run_dir)
        log.close()
        (run_dir / "summary.json").write_text(
            json.dumps(
                {"config_hash": digest, "evals": evals, "final_model": str(final)},
                indent=2,
                ensure_ascii=False,
            )
            + "\n"
        )
    state.wait_for_everyone()
    return RunResult(run_dir, final, evals, digest)


def _with_sinks(cfg: RunConfig, log: JsonlLog, run_dir: Path, resume: bool) -> RunLog:
    """Rank 0's log: log.jsonl plus the `log.sinks`; on resume TensorBoard drops events after the kept records."""
    kept = [r.get("global_step", 0) for r in log.read()] if resume else []
    sinks = open_sinks(
        cfg.log.sinks,
        run_dir,
        resume_step=max(kept, default=-1) if resume else None,
        project=cfg.log.wandb_project,
        config={"name": cfg.name, "seed": cfg.seed, "config_hash": config_hash(cfg)},
    )
    return RunLog(log.path, sinks)


def _cast_frozen(cfg: RunConfig, vlm: VLM) -> None:
    """model.frozen_dtype: store the base weights no phase trains in bf16 (see tbi_train.model.frozen_dtype)."""
    dtype = frozen_dtype_for(cfg.model.frozen_dtype, cfg.precision)
    groups = frozen_groups(cfg.phases)
    if dtype is not None and groups:
        freed = cast_frozen_parts(vlm, groups, dtype)
        logger.info("frozen parts %s stored in %s: %.1f MB of parameters freed", groups, dtype, freed / 2**20)


class _NullLog:
    """The log of ranks other than 0: they train but do not write."""

    def write(self, record: dict) -> None:
        del record

    def keep(self, predicate) -> None:
        del predicate

    def read(self) -> list[dict]:
        return []


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


def _check_run_dir(cfg: RunConfig, run_dir: Path, resume: bool, world: int = 1) -> str:
    """The config's hash, after checking `run_dir` is free (or, on resume, holds the same training).

    The same training: the same config, or one that only splits each phase's global batch
    (batch_size x grad_accum x processes) differently, e.g. 2 processes x batch 2 resumed by
    1 process x batch 2 x 2 accumulation steps.
    """
    digest = config_hash(cfg)
    marker = run_dir / "run.json"
    if marker.is_file():
        recorded = json.loads(marker.read_text())
        previous = recorded.get("config_hash")
        if resume and not _same_global_batches(run_dir, recorded, cfg, world):
            raise TrainError(
                f"{run_dir} was trained with config {previous}, not {digest}; resume with the same config "
                f"(see {run_dir / 'config.json'}; only how each phase's global batch is split over "
                f"batch_size, grad_accum and processes may change) or choose another --out."
            )
        if not resume:
            raise TrainError(
                f"{run_dir} already holds a run; pass --resume to continue it or choose another --out."
            )
    return digest


def _same_global_batches(run_dir: Path, recorded: dict, cfg: RunConfig, world: int) -> bool:
    from tbi_train.config import load_config

    old_world = int(recorded.get("world_size", 1))
    if recorded.get("config_hash") == config_hash(cfg) and old_world == world:
        return True
    try:
        before = load_config(run_dir / "config.json")
    except TrainError:
        return False
    if len(before.phases) != len(cfg.phases):
        return False
    for old, new in zip(before.phases, cfg.phases):
        if old.batch_size * old.grad_accum * old_world != new.batch_size * new.grad_accum * world:
            return False
    split = tuple(
        dataclasses.replace(new, batch_size=old.batch_size, grad_accum=old.grad_accum)
        for old, new in zip(before.phases, cfg.phases)
    )
    return config_hash(dataclasses.replace(cfg, phases=split)) == recorded.get("config_hash")


def _claim_run_dir(cfg: RunConfig, run_dir: Path, digest: str, world: int = 1) -> None:
    marker = run_dir / "run.json"
    run_dir.mkdir(parents=True, exist_ok=True)
    save_config(cfg, run_dir / "config.json")
    marker.write_text(json.dumps({"config_hash": digest, "name": cfg.name, "world_size": world}) + "\n")


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
    kwargs["replicate_image_frames"] = cfg.data.replicate_image_frames
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


def _load_weights(vlm: VLM, path: Path) -> None:
    from safetensors.torch import load_model

    load_model(vlm, str(path), strict=True)


def _run_phase(
    cfg: RunConfig,
    index: int,
    phase: PhaseConfig,
    vlm: VLM,
    train_ds,
    val_samples: EvalSet,
    engine,
    run_dir: Path,
    log: JsonlLog,
    callback: TrainCallback,
    start_step: int,
    state_dir: Path | None,
    offset: int,
) -> list[dict]:
    """One phase: freeze, optimizer + schedule, the step loop with accumulation, evals, checkpoints.

    `engine` is a `tbi_train.scale.engines` engine (accelerate/DDP, DeepSpeed, FSDP2) made for this phase.
    A sharded engine (ZeRO-3, FSDP2) trains a twin of `vlm` and gives `vlm` its weights back at `close`.
    """
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
    world, rank, device = engine.num_processes, engine.process_index, engine.device
    total = _total_steps(phase, len(dataset), world)
    optimizer = build_optimizer(groups, phase, cfg.optim)
    scheduler = build_scheduler(optimizer, total, phase, cfg.optim)
    model = engine.prepare(vlm, optimizer, scheduler)
    if cfg.compile:  # in place on vlm.lm / vlm.vision: state_dict keys and the engine's wrapper unchanged
        from tbi_train.model.compile import compile_vlm

        compile_vlm(vlm)
    if state_dir is not None:
        engine.load_state(state_dir, model)
    trainable = [p for p in vlm.parameters() if p.requires_grad]
    order = DataOrder(
        len(dataset), phase.batch_size, seed=cfg.seed * 7919 + index, world_size=world, rank=rank
    )
    logger.info(
        "phase %d %s: %d steps, %d trainable parameters, %d processes (%s)",
        index, phase.name, total, n_trainable, world, engine.kind,
    )  # fmt: skip
    callback.on_phase_start(index, phase, total, start_step)
    evals: list[dict] = []
    model.train()
    started = time.perf_counter()
    for step in range(start_step, total):
        step_start = time.perf_counter()
        ids = [order.indices(step * phase.grad_accum + k) for k in range(phase.grad_accum)]
        micro = [collator([dataset[i] for i in part]) for part in ids]
        sample_ids = [s for b in micro for s in b["sample_ids"]]
        counts = torch.tensor(
            [
                float(sum(count_targets(b["labels"]) for b in micro)),
                float(sum(int(b["attention_mask"].sum()) for b in micro)),
                float(sum(len(b["sample_ids"]) for b in micro)),
            ],
            device=device,
        )
        totals = engine.reduce_sum(counts)
        n_tokens = totals[0]
        if n_tokens.item() == 0:
            raise TrainError(
                f"phase {phase.name} step {step}: no supervised tokens in samples {sample_ids[:8]}."
            )
        loss_sum = torch.zeros((), device=device)
        finite = True
        lrs = engine.learning_rates()
        for k, batch in enumerate(micro):
            # Gradients of all micro-batches (and processes) sum to d(total loss / total tokens).
            with engine.micro_step(model, last=k == len(micro) - 1):
                logits = model(
                    input_ids=batch["input_ids"].to(device),
                    attention_mask=batch["attention_mask"].to(device),
                    pixel_values=batch["pixel_values"].to(device),
                    image_token_mask=batch["image_token_mask"].to(device),
                    # native-resolution (Qwen2.5-VL) batches also carry each image's patch grid
                    **{k: batch[k].to(device) for k in ("image_grid_thw",) if k in batch},
                )  # [B, L, V]
                part = token_loss_sum(logits, batch["labels"].to(device))
                # Every rank must agree before any NaN reaches a gradient (DeepSpeed reduces as it goes).
                bad = engine.reduce_sum((~torch.isfinite(part.detach())).float())
                if bad.item() > 0:
                    finite = False
                    break
                engine.backward(part * world / n_tokens)
            loss_sum += part.detach()
        done_steps = step + 1
        if not finite:
            _nonfinite(cfg, phase, index, step, sample_ids, rank, engine, log, offset)
            grad_norm = float("nan")
        else:
            grad_norm = engine.step(trainable, cfg.optim.max_grad_norm)
        seconds = time.perf_counter() - step_start
        local_tokens, local_samples = counts[1].item(), counts[2].item()
        record = {
            "phase": index,
            "phase_name": phase.name,
            "step": done_steps,
            "global_step": offset + done_steps,
            "loss": engine.reduce_sum(loss_sum).item() / n_tokens.item() if finite else float("nan"),
            "lr": lrs,
            "grad_norm": float(grad_norm),
            "tokens": int(n_tokens.item()),
            "epoch": order.epoch_of(done_steps * phase.grad_accum),
            "elapsed_s": round(time.perf_counter() - started, 3),
            "processes": world,
            "throughput": {
                "tokens_per_s": totals[1].item() / seconds,
                "samples_per_s": totals[2].item() / seconds,
                "tokens_per_s_per_process": local_tokens / seconds,
                "samples_per_s_per_process": local_samples / seconds,
            },
        }
        if not finite:
            record["skipped"] = True
        if done_steps % cfg.log_every == 0 or done_steps == total:
            log.write(record)
        if engine.is_main_process:
            callback.on_step(record)
        if done_steps == total:
            break
        if cfg.eval.every_steps and done_steps % cfg.eval.every_steps == 0 and val_samples:
            evals += _evaluate_on_main(engine, model, vlm, val_samples, cfg, log, callback, index, done_steps,
                                       offset)  # fmt: skip
        if cfg.checkpoint.every_steps and done_steps % cfg.checkpoint.every_steps == 0:
            with _saving(engine, model):
                save_checkpoint(run_dir, CheckpointState(index, phase.name, done_steps, False), engine, model)
            if engine.is_main_process:
                prune_checkpoints(run_dir, index, cfg.checkpoint.keep_last)
            engine.wait_for_everyone()
    if val_samples:
        evals += _evaluate_on_main(engine, model, vlm, val_samples, cfg, log, callback, index, total, offset)
    with _saving(engine, model):
        path = save_checkpoint(run_dir, CheckpointState(index, phase.name, total, True), engine, model)
    if engine.is_main_process:
        prune_checkpoints(run_dir, index, 0)
        callback.on_phase_end(index, path)
    engine.wait_for_everyone()
    engine.close()
    return evals


def _saving(engine, model):
    """Weights in a form `save_vlm` can write (DeepSpeed ZeRO-1/2 keep them as views into flat buffers,
    ZeRO-3 and FSDP2 sharded: gathered into rank 0's VLM)."""
    saving = getattr(engine, "saving", None)
    return saving(model) if saving is not None else nullcontext()


def _nonfinite(cfg, phase, index, step, sample_ids, rank, engine, log, offset) -> None:
    """A NaN/Inf loss: log the step and this rank's sample ids, then stop or skip per `cfg.nonfinite_loss`."""
    where = f"phase {index} ({phase.name}) step {step + 1}"
    logger.error("non-finite loss at %s on rank %d, samples %s", where, rank, sample_ids)
    log.write(
        {
            "phase": index,
            "step": step + 1,
            "global_step": offset + step + 1,
            "nonfinite_loss": True,
            "rank": rank,
            "sample_ids": sample_ids,
            "action": cfg.nonfinite_loss,
        }
    )
    if cfg.nonfinite_loss == "stop":
        raise TrainError(
            f"non-finite loss at {where}; samples {sample_ids} (rank {rank}). Check those samples, lower the "
            f"learning rate, or set nonfinite_loss=skip to skip such steps."
        )
    engine.skip_step()


def _evaluate_on_main(engine, model, vlm, samples, cfg, log, callback, index, step, offset) -> list[dict]:
    """Rank 0 generates and scores while the others wait (after a sharded engine gathered its weights;
    ZeRO-3 has every rank generate, rank 0 records)."""
    out = []
    everywhere = getattr(engine, "evaluate_everywhere", False)
    with engine.saving(model, everywhere) if getattr(engine, "sharded", False) else nullcontext():
        if engine.is_main_process or everywhere:
            record = _evaluate(vlm, samples, cfg, log, callback, index, step, offset + step)
            out += [record] if engine.is_main_process else []
        engine.wait_for_everyone()
    model.train()
    return out


def _evaluate(
    vlm: VLM, samples: EvalSet, cfg: RunConfig, log: JsonlLog, callback, phase, step, global_step
) -> dict:
    """Exact match / token F1 on the validation samples and each `eval.benchmarks` score, logged as one record."""
    scores = {}
    if samples.samples:
        val = samples.samples
        predictions = generate(
            vlm, val, max_new_tokens=cfg.eval.max_new_tokens, batch_size=cfg.eval.batch_size
        )
        scores = score_predictions(predictions, [s.answers for s in val], [s.id for s in val])
    scores.update(score_benchmarks(vlm, samples, cfg.eval))
    record = {"phase": phase, "step": step, "global_step": global_step, "eval": scores}
    if cfg.eval.attention_entropy and samples.samples:  # seed 003 Fig 6
        from tbi_train.eval.maps import attention_entropy

        record["attention_entropy"] = attention_entropy(vlm, samples.samples, cfg.eval.batch_size)
    log.write(record)
    callback.on_eval(record)
    return record
