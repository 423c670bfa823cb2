"""peft LoRA adapters as merge inputs: the exact ΔW = B·A·s of each adapted layer, and writing one merged
adapter back by truncated randomized SVD.

For a layer with ``lora_A`` A ∈ ℝ^{r×in} and ``lora_B`` B ∈ ℝ^{out×r}, peft computes
``W x + s · B A x`` with s = α/r (or α/√r with rsLoRA), so the fine-tuned weight is θ = W + s·B·A
(transposed for ``fan_in_fan_out`` layers such as GPT-2's Conv1D). TIES/DARE act on that ΔW, never on
A and B separately (whose product is not sparsified by sparsifying its factors).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open

from tbi_merging.checkpoint import ADAPTER_CONFIG, ADAPTER_WEIGHTS, Checkpoint, TensorInfo, read_header
from tbi_merging.errors import MergeError

_PREFIX = "base_model.model."
_KEY = re.compile(r"^(?P<module>.+)\.lora_(?P<which>[AB])(?:\.(?P<adapter>[^.]+))?\.weight$")


@dataclass(frozen=True)
class _Layer:
    module: str
    a_key: str
    b_key: str
    scaling: float


class LoraAdapter:
    """A peft LoRA adapter read as a model: ``get(name, base)`` returns W + ΔW (float32) for adapted
    layers and the base tensor otherwise.

    Args:
        path: adapter directory (``adapter_config.json`` + ``adapter_model.safetensors``).
        label: how errors name it.
        base: the base checkpoint the adapter was trained on (its tensor names are checked).
    """

    def __init__(self, path: str | Path, label: str, base: Checkpoint | None) -> None:
        self.path = Path(path)
        self.label = label
        self.base = base
        cfg_path = self.path / ADAPTER_CONFIG
        try:
            self.config = json.loads(cfg_path.read_text())
        except (OSError, ValueError) as exc:
            raise MergeError(f"{label}: cannot read {cfg_path}: {exc}") from exc
        if self.config.get("peft_type", "LORA") != "LORA":
            raise MergeError(
                f"{label}: {cfg_path} is a {self.config.get('peft_type')} adapter; only LoRA merges"
            )
        if self.config.get("use_dora"):
            raise MergeError(
                f"{label}: DoRA adapters are not supported (their magnitude vector is not a ΔW); "
                "merge it into the base with peft's merge_and_unload first"
            )
        weights = self.path / ADAPTER_WEIGHTS
        if not weights.is_file():
            raise MergeError(
                f"{label}: {weights} is missing; re-save the adapter with safe_serialization=True"
            )
        infos, _ = read_header(weights)
        self.file = weights
        self.dtype = next(iter(infos.values())).dtype if infos else torch.float32
        self.fan_in_fan_out = bool(self.config.get("fan_in_fan_out", False))
        parts: dict[str, dict[str, str]] = {}
        for key in infos:
            m = _KEY.match(key)
            if m is None:
                raise MergeError(
                    f"{label}: tensor {key!r} in {weights} is not a lora_A/lora_B weight (modules_to_save, "
                    "embedding LoRA and biases are not supported); merge it with peft first"
                )
            parts.setdefault(m["module"], {})[m["which"]] = key
        self.layers: dict[str, _Layer] = {}
        for module, ab in parts.items():
            if set(ab) != {"A", "B"}:
                raise MergeError(f"{label}: layer {module!r} in {weights} has lora_{next(iter(ab))} only")
            rank = infos[ab["A"]].shape[0]
            target = module.removeprefix(_PREFIX) + ".weight"
            if base is not None and target not in base.infos:
                raise MergeError(
                    f"{label}: layer {module!r} adapts {target!r}, which the base {base.path} lacks; "
                    "was the adapter trained on another base?"
                )
            self.layers[target] = _Layer(module, ab["A"], ab["B"], self._scaling(module, rank))
        self._handle = None

    def _scaling(self, module: str, rank: int) -> float:
        alpha = float(self.config.get("lora_alpha", 8))
        for pattern, value in (self.config.get("alpha_pattern") or {}).items():
            if re.fullmatch(rf"(.*\.)?{pattern}", module.removeprefix(_PREFIX)):
                alpha = float(value)
                break
        return alpha / math.sqrt(rank) if self.config.get("use_rslora") else alpha / rank

    def delta(self, name: str) -> torch.Tensor | None:
        """ΔW = s·B·A of the layer whose weight is ``name`` (float32, weight layout), or None."""
        layer = self.layers.get(name)
        if layer is None:
            return None
        if self._handle is None:
            self._handle = safe_open(str(self.file), framework="pt")
        a = self._handle.get_tensor(layer.a_key).float()  # [r, in]
        b = self._handle.get_tensor(layer.b_key).float()  # [out, r]
        dw = (b @ a) * layer.scaling  # [out, in]
        return dw.T if self.fan_in_fan_out else dw

    # The source interface shared with Checkpoint.
    def names(self) -> list[str]:
        return self.base.names() if self.base is not None else list(self.layers)

    def info(self, name: str) -> TensorInfo:
        return self.base.info(name)

    def get(self, name: str, base: torch.Tensor | None = None) -> torch.Tensor:
        dw = self.delta(name)
        if dw is None:
            return base
        if tuple(dw.shape) != tuple(base.shape):
            raise MergeError(
                f"{self.label}: ΔW of {name!r} has shape {tuple(dw.shape)} but the base weight is "
                f"{tuple(base.shape)}; the adapter does not belong to this base"
            )
        return base.float() + dw

    def close(self) -> None:
        self._handle = None


def low_rank_factors(dw: torch.Tensor, rank: int, *, seed: int = 0, niter: int = 4):
    """Truncated randomized SVD ΔW ≈ B·A with B = U_r √S_r [out, r], A = √S_r V_rᵀ [r, in].

    Returns (A, B, relative Frobenius error ‖ΔW − B·A‖ / ‖ΔW‖).
    """
    rank = min(rank, *dw.shape)
    state = torch.random.get_rng_state()
    torch.manual_seed(seed)  # svd_lowrank draws its test matrix from the global generator
    try:
        u, s, v = torch.svd_lowrank(dw, q=min(rank + 8, *dw.shape), niter=niter)  # [out,q] [q] [in,q]
    finally:
        torch.random.set_rng_state(state)
    root = s[:rank].sqrt()
    b = u[:, :rank] * root  # [out, r]
    a = root.unsqueeze(1) * v[:, :rank].T  # [r, in]
    norm = float(torch.linalg.matrix_norm(dw))
    err = float(torch.linalg.matrix_norm(dw - b @ a)) / norm if norm > 0 else 0.0
    return a.contiguous(), b.contiguous(), err
