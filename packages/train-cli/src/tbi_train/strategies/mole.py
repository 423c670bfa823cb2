"""FT -> merge -> MoLE (seed 000 D4/F4): upcycle the merged VLM's LM with experts from the Korean fine-tune,
the original model and the merged model, then train router and experts on a 50/50 Korean/English mix.

Saved as `base/` (the merged VLM, `tbi_train.model.save_vlm`), `mole.json` (layers, experts, MoLEConfig) and
`model.safetensors` (every weight of the upcycled VLM); `load_mole_vlm` rebuilds it exactly.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import time
from pathlib import Path

import torch

from tbi_train.errors import TrainError

__all__ = ["load_mole_vlm", "train_mole"]

logger = logging.getLogger(__name__)

_EXPERTS = ("ko", "en", "shared")


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
) -> Path:
    """Upcycle `experts["shared"]`'s LM at `spec["layers"]` with experts ko/en/shared and train the MoLE layers.

    Args:
        experts: saved VLM folders: "ko" (Korean fine-tune), "en" (the original model), "shared" (the merge).
        spec: layers, router_hidden_dim, router_temperature, capacity_factor, load_balancing_loss_weight and
            phase (a PhaseConfig dict: steps, batch_size, grad_accum, warmup_steps, lr.lm for experts + router).
        dataset: the training samples (50/50 mix), a `ConversationDataset`.
        out: output folder (written under a temporary name, then renamed).
        optim: the run's `OptimConfig` (betas, weight decay, clipping, schedule).
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
    vlm.train()
    started = time.perf_counter()
    accum = int(phase["grad_accum"])
    for step in range(steps):
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
        if log is not None:
            log.write({"phase": "mole", "phase_name": "mole", "step": step + 1, "loss": total, "aux_loss": aux_total,
                       "grad_norm": float(grad_norm), "elapsed_s": round(time.perf_counter() - started, 3)})  # fmt: skip
    vlm.eval()
    meta = {"layers": layers, "experts": list(_EXPERTS), "config": _mole_config(spec).to_dict()}
    (tmp / "mole.json").write_text(json.dumps(meta, indent=2) + "\n")
    save_model(vlm, str(tmp / "model.safetensors"), metadata={"format": "pt"})
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    logger.info("trained MoLE layers %s for %d steps -> %s", layers, steps, out)
    return out


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
