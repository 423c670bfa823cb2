"""Training engines: the object a phase trains through, one per phase, same calls for every backend.

    engine = make_engine(EngineConfig(kind="deepspeed", zero_stage=2), cfg, phase)
    model = engine.prepare(vlm, optimizer, scheduler)
    with engine.micro_step(model, last=k == accum - 1):
        engine.backward(loss_part)                     # gradients sum over micro-batches and processes
    grad_norm = engine.step(trainable, max_norm)        # clip, optimizer, schedule, zero the gradients

`ddp` is accelerate (plain on one process, DistributedDataParallel over gloo/NCCL on several, manual
accumulation with no_sync); `deepspeed` is a DeepSpeed engine (ZeRO stage 1 or 2 here, optional optimizer
offload; stage 3 in `tbi_train.scale.sharded`) built around the phase's own torch AdamW and schedule,
accumulating in the engine; `fsdp2` is torch's `fully_shard` (`tbi_train.scale.sharded`).
All act as the `accelerator` argument of `save_checkpoint` (is_main_process, wait_for_everyone,
save_state, unwrap_model).

Engine state (a checkpoint's state/ folder) is the same portable format for every engine, so any engine
and world size resumes any other's checkpoint; it holds no weights (they are the checkpoint's model/):
    optimizer_full.safetensors   "<param name>/exp_avg", "/exp_avg_sq" (full, unsharded), "/step"
    engine.json                  kind, world size, Adam step
    scheduler.json               the schedule's step
    rng_<rank>.safetensors       torch RNG state of each rank
"""

from __future__ import annotations

import json
from contextlib import ExitStack, contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from safetensors.torch import load_file, save_file

from tbi_train.config import PhaseConfig, RunConfig
from tbi_train.errors import TrainError

__all__ = ["AccelerateEngine", "DeepSpeedEngine", "EngineConfig", "make_engine"]

_ENGINE_FILE = "engine.json"
_MOMENTS = "optimizer_full.safetensors"


@dataclass(frozen=True)
class EngineConfig:
    """How a run is spread over processes; not part of the run config's hash (the training is the same)."""

    kind: Literal["ddp", "deepspeed", "fsdp2"] = "ddp"
    """ddp: accelerate (DistributedDataParallel when several processes); deepspeed: a DeepSpeed ZeRO engine;
    fsdp2: torch's fully_shard (weights, gradients and Adam moments sharded per layer)."""
    zero_stage: int = 2
    """DeepSpeed only: ZeRO stage 1-3 (seed 000 3.2: ZeRO-2; 3 also partitions the weights)."""
    offload_optimizer: bool = False
    """DeepSpeed only: keep fp32 master weights and Adam moments in CPU memory (ZeRO-2/3)."""
    deepspeed_config: str | None = None
    """DeepSpeed only: a user JSON merged over the one generated from the run config (batch keys must agree)."""


def make_engine(engine: EngineConfig | None, cfg: RunConfig, phase: PhaseConfig):
    """The engine of one phase: `AccelerateEngine`, `DeepSpeedEngine`, `ZeRO3Engine` or `FSDP2Engine`."""
    engine = engine or EngineConfig()
    if engine.kind == "ddp":
        return AccelerateEngine(cfg)
    if engine.kind not in ("deepspeed", "fsdp2"):
        raise TrainError(f"engine {engine.kind!r} is not known; use 'ddp', 'deepspeed' or 'fsdp2'.")
    if cfg.nonfinite_loss == "skip":
        raise TrainError(
            f"nonfinite_loss=skip needs the ddp engine ({engine.kind} has already reduced or accumulated the "
            "earlier micro-batches' gradients outside the optimizer's reach); use nonfinite_loss=stop or "
            "--engine ddp."
        )
    if engine.kind == "fsdp2":
        from tbi_train.scale.sharded import FSDP2Engine

        return FSDP2Engine(cfg)
    if engine.zero_stage == 0:
        raise TrainError("zero_stage=0 is plain data parallelism: use the ddp engine (--engine ddp).")
    if engine.zero_stage == 3:
        from tbi_train.scale.sharded import ZeRO3Engine

        return ZeRO3Engine(cfg, phase, engine)
    return DeepSpeedEngine(cfg, phase, engine)


def _mixed_precision(precision: str) -> str:
    if precision == "fp32":
        return "no"
    if precision == "bf16":
        return "bf16"
    return "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "no"


class AccelerateEngine:
    """accelerate's Accelerator; unused parameters (a tower's final norm) are allowed under DDP."""

    kind = "ddp"

    def __init__(self, cfg: RunConfig):
        from accelerate import Accelerator
        from accelerate.utils import DistributedDataParallelKwargs

        self.accelerator = Accelerator(
            cpu=not torch.cuda.is_available(),
            mixed_precision=_mixed_precision(cfg.precision),
            step_scheduler_with_optimizer=False,
            kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)],
        )
        self.optimizer = self.scheduler = None

    @property
    def device(self) -> torch.device:
        return self.accelerator.device

    @property
    def num_processes(self) -> int:
        return self.accelerator.num_processes

    @property
    def process_index(self) -> int:
        return self.accelerator.process_index

    @property
    def is_main_process(self) -> bool:
        return self.accelerator.is_main_process

    def wait_for_everyone(self) -> None:
        self.accelerator.wait_for_everyone()

    def prepare(self, model, optimizer, scheduler):
        self._names = {id(p): n for n, p in model.named_parameters()}
        model, self.optimizer, self.scheduler = self.accelerator.prepare(model, optimizer, scheduler)
        return model

    def micro_step(self, model, last: bool):
        """Autocast, and no gradient all-reduce before the step's last micro-batch."""
        stack = ExitStack()
        if not last:
            stack.enter_context(self.accelerator.no_sync(model))
        stack.enter_context(self.accelerator.autocast())
        return stack

    def backward(self, loss: torch.Tensor) -> None:
        self.accelerator.backward(loss)

    def learning_rates(self) -> dict[str, float]:
        return {
            g["name"]: g["lr"] for g in self.optimizer.param_groups if not g["name"].endswith("/no_decay")
        }

    def step(self, params: list, max_norm: float) -> float:
        norm = self.accelerator.clip_grad_norm_(params, max_norm)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return float(norm)

    def skip_step(self) -> None:
        """Drop this step's gradients; the schedule still advances (the step counts, its update does not)."""
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()

    def reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        return self.accelerator.reduce(tensor, reduction="sum")

    def close(self) -> None:
        """Release the phase's optimizer references (the next phase prepares its own)."""
        self.accelerator.free_memory()

    def unwrap_model(self, model):
        return self.accelerator.unwrap_model(model)

    def save_state(self, directory: str, safe_serialization: bool = True) -> None:
        """The portable state (no weights: the checkpoint's model/ holds them); every rank has the moments."""
        del safe_serialization
        inner = self.optimizer.optimizer  # accelerate's wrapper holds the torch AdamW
        moments = _torch_moments(inner, self._names) if self.is_main_process else {}
        _save_portable_state(Path(directory), self, moments, self.scheduler, _adam_step(inner))

    def load_state(self, directory: str | Path, model) -> None:
        """A portable state written by any engine at any world size."""
        del model
        _load_torch_moments(directory, self.optimizer.optimizer, self._names)
        _load_schedule_and_rng(directory, self.scheduler, self.process_index)


class DeepSpeedEngine:
    """A DeepSpeed engine around the phase's torch AdamW (DeepSpeed's fused Adam would JIT-compile)."""

    kind = "deepspeed"

    def __init__(self, cfg: RunConfig, phase: PhaseConfig, engine: EngineConfig):
        import deepspeed
        import torch.distributed as dist

        from tbi_train.scale.deepspeed_config import runtime_deepspeed_config

        deepspeed.init_distributed(dist_backend="nccl" if torch.cuda.is_available() else "gloo")
        self._dist = dist
        self.num_processes = dist.get_world_size()
        self.process_index = dist.get_rank()
        self.is_main_process = self.process_index == 0
        self.config = runtime_deepspeed_config(cfg, phase, engine, self.num_processes)
        self.engine = self.optimizer = self.scheduler = None
        local = torch.cuda.current_device() if torch.cuda.is_available() else None
        self.device = torch.device("cuda", local) if local is not None else torch.device("cpu")

    def wait_for_everyone(self) -> None:
        self._dist.barrier()

    def prepare(self, model, optimizer, scheduler):
        import deepspeed

        self.engine, self.optimizer, _, _ = deepspeed.initialize(
            model=model, optimizer=optimizer, config=self.config
        )
        self.scheduler = scheduler  # stepped here, once per optimizer step, as in the ddp engine
        return self.engine

    def micro_step(self, model, last: bool):
        dtype = torch.bfloat16 if self.config.get("bf16", {}).get("enabled") else None
        if dtype is None:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=dtype)

    def backward(self, loss: torch.Tensor) -> None:
        # The loss is already divided by the step's token count: no further 1/accumulation scaling.
        self.engine.backward(loss, scale_wrt_gas=False)

    def learning_rates(self) -> dict[str, float]:
        return {
            g["name"]: g["lr"] for g in self.optimizer.param_groups if not g["name"].endswith("/no_decay")
        }

    def step(self, params: list, max_norm: float) -> float:
        """The engine steps at its accumulation boundary (this call): clip (config), AdamW, zero grads."""
        del params, max_norm  # clipping is the config's "gradient_clipping"
        self.engine.step()
        self.scheduler.step()
        return float(self.engine.get_global_grad_norm())

    def reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        out = tensor.clone()
        self._dist.all_reduce(out)
        return out

    def unwrap_model(self, model):
        return model.module if hasattr(model, "module") else model

    def close(self) -> None:
        """Remove the engine's gradient hooks and give every weight its own storage again (ZeRO-1/2 views)."""
        self.engine.destroy()
        for p in self.engine.module.parameters():
            p.data = p.data.clone()

    @contextmanager
    def saving(self, model):
        """Weights safetensors can write: ZeRO-1/2 keep every weight as a view into one flat buffer, so
        each is copied to CPU memory of its own for the save."""
        params = list(self.unwrap_model(model).parameters())
        views = [p.data for p in params]
        for p in params:
            p.data = p.data.to("cpu", copy=True)
        try:
            yield
        finally:
            for p, view in zip(params, views):
                p.data = view

    def save_state(self, directory: str, safe_serialization: bool = True) -> None:
        """The portable state: full Adam moments per parameter name, schedule step, RNG per rank."""
        del safe_serialization
        moments = self._full_moments()
        _save_portable_state(Path(directory), self, moments, self.scheduler, _adam_step(self.optimizer))

    def _flat_groups(self):
        """(this rank's fp32 partition, the group's parameters in flattened order) per ZeRO-1/2 param group.

        ZeRO-1/2 flatten each group's parameters end to end (padding only at the end) and give rank r the
        r-th of W equal slices; the torch AdamW's state lives on those slices.
        """
        opt = self.optimizer
        if not hasattr(opt, "single_partition_of_fp32_groups"):
            raise TrainError(
                "DeepSpeed kept the optimizer unpartitioned (ZeRO-0); train with the ddp engine instead, "
                "or use zero_stage=1 or 2."
            )
        return list(zip(opt.single_partition_of_fp32_groups, opt.round_robin_bit16_groups))

    def _full_moments(self) -> dict[str, torch.Tensor]:
        names = {id(p): n for n, p in self.engine.module.named_parameters()}
        inner = self.optimizer.optimizer
        moments = {}
        for partition, params in self._flat_groups():
            state = inner.state.get(partition, {})
            for key in ("exp_avg", "exp_avg_sq"):
                local = state.get(key, torch.zeros_like(partition)).detach().contiguous()
                parts = [torch.empty_like(local) for _ in range(self.num_processes)]
                self._dist.all_gather(parts, local)
                full = torch.cat(parts)  # [padded group size]
                offset = 0
                for p in params:
                    moments[f"{names[id(p)]}/{key}"] = full[offset : offset + p.numel()].view(p.shape).cpu()
                    offset += p.numel()
        return moments

    def load_state(self, directory: str | Path, model) -> None:
        """Load a portable state written by any engine at any world size."""
        del model
        directory = Path(directory)
        info = _read_engine_file(directory)
        moments = load_file(str(directory / _MOMENTS))
        names = {id(p): n for n, p in self.engine.module.named_parameters()}
        inner = self.optimizer.optimizer
        for partition, params in self._flat_groups():
            state = {"step": torch.tensor(float(info["adam_step"]))}
            for key in ("exp_avg", "exp_avg_sq"):
                # A parameter without a moment (never had a gradient in a ddp run) starts from zero, as in Adam.
                full = torch.cat(
                    [moments.get(f"{names[id(p)]}/{key}", torch.zeros(p.numel())).reshape(-1) for p in params]
                )
                size = partition.numel()
                padded = torch.zeros(size * self.num_processes)
                padded[: full.numel()] = full
                start = self.process_index * size
                state[key] = padded[start : start + size].to(partition.device, partition.dtype).clone()
            inner.state[partition] = state
        _load_schedule_and_rng(directory, self.scheduler, self.process_index)


def _adam_step(optimizer) -> int:
    inner = getattr(optimizer, "optimizer", optimizer)
    steps = [float(s["step"]) for s in inner.state.values() if "step" in s]
    return int(max(steps)) if steps else 0


def _save_portable_state(directory: Path, engine, moments: dict, scheduler, adam_step: int) -> None:
    """Write the portable engine state into `directory` (every rank calls; rank 0 writes the shared files)."""
    if engine.is_main_process:
        directory.mkdir(parents=True, exist_ok=True)
        save_file(moments, str(directory / _MOMENTS))
    engine.wait_for_everyone()
    _save_schedule_and_rng(directory, scheduler, engine.process_index)
    if engine.is_main_process:
        info = {"kind": engine.kind, "world_size": engine.num_processes, "adam_step": adam_step}
        path = directory / _ENGINE_FILE
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(info) + "\n")
        tmp.replace(path)
    engine.wait_for_everyone()


def _torch_moments(optimizer, names: dict[int, str], full=lambda t: t) -> dict[str, torch.Tensor]:
    """The Adam moments and step of a torch AdamW by parameter name (CPU); `full` unshards a moment
    (an FSDP2 DTensor's full_tensor, a collective: every rank calls this in the same order)."""
    moments = {}
    for group in optimizer.param_groups:
        for p in group["params"]:
            state = optimizer.state.get(p)
            if not state:  # no gradient yet (a tower's final norm): AdamW has no state for it either
                continue
            name = names[id(p)]
            moments[f"{name}/exp_avg"] = full(state["exp_avg"]).detach().cpu().contiguous()
            moments[f"{name}/exp_avg_sq"] = full(state["exp_avg_sq"]).detach().cpu().contiguous()
            moments[f"{name}/step"] = state["step"].detach().cpu().reshape(())
    return moments


def _load_torch_moments(directory, optimizer, names: dict[int, str], place=None) -> None:
    """Portable moments into a torch AdamW; `place(full, param)` shards a full moment like its parameter
    (default: the parameter's device and dtype)."""
    directory = Path(directory)
    info = _read_engine_file(directory)
    moments = load_file(str(directory / _MOMENTS))
    place = place or (lambda full, p: full.to(p.device, p.dtype).view_as(p).clone())
    for group in optimizer.param_groups:
        for p in group["params"]:
            name = names[id(p)]
            if f"{name}/exp_avg" not in moments:
                continue
            # DeepSpeed writes one Adam step for all its flat partitions; torch AdamW keeps one per parameter.
            step = moments.get(f"{name}/step", torch.tensor(float(info["adam_step"])))
            optimizer.state[p] = {
                "step": step.clone(),
                "exp_avg": place(moments[f"{name}/exp_avg"], p),
                "exp_avg_sq": place(moments[f"{name}/exp_avg_sq"], p),
            }


def _read_engine_file(directory) -> dict:
    path = Path(directory) / _ENGINE_FILE
    return json.loads(path.read_text()) if path.is_file() else {"kind": "ddp"}


def _save_schedule_and_rng(directory: Path, scheduler, rank: int) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    state = {"rng_cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["rng_cuda"] = torch.cuda.get_rng_state()
    save_file(state, str(directory / f"rng_{rank}.safetensors"))
    if rank == 0:
        inner = getattr(scheduler, "scheduler", scheduler)
        (directory / "scheduler.json").write_text(json.dumps({"last_epoch": inner.last_epoch}) + "\n")


def _load_schedule_and_rng(directory: Path, scheduler, rank: int) -> None:
    directory = Path(directory)
    last = json.loads((directory / "scheduler.json").read_text())["last_epoch"]
    inner = getattr(scheduler, "scheduler", scheduler)  # accelerate's wrapper holds the LambdaLR
    for _ in range(last - inner.last_epoch):
        inner.step()
    rng = directory / f"rng_{rank}.safetensors"
    if not rng.is_file():  # a run with fewer processes: the extra ranks start from rank 0's stream
        rng = directory / "rng_0.safetensors"
    state = load_file(str(rng))
    torch.set_rng_state(state["rng_cpu"])
    if "rng_cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["rng_cuda"])
