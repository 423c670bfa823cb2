"""Engines that shard the weights themselves: DeepSpeed ZeRO-3 and torch FSDP2 (`fully_shard`).

Both partition a module's parameters in place and leave hooks (and, for FSDP2, new classes and DTensor
parameters) on it, which no later phase could undo cleanly. So each phase trains a *twin*: a deep copy of
the VLM that the engine shards, while the VLM's own parameters are emptied (no second full copy stays in
memory). The full weights are gathered back into the VLM (every rank takes part):

    with engine.saving(model): ...      # rank 0's VLM has the full weights (checkpoint export, evaluation)
    engine.close()                      # every rank's VLM has them again; the twin is dropped

so every phase starts from, and every checkpoint exports, a plain model. The optimizer the phase built for
the VLM's parameters is pointed at the twin's parameters of the same names (its state is still empty).

Sharding: FSDP2 shards each repeated block (the elements of every outermost nn.ModuleList: decoder layers,
vision layers) as one unit and the rest (embeddings, tied LM head, projector, norms) as the root unit;
frozen and trainable parameters may share a unit (only the trainable ones get reduce-scattered gradients).
Gradient clipping takes the total norm over the DTensor gradients; accumulation skips the
reduce-scatter until the step's last micro-batch (`set_requires_gradient_sync`).
"""

from __future__ import annotations

import copy
import os
from contextlib import contextmanager, nullcontext
from pathlib import Path

import torch
from torch import nn

from tbi_train.config import RunConfig
from tbi_train.scale.engines import (
    _MOMENTS,
    DeepSpeedEngine,
    _adam_step,
    _load_schedule_and_rng,
    _load_torch_moments,
    _read_engine_file,
    _save_portable_state,
    _torch_moments,
)

__all__ = ["FSDP2Engine", "ZeRO3Engine"]


class _Twin:
    """The VLM <-> twin bookkeeping shared by the sharded engines (they set `device`, `is_main_process`)."""

    sharded = True
    """Weights are partitioned while the phase trains: the VLM is only whole inside `saving`."""

    def _make_twin(self, vlm: nn.Module) -> nn.Module:
        """A deep copy of `vlm` on the training device (tokenizer shared); `vlm`'s parameters are emptied."""
        self.vlm = vlm
        tokenizer = getattr(vlm, "tokenizer", None)
        twin = copy.deepcopy(vlm, memo={id(tokenizer): tokenizer}).to(self.device)
        self._empty_vlm()
        vlm.to(self.device)  # buffers (the parameters are empty now)
        return twin

    def _retarget(self, optimizer: torch.optim.Optimizer, twin: nn.Module) -> None:
        """Point the optimizer's groups at the twin's parameters of the same names."""
        names = {id(p): n for n, p in self.vlm.named_parameters()}
        by_name = dict(twin.named_parameters())
        for group in optimizer.param_groups:
            group["params"] = [by_name[names[id(p)]] for p in group["params"]]

    def _empty_vlm(self) -> None:
        for p in self.vlm.parameters():
            p.data = torch.empty(0, dtype=p.dtype, device=self.device)

    def _fill_vlm(self, everywhere: bool) -> None:
        """Gather every weight from the twin (a collective per parameter) into the VLM, on rank 0 or on all."""
        twin = dict(self._twin_module().named_parameters())
        for name, p in self.vlm.named_parameters():
            full = self._full_weight(twin[name])  # [*shape]
            if everywhere or self.is_main_process:
                p.data = full.detach().to(self.device, copy=True)

    def unwrap_model(self, model) -> nn.Module:
        """The plain VLM (whole inside `saving` on rank 0, and after `close`)."""
        del model
        return self.vlm

    @contextmanager
    def saving(self, model, everywhere: bool = False):
        """Rank 0's VLM (every rank's with `everywhere`) holds the full weights; every rank must enter."""
        del model
        self._fill_vlm(everywhere)
        try:
            yield
        finally:
            self._empty_vlm()

    def _release(self) -> None:
        """Give every rank's VLM its full weights back (the phase's last use of the twin; `close` drops it)."""
        self._fill_vlm(everywhere=True)


class ZeRO3Engine(_Twin, DeepSpeedEngine):
    """DeepSpeed ZeRO-3 (weights, gradients and Adam moments partitioned) around the phase's torch AdamW."""

    kind = "deepspeed"
    evaluate_everywhere = True
    """Every rank runs the evaluations on its gathered VLM (rank 0 records them): a forward on rank 0 alone
    between two steps makes ZeRO-3's module trace differ between the ranks, which it refuses."""

    def prepare(self, model, optimizer, scheduler):
        import deepspeed

        twin = self._make_twin(model)
        self._retarget(optimizer, twin)  # before initialize: ZeRO-3 flattens the optimizer's groups
        self.engine, self.optimizer, _, _ = deepspeed.initialize(
            model=twin, optimizer=optimizer, config=self.config
        )
        self.scheduler = scheduler
        return self.engine

    def _twin_module(self) -> nn.Module:
        return self.engine.module

    def _full_weight(self, p: nn.Parameter) -> torch.Tensor:
        import deepspeed

        with deepspeed.zero.GatheredParameters([p], modifier_rank=None):
            return p.data.detach().clone()

    def close(self) -> None:
        self._release()
        self.engine.destroy()
        self.engine = self.optimizer = None

    def _trainable(self) -> list[tuple[str, nn.Parameter]]:
        return [(n, p) for n, p in self.engine.module.named_parameters() if p.requires_grad]

    def save_state(self, directory: str, safe_serialization: bool = True) -> None:
        """The portable state: full Adam moments per parameter name (gathered), schedule step, RNG per rank."""
        from deepspeed.utils import safe_get_full_optimizer_state

        del safe_serialization
        moments = {}
        stepped = bool(self.optimizer.optimizer.state)
        for name, p in self._trainable():
            for key in ("exp_avg", "exp_avg_sq"):
                # Before the first step AdamW has no state yet: zero moments (what Adam starts from).
                full = safe_get_full_optimizer_state(p, key) if stepped else torch.zeros(p.ds_shape)
                moments[f"{name}/{key}"] = full.detach().cpu().contiguous()
        _save_portable_state(Path(directory), self, moments, self.scheduler, _adam_step(self.optimizer))

    def load_state(self, directory: str | Path, model) -> None:
        """Load a portable state written by any engine at any world size into this rank's partitions.

        ZeRO-3 keeps, per sub-group, one flat fp32 partition per rank: parameter p owns the slice
        [offset, offset + n) of it, n = ceil(numel / world), holding elements [rank * n, (rank + 1) * n)
        of p's flattened (zero-padded) tensor.
        """
        from safetensors.torch import load_file

        del model
        directory = Path(directory)
        step = float(_read_engine_file(directory)["adam_step"])
        moments = load_file(str(directory / _MOMENTS))
        opt, inner = self.optimizer, self.optimizer.optimizer
        for flat in opt.fp32_partitioned_groups_flat:
            inner.state[flat] = {
                "step": torch.tensor(step),
                "exp_avg": torch.zeros_like(flat),
                "exp_avg_sq": torch.zeros_like(flat),
            }
        for name, p in self._trainable():
            group, offset, n = opt.grad_position[opt.get_param_id(p)]
            flat = opt.fp32_partitioned_groups_flat[group]
            for key in ("exp_avg", "exp_avg_sq"):
                full = moments.get(f"{name}/{key}")
                if full is None:  # never had a gradient in the run that wrote the state
                    continue
                padded = torch.zeros(n * self.num_processes)
                padded[: full.numel()] = full.reshape(-1)
                part = padded[self.process_index * n : (self.process_index + 1) * n]
                inner.state[flat][key].narrow(0, offset, n).copy_(part)
        _load_schedule_and_rng(directory, self.scheduler, self.process_index)


class FSDP2Engine(_Twin):
    """torch FSDP2 (`fully_shard`, DTensor parameters) over gloo on the CPU or NCCL on GPUs."""

    kind = "fsdp2"

    def __init__(self, cfg: RunConfig):
        import torch.distributed as dist

        self._own_group = not dist.is_initialized()
        if self._own_group:
            backend = "nccl" if torch.cuda.is_available() else "gloo"
            if "RANK" in os.environ:
                dist.init_process_group(backend)
            else:  # one process without a launcher: FSDP2 still needs a (one-member) process group
                dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1)
        self._dist = dist
        self.num_processes = dist.get_world_size()
        self.process_index = dist.get_rank()
        self.is_main_process = self.process_index == 0
        cuda = torch.cuda.is_available()
        self.device = torch.device("cuda", torch.cuda.current_device()) if cuda else torch.device("cpu")
        bf16 = cfg.precision == "bf16" or (
            cfg.precision == "auto" and cuda and torch.cuda.is_bf16_supported()
        )
        self._param_dtype = torch.bfloat16 if bf16 else None
        self.model = self.optimizer = self.scheduler = None

    def wait_for_everyone(self) -> None:
        self._dist.barrier()

    def prepare(self, model, optimizer, scheduler):
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        twin = self._make_twin(model)
        mesh = init_device_mesh(self.device.type, (self.num_processes,))
        # Gradients are reduced in fp32 even when the forward runs in bf16 (as DeepSpeed's bf16 mode).
        policy = MixedPrecisionPolicy(param_dtype=self._param_dtype, reduce_dtype=torch.float32)
        for unit in _repeated_blocks(twin):
            fully_shard(unit, mesh=mesh, mp_policy=policy)
        fully_shard(twin, mesh=mesh, mp_policy=policy)
        self._retarget(optimizer, twin)  # fully_shard registered new (DTensor) parameters
        self.model, self.optimizer, self.scheduler = twin, optimizer, scheduler
        self._names = {id(p): n for n, p in twin.named_parameters()}
        return twin

    def _twin_module(self) -> nn.Module:
        return self.model

    def _full_weight(self, p: nn.Parameter) -> torch.Tensor:
        return p.full_tensor()

    def micro_step(self, model, last: bool):
        """Reduce-scatter gradients only on the step's last micro-batch (earlier ones accumulate locally)."""
        model.set_requires_gradient_sync(last)
        return nullcontext()

    def backward(self, loss: torch.Tensor) -> None:
        loss.backward()

    def learning_rates(self) -> dict[str, float]:
        return {
            g["name"]: g["lr"] for g in self.optimizer.param_groups if not g["name"].endswith("/no_decay")
        }

    def step(self, params: list, max_norm: float) -> float:
        """Clip by the global norm over the sharded gradients, AdamW on the shards, schedule, zero grads.

        `params` (the VLM's, empty while the twin trains) is ignored: the twin's trainable DTensors are used.
        """
        from torch.distributed.tensor import DTensor

        del params
        trainable = [p for p in self.model.parameters() if p.requires_grad]
        grads = [p.grad for p in trainable if p.grad is not None]
        norm = torch.nn.utils.get_total_norm(grads, 2.0)  # partial norms of the shards -> one DTensor
        if isinstance(norm, DTensor):
            norm = norm.full_tensor()
        torch.nn.utils.clip_grads_with_norm_(trainable, max_norm, norm)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return float(norm)

    def reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        out = tensor.clone()
        self._dist.all_reduce(out)
        return out

    def close(self) -> None:
        self._release()
        self.model = self.optimizer = None
        if self._own_group:  # leave the process as this engine found it
            self._dist.destroy_process_group()

    def save_state(self, directory: str, safe_serialization: bool = True) -> None:
        """The portable state: Adam moments gathered from the shards (every rank), written by rank 0."""
        del safe_serialization
        moments = _torch_moments(self.optimizer, self._names, full=lambda t: t.full_tensor())
        if not self.is_main_process:
            moments = {}
        _save_portable_state(Path(directory), self, moments, self.scheduler, _adam_step(self.optimizer))

    def load_state(self, directory: str | Path, model) -> None:
        """A portable state from any engine and world size, each moment sharded like its parameter."""
        from torch.distributed.tensor import distribute_tensor

        del model

        def place(full: torch.Tensor, p) -> torch.Tensor:
            full = full.to(self.device, p.dtype).reshape(p.shape)
            return distribute_tensor(full, p.device_mesh, p.placements)

        _load_torch_moments(directory, self.optimizer, self._names, place)
        _load_schedule_and_rng(directory, self.scheduler, self.process_index)


def _repeated_blocks(model: nn.Module) -> list[nn.Module]:
    """The elements of every outermost nn.ModuleList with parameters (decoder layers, vision layers)."""
    blocks, inside = [], []
    for name, module in model.named_modules():
        if any(name.startswith(prefix) for prefix in inside):
            continue
        if isinstance(module, nn.ModuleList):
            inside.append(name + ".")
            blocks += [m for m in module if any(True for _ in m.parameters())]
    return blocks
