"""InternVL (-hf) and LLaVA (llava-hf) taken apart: fixed-resolution tower, zoo projector, causal-LM shell.

    InternVL  vision_tower -> LastStateVisionTower (CLS dropped)   multi_modal_projector -> pixel-shuffle-mlp
    LLaVA     vision_tower -> VisionTower (layer -2, CLS dropped)  multi_modal_projector -> mlp2x_gelu

Both projectors are exactly the zoo's: InternVL's `pixel_shuffle` emits channels in (dy, dx, c) order, as
`space_to_depth` does, then LayerNorm -> Linear -> GELU -> Linear; LLaVA's is Linear -> GELU -> Linear.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from tbi_projectors import build_projector
from tbi_train.errors import TrainError
from tbi_train.model.pretrained_parts import copy_weights, model_config
from tbi_train.model.vision import VisionTower
from tbi_train.model.vlm import VLM

__all__ = ["LastStateVisionTower", "decompose_fixed_resolution"]


class LastStateVisionTower(VisionTower):
    """A VisionTower reading `last_hidden_state` (after the tower's final norm), as InternVL does for layer -1."""

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """pixel_values [N, 3, H, W] -> features [N, grid_h * grid_w, C] (CLS dropped)."""
        hidden = self.model(pixel_values=pixel_values).last_hidden_state  # [N, 1 + P, C]
        return hidden[:, hidden.shape[1] - self.grid[0] * self.grid[1] :]  # [N, P, C]


def decompose_fixed_resolution(original, family: str, tokenizer, transform, path: Path) -> VLM:
    """Split a loaded InternVL/LLaVA model into tower + zoo projector (its trained weights) + causal LM.

    Raises:
        TrainError: a setting the split cannot reproduce exactly, naming the config.json key.
    """
    config = original.config
    vcfg, tcfg = config.vision_config, config.text_config
    where = path / "config.json"
    image_size, patch_size = (
        _side(vcfg.image_size, "vision_config.image_size", where),
        _side(vcfg.patch_size, "vision_config.patch_size", where),
    )
    layer = config.vision_feature_layer
    if not isinstance(layer, int):
        raise TrainError(
            f"{where}: vision_feature_layer={layer} concatenates several layers; only one layer is supported."
        )
    if config.projector_hidden_act != "gelu":
        raise TrainError(
            f"{where}: projector_hidden_act={config.projector_hidden_act!r}; the zoo projectors use exact 'gelu'."
        )
    _check_cls_strategy(config, vcfg, where)
    source = original.model.multi_modal_projector
    c, d = vcfg.hidden_size, tcfg.hidden_size
    if family == "internvl":
        factor = round(1 / config.downsample_ratio)
        if abs(factor * config.downsample_ratio - 1) > 1e-6 or (image_size // patch_size) % factor:
            raise TrainError(
                f"{where}: downsample_ratio={config.downsample_ratio} must be 1/k with k dividing the "
                f"{image_size // patch_size}-patch grid."
            )
        name, options = "pixel-shuffle-mlp", {"factor": factor}
        mapping = {"norm": source.layer_norm, "mlp.0": source.linear_1, "mlp.2": source.linear_2}
        tower_cls = LastStateVisionTower if layer == -1 else VisionTower
    else:
        if not config.multimodal_projector_bias:
            raise TrainError(f"{where}: multimodal_projector_bias=false; mlp2x_gelu has biases.")
        name, options = "mlp2x_gelu", {}
        mapping = {"mlp.0": source.linear_1, "mlp.2": source.linear_2}
        tower_cls = VisionTower
    projector = build_projector(name, input_dim=c, output_dim=d, **options)
    copy_weights(projector, mapping, where)
    projector.to(source.linear_1.weight.dtype)
    vision = tower_cls(original.model.vision_tower, image_size, patch_size, layer)
    lm = _causal_lm(tcfg, original.model.language_model, original.lm_head, where)
    cfg = model_config(
        path,
        projector=name,
        options=options,
        image_size=image_size,
        patch_size=patch_size,
        layer=layer,
        transform=transform,
        text_config=tcfg,
        tokenizer=tokenizer,
        config=config,
    )
    return VLM(vision, projector, lm, tokenizer, cfg, transform)


def _check_cls_strategy(config, vcfg, where: Path) -> None:
    """Our VisionTower drops leading non-patch tokens; the original must do the same ("default" + a CLS token)."""
    has_cls = vcfg.model_type != "siglip_vision_model"
    strategy = config.vision_feature_select_strategy
    if (strategy == "default") != has_cls:
        raise TrainError(
            f"{where}: vision_feature_select_strategy={strategy!r} with a {vcfg.model_type} tower "
            f"({'with' if has_cls else 'without'} a CLS token) is not a square patch grid; expected "
            f"{'default' if has_cls else 'full'}."
        )


def _side(value, key: str, where: Path) -> int:
    values = list(value) if isinstance(value, list | tuple) else [value]
    if not all(isinstance(v, int) for v in values) or len(set(values)) != 1:
        raise TrainError(f"{where}: {key}={value!r}; only square integer sizes are supported.")
    return values[0]


def _causal_lm(text_config, decoder: nn.Module, lm_head: nn.Module, where: Path) -> nn.Module:
    """An AutoModelForCausalLM shell (built on the meta device) around the checkpoint's own decoder and head."""
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        try:
            lm = AutoModelForCausalLM.from_config(text_config)
        except ValueError as exc:
            raise TrainError(
                f"{where}: text_config.model_type={text_config.model_type!r} has no causal-LM class in transformers."
            ) from exc
    children = {name for name, _ in lm.named_children()}
    if children != {"model", "lm_head"}:
        raise TrainError(
            f"{where}: {type(lm).__name__} has parts {sorted(children)}, not model + lm_head; cannot wrap its decoder."
        )
    lm.model = decoder
    lm.lm_head = lm_head
    return lm
