"""Build a VLM from a ModelConfig; save it and load it back (config.json + model.safetensors + peft adapters)."""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Iterable
from pathlib import Path

from tbi_train.config import ModelConfig, from_dict, to_dict
from tbi_train.errors import TrainError
from tbi_train.model.adapters import attach_adapters, save_adapter
from tbi_train.model.image import ImageTransform
from tbi_train.model.lm import build_lm
from tbi_train.model.tokenizer import build_tokenizer
from tbi_train.model.vision import build_vision_tower
from tbi_train.model.vlm import VLM

__all__ = ["build_vlm", "load_vlm", "save_vlm"]

logger = logging.getLogger(__name__)

_FORMAT = "tbi-vlm"
_WEIGHTS = "model.safetensors"


def build_vlm(
    cfg: ModelConfig,
    cache_dir: str | Path | None = None,
    corpus: Iterable[str] = (),
    tokenizer=None,
) -> VLM:
    """Tokenizer, vision tower, projector and LM from `cfg`, with the enabled adapters attached.

    Random-init parts draw from torch's global RNG (seed it first); the projector seeds itself from its
    config. A random LM's tokenizer is a BPE trained on `corpus` and cached under `cache_dir/tokenizer`.
    """
    from tbi_projectors import ProjectorError, build_projector

    if tokenizer is None:
        tokenizer = build_tokenizer(cfg.tokenizer, cfg.lm.path, cache_dir, corpus)
    vision = build_vision_tower(cfg.vision, trust_remote_code=cfg.lm.trust_remote_code)
    lm = build_lm(cfg.lm, vocab_size=len(tokenizer))
    try:
        projector = build_projector(
            cfg.projector.name,
            input_dim=vision.hidden_size,
            output_dim=lm.config.hidden_size,
            **dict(cfg.projector.options),
        )
    except (ProjectorError, TypeError) as exc:
        raise TrainError(
            f"model.projector ({cfg.projector.name}): {exc}; fix model.projector.options."
        ) from exc
    attach_adapters({"lm": lm, "vision": vision.model, "projector": projector}, cfg.peft)
    return VLM(vision, projector, lm, tokenizer, cfg, _image_transform(cfg, vision.image_size))


def _image_transform(cfg: ModelConfig, size: int) -> ImageTransform:
    mean, std = cfg.vision.image_mean, cfg.vision.image_std
    if cfg.vision.path is not None:
        pre = Path(cfg.vision.path) / "preprocessor_config.json"
        if pre.is_file():
            values = json.loads(pre.read_text())
            mean, std = values.get("image_mean", mean), values.get("image_std", std)
    return ImageTransform(size, mean, std)


def save_vlm(vlm: VLM, directory: str | Path) -> Path:
    """Write `directory` atomically: config.json, model.safetensors (every weight), tokenizer/, adapters/<part>/.

    The adapter folders are standard peft adapters (the LM's loads with `PeftModel.from_pretrained`).
    """
    from safetensors.torch import save_model

    directory = Path(directory)
    tmp = directory.with_name(directory.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    meta = {"format": _FORMAT, "format_version": 1, "model": to_dict(vlm.config)}
    (tmp / "config.json").write_text(json.dumps(meta, indent=2, ensure_ascii=False) + "\n")
    save_model(vlm, str(tmp / _WEIGHTS), metadata={"format": "pt"})
    vlm.tokenizer.save_pretrained(tmp / "tokenizer")
    peft = vlm.config.peft
    parts = {"lm": (vlm.lm, vlm.config.lm.path), "vision": (vlm.vision.model, vlm.config.vision.path)}
    parts["projector"] = (vlm.projector, None)
    for name, (module, base) in parts.items():
        if getattr(peft, name).enabled:
            save_adapter(
                module, tmp / "adapters" / name, base, prefix="base_model.model." if name == "lm" else ""
            )
    if directory.exists():
        shutil.rmtree(directory)
    tmp.rename(directory)
    return directory


def load_vlm(directory: str | Path) -> VLM:
    """Rebuild the VLM saved by `save_vlm` (structure from config.json, every weight from safetensors)."""
    from safetensors.torch import load_model

    directory = Path(directory)
    config_file = directory / "config.json"
    if not config_file.is_file() or not (directory / _WEIGHTS).is_file():
        raise TrainError(
            f"{directory} is not a saved VLM (needs config.json and {_WEIGHTS}); pass a model folder."
        )
    meta = json.loads(config_file.read_text())
    if meta.get("format") != _FORMAT:
        raise TrainError(f"{config_file} is not a {_FORMAT} config (format={meta.get('format')!r}).")
    cfg = from_dict(ModelConfig, meta["model"], key="model")
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(directory / "tokenizer", local_files_only=True)
    vlm = build_vlm(cfg, tokenizer=tokenizer)
    missing, unexpected = load_model(vlm, str(directory / _WEIGHTS), strict=True)
    if missing or unexpected:
        raise TrainError(
            f"{directory / _WEIGHTS} does not match the config: missing {missing}, unexpected {unexpected}."
        )
    vlm.eval()
    return vlm
