"""FT -> merge -> MoLE (seed 000 D4/F4): upcycle the merged VLM's LM with experts from the Korean fine-tune,
the original model and the merged model, then train router and experts on a 50/50 Korean/English mix.

Saved as `base/` (the merged VLM, `tbi_train.model.save_vlm`), `mole.json` (layers, experts, MoLEConfig) and
`model.safetensors` (every weight of the upcycled VLM); `load_mole_vlm` rebuilds it exactly.

Mid-step resume (single process): with `checkpoint_dir` and `checkpoint_every=N`, every N optimizer steps
`checkpoint_dir/step-<k>/` holds the MoLE weights (router, experts, shared expert: `mole.safetensors`), the
optimizer, scheduler and RNG states and the step (`state.pt`, read back with `weights_only=True`). Each is
written into a hidden temporary folder, the `COMPLETE` marker last, then renamed; a folder without the marker is
never read. A new call with the same arguments rebuilds the upcycled model, loads the latest complete
checkpoint and continues at step k + 1: the final weights are bitwise equal to an uninterrupted run.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import torch

from tbi_train.errors import TrainError

__all__ = ["load_mole_vlm", "train_mole"]

logger = logging.getLogger(__name__)

_EXPERTS = ("ko", "en", "shared")
_MARKER = "COMPLETE"


def _mole_config(spec: dict):
    from tbi_mole import MoLEConfig

    return MoLEConfig(
        router_type="mlp",
        router_hidden_dim=int(spec["router_hidden_dim"]),
        router_temperature=float(spec["router_temperature"]),
        capacity_factor=float(spec["capacity_factor"]),
        load_balancing_loss_weight=float(spec["load_balancing_loss_weight"]),
    )


def _is_mole_param(name: str) -> bool:
    return ".mlp.experts." in name or ".mlp.router." in name or ".mlp.shared_expert." in name


def train_mole(
    experts: dict[str, Path],
    spec: dict,
    dataset,
    out: str | Path,
    seed: int,
    max_length: int,
    optim,
    log_path: Path | None = None,
    checkpoint_dir: str | Path | None = None,
    checkpoint_every: int = 0,
    on_step: Callable[[dict], None] | None = None,
) -> Path:
    """Upcycle `experts["shared"]`'s LM at `spec["layers"]` with experts ko/en/shared and train the MoLE layers.

    Args:
        experts: saved VLM folders: "ko" (Korean fine-tune), "en" (the original model), "shared" (the merge).
        spec: layers, router_hidden_dim, router_temperature, capacity_factor, load_balancing_loss_weight and
            phase (a PhaseConfig dict: steps, batch_size, grad_accum, warmup_steps, lr.lm for experts + router).
        dataset: the training samples (50/50 mix), a `ConversationDataset`.
        out: output folder (written under a temporary name, then renamed).
        optim: the run's `OptimConfig` (betas, weight decay, clipping, schedule).
        log_path: JSONL log the steps are appended to (on resume, records after the checkpoint are dropped).
        checkpoint_dir: where mid-step checkpoints are kept; the latest complete one is resumed from. Removed
            once the model is written.
        checkpoint_every: checkpoint every N optimizer steps (0: never).
        on_step: called with each step's log record after its checkpoint (progress; an exception stops the run
            and the next call resumes from the last checkpoint).
    Loss: sum_t CE / n_targets + sum over MoLE layers of w_lb * load-balancing loss (tbi_mole.collect_aux_loss).
    """
    from accelerate.utils import set_seed
    from safetensors.torch import save_model
    from transformers import get_constant_schedule_with_warmup, get_cosine_schedule_with_warmup

    from tbi_mole import collect_aux_loss, upcycle
    from tbi_train.data import Collator
    from tbi_train.model import load_vlm
    from tbi_train.train import DataOrder, JsonlLog, count_targets, token_loss_sum

    out = Path(out)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    set_seed(seed)
    vlm = load_vlm(experts["shared"])
    shutil.copytree(experts["shared"], tmp / "base")
    sources = {"ko": load_vlm(experts["ko"]).lm, "en": load_vlm(experts["en"]).lm, "shared": vlm.lm}
    layers = [int(i) for i in spec["layers"]]
    upcycle(vlm.lm, layers, sources, _mole_config(spec))
    del sources
    params = []
    for name, param in vlm.named_parameters():
        param.requires_grad_(_is_mole_param(name))
        if param.requires_grad:
            params.append(param)
    phase = spec["phase"]
    lr = float(phase["lr"]["lm"])
    steps = int(phase["steps"] or max(1, math.ceil(phase["epochs"] * len(dataset) / phase["batch_size"])))
    optimizer = torch.optim.AdamW(
        params, lr=lr, betas=tuple(optim.betas), eps=optim.eps, weight_decay=optim.weight_decay
    )
    make = (
        get_cosine_schedule_with_warmup if optim.schedule == "cosine" else get_constant_schedule_with_warmup
    )
    kwargs = {"num_training_steps": steps} if optim.schedule == "cosine" else {}
    scheduler = make(optimizer, num_warmup_steps=int(phase["warmup_steps"]), **kwargs)
    collator = Collator(vlm.tokenizer, vlm.image_transform, vlm.tokens_per_image, "answers",
                        max_length=max_length, image_token=vlm.config.tokenizer.image_pad_token)  # fmt: skip
    order = DataOrder(len(dataset), int(phase["batch_size"]), seed=seed * 7919 + 99)
    log = JsonlLog(log_path) if log_path is not None else None
    ckpt_dir = Path(checkpoint_dir) if checkpoint_dir is not None else None
    start = 0
    found = _latest_checkpoint(ckpt_dir) if ckpt_dir is not None else None
    if found is not None:
        start = _load_checkpoint(found, vlm, optimizer, scheduler)
        logger.info("MoLE resumes after step %d from %s", start, found)
    if log is not None:
        log.keep(lambda r: r.get("phase") != "mole" or r.get("step", 0) <= start)
    vlm.train()
    started = time.perf_counter()
    accum = int(phase["grad_accum"])
    for step in range(start, steps):
        micro = [collator([dataset[i] for i in order.indices(step * accum + k)]) for k in range(accum)]
        n_tokens = sum(count_targets(b["labels"]) for b in micro)
        if n_tokens == 0:
            raise TrainError(
                f"MoLE step {step}: no supervised tokens in the batch; check the 50/50 mix data."
            )
        total, aux_total = 0.0, 0.0
        for batch in micro:
            logits = vlm(
                input_ids=batch["input_ids"],
                attention_mask=batch["attention_mask"],
                pixel_values=batch["pixel_values"],
                image_token_mask=batch["image_token_mask"],
            )  # [B, L, V]
            part = token_loss_sum(logits, batch["labels"]) / n_tokens
            aux = collect_aux_loss(vlm.lm) / accum
            (part + aux).backward()
            total += float(part.detach())
            aux_total += float(aux.detach())
        grad_norm = torch.nn.utils.clip_grad_norm_(params, optim.max_grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        record = {"phase": "mole", "phase_name": "mole", "step": step + 1, "loss": total, "aux_loss": aux_total,
                  "grad_norm": float(grad_norm), "elapsed_s": round(time.perf_counter() - started, 3)}  # fmt: skip
        if log is not None:
            log.write(record)
        if (
            ckpt_dir is not None
            and checkpoint_every > 0
            and (step + 1) % checkpoint_every == 0
            and step + 1 < steps
        ):
            _save_checkpoint(ckpt_dir, step + 1, vlm, optimizer, scheduler)
        if on_step is not None:
            on_step(record)
    vlm.eval()
    meta = {"layers": layers, "experts": list(_EXPERTS), "config": _mole_config(spec).to_dict()}
    (tmp / "mole.json").write_text(json.dumps(meta, indent=2) + "\n")
    save_model(vlm, str(tmp / "model.safetensors"), metadata={"format": "pt"})
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    if ckpt_dir is not None:
        shutil.rmtree(ckpt_dir, ignore_errors=True)
    logger.info("trained MoLE layers %s for %d steps -> %s", layers, steps, out)
    return out


def _mole_state(vlm) -> dict[str, torch.Tensor]:
    """Every tensor of the MoLE layers (router, experts, shared expert): the only ones training changes."""
    return {k: v.detach().contiguous().clone() for k, v in vlm.state_dict().items() if _is_mole_param(k)}


def _save_checkpoint(folder: Path, step: int, vlm, optimizer, scheduler) -> Path:
    """`folder/step-<step>/`: written under a hidden name, the marker last, then renamed; older ones removed."""
    import numpy as np
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    target = folder / f"step-{step:08d}"
    tmp = folder / f".step-{step:08d}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    save_file(_mole_state(vlm), str(tmp / "mole.safetensors"))
    np_state = np.random.get_state()
    state = {
        "step": step,
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "torch_rng": torch.get_rng_state(),
        "python_rng": random.getstate(),
        "numpy_rng": (np_state[0], torch.from_numpy(np_state[1].astype("int64")), *np_state[2:]),
    }
    torch.save(state, tmp / "state.pt")
    (tmp / _MARKER).write_text(f"{step}\n")
    if target.exists():
        shutil.rmtree(target)
    os.replace(tmp, target)
    for old in folder.glob("step-*"):
        if old != target:
            shutil.rmtree(old, ignore_errors=True)
    return target


def _latest_checkpoint(folder: Path) -> Path | None:
    """The complete checkpoint (marker present) with the highest step, or None."""
    if not folder.is_dir():
        return None
    done = [p for p in folder.glob("step-*") if (p / _MARKER).is_file()]
    return max(done, key=lambda p: int(p.name.split("-")[1])) if done else None


def _load_checkpoint(path: Path, vlm, optimizer, scheduler) -> int:
    """Restore weights, optimizer, scheduler and RNG from `path`; return the step it was taken after."""
    import numpy as np
    from safetensors.torch import load_file

    weights = load_file(str(path / "mole.safetensors"))
    expected = set(_mole_state(vlm))
    if set(weights) != expected:
        raise TrainError(
            f"{path}: the checkpoint's MoLE tensors do not match this model (missing "
            f"{sorted(expected - set(weights))[:3]}, unexpected {sorted(set(weights) - expected)[:3]}); "
            f"delete {path.parent} to start the MoLE step over."
        )
    vlm.load_state_dict(weights, strict=False)
    state = torch.load(path / "state.pt", weights_only=True)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["torch_rng"])
    version, inner, gauss = state["python_rng"]
    random.setstate((version, tuple(inner), gauss))
    name, keys, *rest = state["numpy_rng"]
    np.random.set_state((name, keys.numpy().astype("uint32"), *rest))
    return int(state["step"])


def load_mole_vlm(folder: str | Path):
    """Rebuild the upcycled VLM written by `train_mole` with every weight as saved (eval mode)."""
    from safetensors.torch import load_model

    from tbi_mole import MoLEConfig, upcycle
    from tbi_train.model import load_vlm

    folder = Path(folder)
    meta_file = folder / "mole.json"
    if not meta_file.is_file():
        raise TrainError(f"{folder} is not a MoLE VLM (no mole.json); pass the folder train_mole wrote.")
    meta = json.loads(meta_file.read_text())
    vlm = load_vlm(folder / "base")
    upcycle(
        vlm.lm, meta["layers"], dict.fromkeys(meta["experts"], vlm.lm), MoLEConfig.from_dict(meta["config"])
    )
    load_model(vlm, str(folder / "model.safetensors"), strict=True)
    vlm.eval()
    return vlm
