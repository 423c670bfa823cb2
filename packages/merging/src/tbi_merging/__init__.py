"""DARE, TIES, DARE+TIES, task arithmetic and linear merging of Hugging Face checkpoints and LoRA adapters, streaming."""

from tbi_merging.config import ComponentRule, MergeConfig, ModelSpec
from tbi_merging.core import METHODS, TensorStats, dare_keep_mask, merge_tensors
from tbi_merging.errors import MergeError
from tbi_merging.merge import merge_checkpoints

__version__ = "0.1.0"

__all__ = [
    "METHODS",
    "ComponentRule",
    "MergeConfig",
    "MergeError",
    "ModelSpec",
    "TensorStats",
    "dare_keep_mask",
    "merge_checkpoints",
    "merge_tensors",
]
