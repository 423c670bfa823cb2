"""Upcycling a Hugging Face causal LM: chosen decoder layers' FFNs become MoLE layers; save and load.

Mechanism for the aux loss: `upcycle` registers two hooks on the model object it was given (no subclassing, so
`generate`, `save_pretrained` and PEFT keep working):

- a forward pre-hook reads `attention_mask` and `input_ids` from the call (positional or keyword), pops the
  optional keyword `mole_language_labels` [B, L] (or derives labels from `input_ids` with the language table
  passed to `upcycle`), and hands mask and labels to every MoLE layer (`MoLELayer.set_routing_context`);
- a forward hook, when `model.training` and the output has a `loss` (the call had `labels`), replaces it by
  loss + `collect_aux_loss(model)`. The layers keep the context until the next model call, so activation
  checkpointing recomputes the same losses during backward.

So `model(input_ids, attention_mask=..., labels=...).loss` is the training objective; in eval mode the loss is
the plain language-model loss and `collect_aux_loss(model)` still gives the aux term of the last forward.

On-disk format (`model.save_pretrained(path)`, read back by `load_mole(path)`): an ordinary Hugging Face
checkpoint. `config.json` is the base model's config plus one key, `tbi_mole`:

    {"format_version": 1, "layers_path": "model.layers", "mlp_attr": "mlp", "layers": [16, 20, 24, 28],
     "experts": ["ko", "en", "shared"], "shared_expert": null, "frozen": [], "config": {MoLEConfig fields}}

`model.safetensors` (or shards + `model.safetensors.index.json`) holds every weight of the model; a MoLE layer's
tensors replace its dense MLP's under `<layers_path>.<i>.<mlp_attr>.`:
`experts.<name>.<the MLP's own keys>` (e.g. `model.layers.16.mlp.experts.ko.gate_proj.weight`),
`shared_expert.<keys>` when a shared expert is always on, and `router.proj.weight` (linear router) or
`router.proj.0.weight`, `router.proj.0.bias`, `router.proj.2.weight` (MLP router).
`AutoModelForCausalLM.from_pretrained` does not know these keys; use `load_mole`.
"""

from __future__ import annotations

import copy
import inspect
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tbi_mole.checkpoint import SafetensorsCheckpoint
from tbi_mole.collect import collect_aux_loss, mole_layers
from tbi_mole.config import MoLEConfig
from tbi_mole.errors import MoLEError
from tbi_mole.language import language_labels
from tbi_mole.layer import MoLELayer

FORMAT_VERSION = 1
_LAYER_PATHS = (
    "model.layers",
    "model.language_model.layers",
    "language_model.model.layers",
    "model.decoder.layers",
    "transformer.h",
    "gpt_neox.layers",
    "layers",
)
_MLP_ATTRS = ("mlp", "feed_forward", "ffn")

ExpertSource = str | os.PathLike | nn.Module


def _get(root: nn.Module, dotted: str) -> Any:
    obj: Any = root
    for part in dotted.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            return None
    return obj


def _decoder_layers(model: nn.Module, layers_path: str | None) -> tuple[str, nn.ModuleList]:
    candidates = (layers_path,) if layers_path else _LAYER_PATHS
    for path in candidates:
        found = _get(model, path)
        if isinstance(found, nn.ModuleList):
            return path, found
    if layers_path:
        raise MoLEError(f"{type(model).__name__} has no nn.ModuleList at layers_path={layers_path!r}.")
    raise MoLEError(
        f"cannot find the decoder layers of {type(model).__name__} (tried {', '.join(_LAYER_PATHS)}); "
        "pass layers_path='dotted.path.to.layers'."
    )


def _mlp_attr(layer: nn.Module, mlp_attr: str | None, index: int) -> str:
    candidates = (mlp_attr,) if mlp_attr else _MLP_ATTRS
    for attr in candidates:
        if isinstance(getattr(layer, attr, None), nn.Module):
            return attr
    raise MoLEError(
        f"decoder layer {index} ({type(layer).__name__}) has no FFN attribute among {candidates}; "
        "pass mlp_attr='name_of_the_ffn_attribute'."
    )


def _resolve_key(
    keys: set[str], layers_path: str, index: int, mlp_attr: str, param: str, source: Path
) -> str:
    exact = f"{layers_path}.{index}.{mlp_attr}.{param}"
    if exact in keys:
        return exact
    # Checkpoints of the same LM saved inside another wrapper (a VLM's language_model, ...) differ only in prefix.
    suffix = f"{layers_path.split('.')[-1]}.{index}.{mlp_attr}.{param}"
    matches = sorted(k for k in keys if k == suffix or k.endswith("." + suffix))
    if len(matches) == 1:
        return matches[0]
    if not matches:
        raise MoLEError(
            f"{source}: no tensor {exact!r} (nor any key ending in {suffix!r}); is this a checkpoint of the same "
            "architecture as the model being upcycled?"
        )
    raise MoLEError(
        f"{source}: {len(matches)} keys end in {suffix!r} ({matches[:3]}...); pass a checkpoint of the LM only."
    )


def _load_expert(
    template: nn.Module,
    checkpoint: SafetensorsCheckpoint,
    layers_path: str,
    index: int,
    mlp_attr: str,
) -> nn.Module:
    expert = copy.deepcopy(template)
    own = expert.state_dict()
    keys = checkpoint.keys()
    key_of = {
        param: _resolve_key(keys, layers_path, index, mlp_attr, param, checkpoint.path) for param in own
    }
    tensors = checkpoint.read(list(key_of.values()))
    state = {}
    for param, key in key_of.items():
        tensor = tensors[key]
        if tensor.shape != own[param].shape:
            raise MoLEError(
                f"{checkpoint.path}: tensor {key!r} has shape {tuple(tensor.shape)}, the model's "
                f"{layers_path}.{index}.{mlp_attr}.{param} has {tuple(own[param].shape)}; the expert checkpoint "
                "must have the same architecture (hidden and intermediate sizes)."
            )
        state[param] = tensor.to(own[param].dtype)
    expert.load_state_dict(state, strict=True)
    return expert


class _ModelHooks:
    """The pre/post forward hooks `upcycle` puts on the model (see the module docstring)."""

    def __init__(self, model: nn.Module, language_table: torch.Tensor | None) -> None:
        self.layers = list(mole_layers(model).values())
        self.language_table = language_table
        self.signature = inspect.signature(model.forward)
        self.handles = [
            model.register_forward_pre_hook(self._before, with_kwargs=True),
            model.register_forward_hook(self._after, with_kwargs=True),
        ]

    def _before(self, module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        labels = kwargs.pop("mole_language_labels", None)
        try:
            call = self.signature.bind_partial(*args, **kwargs).arguments
        except TypeError:
            call = kwargs
        input_ids = call.get("input_ids")
        attention_mask = call.get("attention_mask")
        if labels is None and self.language_table is not None and isinstance(input_ids, torch.Tensor):
            labels = language_labels(input_ids, self.language_table, attention_mask)
        for layer in self.layers:
            layer.aux_loss = None
            layer.set_routing_context(attention_mask, labels)
        return args, kwargs

    def _after(self, module: nn.Module, args: tuple, kwargs: dict, output: Any) -> Any:
        loss = getattr(output, "loss", None)
        if module.training and isinstance(loss, torch.Tensor):
            output.loss = loss + collect_aux_loss(module).to(loss.device)
        return output

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


def upcycle(
    model: nn.Module,
    layers: Iterable[int],
    experts: Mapping[str, ExpertSource],
    config: MoLEConfig | None = None,
    *,
    shared_expert: str | None = None,
    freeze: Iterable[str] = (),
    language_table: torch.Tensor | None = None,
    layers_path: str | None = None,
    mlp_attr: str | None = None,
) -> nn.Module:
    """Replace the FFNs of `layers` by MoLE layers whose experts come from other checkpoints; in place.

    Every other weight of `model` is kept. For a checkpoint path, only the tensors of the replaced layers' MLPs
    are read (lazily, with safetensors' `safe_open`); an `nn.Module` source contributes a copy of its own MLP of
    the same layer (pass `model` itself for an expert initialised from the model being upcycled).

    Args:
        model: a Hugging Face causal LM (or any module with a list of decoder layers holding an FFN).
        layers: decoder layer indexes to convert (seed 000: [16, 20, 24, 28] of 32).
        experts: expert name -> checkpoint directory / .safetensors file / model, in router order
            (seed 000: {"ko": korean_finetune, "en": original, "shared": merged}).
        config: routing and losses; None = `MoLEConfig()`.
        shared_expert: name of one of `experts` to run always-on (added, ungated) instead of routing to it.
        freeze: expert names whose weights stay fixed (requires_grad=False).
        language_table: token id -> language label (`token_language_table(tokenizer)`); when given, the router's
            language supervision and statistics get labels from `input_ids` automatically.
        layers_path: dotted path of the decoder layer list when it is not a usual one ("model.layers", ...).
        mlp_attr: the FFN attribute of a decoder layer when not "mlp" / "feed_forward" / "ffn".
    Returns:
        `model`, with hooks that add the aux loss to the training loss (module docstring).
    Raises:
        MoLEError: a bad layer index, expert name, checkpoint, tensor key or shape, named in the message.
    """
    config = config if config is not None else MoLEConfig()
    if getattr(model, "_tbi_mole_hooks", None) is not None:
        raise MoLEError("this model is already upcycled; call upcycle once with every layer to convert.")
    layers = sorted(set(int(i) for i in layers))
    names = list(experts)
    if not layers:
        raise MoLEError("upcycle got no layers; pass layers=[16, 20, 24, 28] (decoder layer indexes).")
    if shared_expert is not None and shared_expert not in experts:
        raise MoLEError(f"shared_expert={shared_expert!r} is not one of the experts {names}.")
    routed_names = [name for name in names if name != shared_expert]
    freeze = list(freeze)
    for name in freeze:
        if name not in experts:
            raise MoLEError(f"freeze names expert {name!r}, not one of {names}.")
    path, decoder_layers = _decoder_layers(model, layers_path)
    for index in layers:
        if not 0 <= index < len(decoder_layers):
            raise MoLEError(
                f"layer {index} does not exist: {path} has {len(decoder_layers)} layers (0..{len(decoder_layers) - 1})."
            )

    attrs = {index: _mlp_attr(decoder_layers[index], mlp_attr, index) for index in layers}
    dense = {index: getattr(decoder_layers[index], attrs[index]) for index in layers}
    for index, mlp in dense.items():
        if isinstance(mlp, MoLELayer):
            raise MoLEError(f"layer {index} is already a MoLE layer.")
    checkpoints = {
        name: SafetensorsCheckpoint(source)
        for name, source in experts.items()
        if not isinstance(source, nn.Module)
    }
    hidden_size = getattr(getattr(model, "config", None), "hidden_size", None)

    for index in layers:
        built: dict[str, nn.Module] = {}
        for name, source in experts.items():
            if name in checkpoints:
                built[name] = _load_expert(dense[index], checkpoints[name], path, index, attrs[index])
            elif source is model:
                built[name] = copy.deepcopy(dense[index])
            else:
                built[name] = copy.deepcopy(_module_source_mlp(source, name, index, layers_path, mlp_attr))
        mole = MoLELayer(
            {name: built[name] for name in routed_names},
            copy.deepcopy(config),
            shared_expert=built[shared_expert] if shared_expert is not None else None,
            hidden_size=hidden_size,
        )
        first_param = next(dense[index].parameters(), None)
        if first_param is not None:
            mole.router.to(first_param.device)
        mole.freeze_experts(["shared_expert" if n == shared_expert else n for n in freeze])
        setattr(decoder_layers[index], attrs[index], mole)

    if getattr(model, "config", None) is not None:
        model.config.tbi_mole = {
            "format_version": FORMAT_VERSION,
            "layers_path": path,
            "mlp_attr": attrs[layers[0]] if len(set(attrs.values())) == 1 else None,
            "layers": layers,
            "experts": names,
            "shared_expert": shared_expert,
            "frozen": freeze,
            "config": config.to_dict(),
        }
    model._tbi_mole_hooks = _ModelHooks(model, language_table)
    return model


def _module_source_mlp(
    source: nn.Module, name: str, index: int, layers_path: str | None, mlp_attr: str | None
) -> nn.Module:
    _path, decoder_layers = _decoder_layers(source, layers_path)
    if not index < len(decoder_layers):
        raise MoLEError(f"expert {name!r}: its model has {len(decoder_layers)} layers, no layer {index}.")
    mlp = getattr(decoder_layers[index], _mlp_attr(decoder_layers[index], mlp_attr, index))
    if isinstance(mlp, MoLELayer):
        raise MoLEError(f"expert {name!r}: layer {index} of its model is a MoLE layer, not a dense FFN.")
    return mlp


def detach_hooks(model: nn.Module) -> None:
    """Remove the hooks `upcycle` / `load_mole` put on `model` (the MoLE layers stay)."""
    hooks = getattr(model, "_tbi_mole_hooks", None)
    if hooks is not None:
        hooks.remove()
        model._tbi_mole_hooks = None


def load_mole(
    path: str | os.PathLike,
    *,
    dtype: torch.dtype | None = None,
    language_table: torch.Tensor | None = None,
    trust_remote_code: bool = False,
) -> nn.Module:
    """Rebuild a model saved with `save_pretrained` after `upcycle`, with every weight exactly as saved.

    Builds the base architecture from `config.json` (`AutoModelForCausalLM.from_config`), converts the layers
    listed under `tbi_mole` the same way, then loads every tensor of the checkpoint (strict: a missing or
    unexpected key is an error, except weights tied to a loaded one).

    Args:
        path: the directory written by `model.save_pretrained(path)`.
        dtype: parameter dtype; None = the dtype recorded in config.json (float32 when none is).
        language_table: as in `upcycle`.
        trust_remote_code: passed to transformers for architectures that live in the checkpoint directory.
    """
    from transformers import AutoConfig, AutoModelForCausalLM

    path = Path(path)
    if not (path / "config.json").is_file():
        raise MoLEError(f"{path}: no config.json; pass the directory written by model.save_pretrained(path).")
    hf_config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
    meta = getattr(hf_config, "tbi_mole", None)
    if not isinstance(meta, dict):
        raise MoLEError(
            f"{path / 'config.json'}: no 'tbi_mole' entry, so this is not an upcycled checkpoint; load it with "
            "AutoModelForCausalLM.from_pretrained, or upcycle() it first."
        )
    if meta.get("format_version") != FORMAT_VERSION:
        raise MoLEError(
            f"{path / 'config.json'}: tbi_mole format_version {meta.get('format_version')!r}; this tbi-mole reads "
            f"version {FORMAT_VERSION}. Install the tbi-mole version that wrote it."
        )
    if dtype is None:
        saved = getattr(hf_config, "dtype", None) or getattr(hf_config, "torch_dtype", None)
        dtype = getattr(torch, saved) if isinstance(saved, str) else saved
    model = AutoModelForCausalLM.from_config(hf_config, trust_remote_code=trust_remote_code)
    if dtype is not None:
        model.to(dtype)
    upcycle(
        model,
        meta["layers"],
        dict.fromkeys(meta["experts"], model),
        MoLEConfig.from_dict(meta["config"]),
        shared_expert=meta["shared_expert"],
        freeze=meta["frozen"],
        language_table=language_table,
        layers_path=meta["layers_path"],
        mlp_attr=meta["mlp_attr"],
    )
    checkpoint = SafetensorsCheckpoint(path)
    state = checkpoint.read(sorted(checkpoint.keys()))
    result = model.load_state_dict(state, strict=False)
    own = model.state_dict(keep_vars=True)
    loaded_ids = {id(own[key]) for key in state if key in own}
    missing = [key for key in result.missing_keys if id(own[key]) not in loaded_ids]
    if missing or result.unexpected_keys:
        raise MoLEError(
            f"{path}: the checkpoint does not match the model its config.json describes "
            f"(missing {missing[:5]}, unexpected {result.unexpected_keys[:5]}); was it saved after upcycle()?"
        )
    return model
