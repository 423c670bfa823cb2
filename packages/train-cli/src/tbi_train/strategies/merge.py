"""Merging decoders: export a VLM's LM as a plain Hugging Face checkpoint, DARE+TIES it with tbi-merging, and
put the merged LM back into the VLM (seed 000 D2/D3, `dare_ties_config`).

LoRA adapters are folded into their base weights before merging (W' = W + (alpha / r) B A), because merging
the factors A and B separately is not merging the products: task vectors are taken on full weights.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from pathlib import Path

import torch

from tbi_train.errors import TrainError

__all__ = ["export_lm", "merge_vlms"]

logger = logging.getLogger(__name__)


def _clean_state(lm: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The LM's weights with every LoRA/DoRA adapter folded in, under the plain (adapter-free) key names."""
    from peft.tuners.lora import LoraLayer

    for module in lm.modules():
        if isinstance(module, LoraLayer) and not module.merged:
            module.merge(safe_merge=True)
    state = {}
    for key, value in lm.state_dict().items():
        if "lora_" in key:
            continue
        state[key.replace(".base_layer.", ".")] = value.detach().clone()
    return state


def export_lm(vlm, out: str | Path) -> Path:
    """Write the VLM's LM (adapters folded) as `save_pretrained` does: config.json + model.safetensors + tokenizer.

    The VLM's own LM is left untouched (a copy is folded).
    """
    import copy

    from transformers import AutoModelForCausalLM

    out = Path(out)
    lm = copy.deepcopy(vlm.lm)
    state = _clean_state(lm)
    plain = AutoModelForCausalLM.from_config(lm.config)
    missing, unexpected = plain.load_state_dict(state, strict=False)
    missing = [k for k in missing if k != "lm_head.weight"]  # tied to the input embeddings
    if missing or unexpected:
        raise TrainError(f"cannot export the LM: missing {missing[:4]}, unexpected {unexpected[:4]}.")
    plain.save_pretrained(out, safe_serialization=True)
    vlm.tokenizer.save_pretrained(out)
    return out


def merge_vlms(
    base_dir: str | Path,
    en_dir: str | Path,
    ko_dir: str | Path,
    out: str | Path,
    *,
    method: str = "dare_ties",
    drop_rate: float = 0.9,
    rescale: bool = True,
    sign: str = "mass",
    lambda_en: float = 0.6,
    lambda_ko: float = 0.4,
    normalize: bool = True,
    seed: int = 0,
) -> Path:
    """DARE+TIES-merge the LMs of two VLMs fine-tuned from `base_dir`; write the merged VLM to `out`.

    theta = theta_0 + merge(lambda_en * tau_en, lambda_ko * tau_ko), tau_i = theta_i - theta_0 (tbi_merging),
    with theta_0 the base VLM's LM. Vision tower, projector and tokenizer are the base's (the fine-tunes
    trained only the LM). The merge report is kept as `out/merge_report.json`.
    """
    from safetensors.torch import load_file

    from tbi_merging import MergeConfig, ModelSpec, merge_checkpoints
    from tbi_train.model import load_vlm, save_vlm

    out = Path(out)
    work = Path(tempfile.mkdtemp(prefix=".merge-", dir=out.parent))
    try:
        base = load_vlm(base_dir)
        paths = {"base": export_lm(base, work / "base")}
        for name, folder in (("en", en_dir), ("ko", ko_dir)):
            paths[name] = export_lm(load_vlm(folder), work / name)
        merged_dir = merge_checkpoints(
            MergeConfig(
                base=paths["base"],
                models=[ModelSpec("en", paths["en"], lambda_en), ModelSpec("ko", paths["ko"], lambda_ko)],
                out=work / "merged",
                method=method,
                drop_rate=drop_rate,
                rescale=rescale,
                sign=sign,
                normalize=normalize,
                seed=seed,
            )
        )
        merged = {}
        for file in sorted(merged_dir.glob("*.safetensors")):
            merged.update(load_file(str(file)))
        own = base.lm.state_dict()
        update = {}
        for key, value in merged.items():
            target = (
                key
                if key in own
                else key.replace(".weight", ".base_layer.weight").replace(".bias", ".base_layer.bias")
            )
            if target not in own:
                raise TrainError(f"merged tensor {key} has no place in the VLM's LM; the checkpoints differ.")
            update[target] = value.to(own[target].dtype)
        with torch.no_grad():
            for key, value in update.items():
                own[key].copy_(value)
            for name, param in base.lm.named_parameters():
                if "lora_B" in name:
                    param.zero_()  # adapters were folded into the exported base: identity from here on
        save_vlm(base, work / "vlm")
        shutil.copy(merged_dir / "merge_report.json", work / "vlm" / "merge_report.json")
        if out.exists():
            shutil.rmtree(out)
        (work / "vlm").rename(out)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    logger.info("merged %s + %s onto %s -> %s", en_dir, ko_dir, base_dir, out)
    return out
