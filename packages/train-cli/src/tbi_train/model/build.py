"""Build a VLM from a ModelConfig; save it and load it back (config.json + model.safetensors + peft adapters)."""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
from collections.abc import Iterable
from pathlib import Path

from tbi_train.config import ModelConfig, ProjectorSpec, TokenizerConfig, from_dict, to_dict
from tbi_train.errors import TrainError
from tbi_train.model.adapters import attach_adapters, save_adapter
from tbi_train.model.frozen_dtype import restore_saved_dtypes
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
    With `cfg.pretrained`, the parts are those of that existing VLM (`load_pretrained_vlm`), and the
    returned VLM's config describes them (the checkpoint's projector and image-pad token, `pretrained` set).
    """
    from tbi_projectors import ProjectorError, build_projector, get_projector_class

    if cfg.pretrained is not None:
        return _build_pretrained(cfg, tokenizer)
    if tokenizer is None:
        tokenizer = build_tokenizer(cfg.tokenizer, cfg.lm.path, cache_dir, corpus)
    vision = build_vision_tower(cfg.vision, trust_remote_code=cfg.lm.trust_remote_code)
    lm = build_lm(cfg.lm, vocab_size=len(tokenizer))
    try:
        # Several taps into a single-scale projector arrive concatenated along channels.
        taps = len(cfg.vision.feature_layers)
        # spatial-tokens reads what its base reads (a list over a multi-scale base: seed 001 A3c).
        reads = dict(cfg.projector.options).get("base", "") if cfg.projector.name == "spatial-tokens" else ""
        vision.concat_taps = taps > 0 and not get_projector_class(reads or cfg.projector.name).multi_scale
        projector = build_projector(
            cfg.projector.name,
            input_dim=vision.hidden_size * (taps if vision.concat_taps else 1),
            output_dim=lm.config.hidden_size,
            **dict(cfg.projector.options),
        )
    except (ProjectorError, TypeError) as exc:
        raise TrainError(
            f"model.projector ({cfg.projector.name}): {exc}; fix model.projector.options."
        ) from exc
    _check_projector_inputs(cfg, projector)
    attach_adapters({"lm": lm, "vision": vision.model, "projector": projector}, cfg.peft)
    return VLM(vision, projector, lm, tokenizer, cfg, _image_transform(cfg, vision.image_size))


def _check_projector_inputs(cfg: ModelConfig, projector) -> None:
    """The projector must take what the tower and the LM give it: a list per tap layer, an LM query."""
    name, layers = cfg.projector.name, list(cfg.vision.feature_layers)
    multi = bool(getattr(projector, "multi_scale", False))
    if multi and not layers:
        raise TrainError(
            f"model.projector.name={name} is multi-scale: set model.vision.feature_layers (e.g. [8,16,24])."
        )
    scales = getattr(projector.config, "num_scales", len(layers))
    if layers and scales != len(layers):
        raise TrainError(
            f"model.vision.feature_layers={layers} taps {len(layers)} layers but "
            f"model.projector.options.num_scales={scales}; make them agree."
        )
    if cfg.projector.query_from_lm and "query" not in getattr(projector, "extra_inputs", ()):
        raise TrainError(
            f"model.projector.query_from_lm=true but model.projector.name={name} takes no query; "
            "use foveated-query or set query_from_lm=false."
        )


def _build_pretrained(cfg: ModelConfig, tokenizer) -> VLM:
    """An existing VLM split into parts, with cfg's adapters and gradient checkpointing."""
    from tbi_train.model.pretrained import load_pretrained_vlm

    sources = {"model.vision.path": cfg.vision.path, "model.lm.path": cfg.lm.path}
    sources["model.tokenizer.path"] = cfg.tokenizer.path
    for key, value in sources.items():
        # A split model's own config names the checkpoint as its tokenizer folder.
        if value is not None and value != cfg.pretrained:
            raise TrainError(
                f"{key}={value} and model.pretrained={cfg.pretrained} both name weights; "
                f"model.pretrained brings its own, so remove {key}."
            )
    features = {
        "model.vision.rope_2d": cfg.vision.rope_2d,
        "model.vision.window_attention": cfg.vision.window_attention,
        "model.vision.feature_layers": cfg.vision.feature_layers,
        "model.lm.pyramid_drop": cfg.lm.pyramid_drop,
        "model.projector.query_from_lm": cfg.projector.query_from_lm,
    }
    for key, value in features.items():
        if value:
            raise TrainError(
                f"{key} with model.pretrained: a split checkpoint keeps its own tower, projector and LM; "
                f"compose the model from model.vision.path / model.lm.path to use {key}."
            )
    if not Path(cfg.pretrained).is_dir():
        raise TrainError(
            f"model.pretrained={cfg.pretrained} is not a folder; point it at a local InternVL-hf, "
            "llava-hf or Qwen2.5-VL checkpoint."
        )
    vlm = load_pretrained_vlm(cfg.pretrained, trust_remote_code=cfg.lm.trust_remote_code, tokenizer=tokenizer)
    own = vlm.config
    if cfg.projector not in (ProjectorSpec(), own.projector):
        raise TrainError(
            f"model.projector.name={cfg.projector.name} with model.pretrained: the projector is the "
            f"checkpoint's own {own.projector.name} (its trained weights); remove the model.projector override."
        )
    token = cfg.tokenizer.image_pad_token
    if token not in (TokenizerConfig().image_pad_token, own.tokenizer.image_pad_token):
        raise TrainError(
            f"model.tokenizer.image_pad_token={token} but {cfg.pretrained} marks images with "
            f"{own.tokenizer.image_pad_token}; set it to that or remove the override."
        )
    tower = vlm.vision.model
    if cfg.vision.gradient_checkpointing and getattr(tower, "supports_gradient_checkpointing", False):
        tower.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if cfg.lm.gradient_checkpointing:
        vlm.lm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    attach_adapters({"lm": vlm.lm, "vision": tower, "projector": vlm.projector}, cfg.peft)
    vlm.config = dataclasses.replace(
        own,
        pretrained=str(cfg.pretrained),
        peft=cfg.peft,
        vision=dataclasses.replace(own.vision, gradient_checkpointing=cfg.vision.gradient_checkpointing),
        lm=dataclasses.replace(
            own.lm,
            trust_remote_code=cfg.lm.trust_remote_code,
            gradient_checkpointing=cfg.lm.gradient_checkpointing,
        ),
    )
    return vlm


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
    """Rebuild the VLM saved by `save_vlm` (structure from config.json, every weight from safetensors).

    A VLM started from an existing checkpoint (`model.pretrained`) is rebuilt by splitting that checkpoint
    again (its folder must still exist, as a peft adapter needs its base), then takes the saved weights.
    """
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
    # Parts trained with model.frozen_dtype=bf16 were saved in bf16: compute with them exactly as in training.
    restore_saved_dtypes(vlm, directory / _WEIGHTS)
    missing, unexpected = load_model(vlm, str(directory / _WEIGHTS), strict=True)
    if missing or unexpected:
        raise TrainError(
            f"{directory / _WEIGHTS} does not match the config: missing {missing}, unexpected {unexpected}."
        )
    vlm.eval()
    return vlm
