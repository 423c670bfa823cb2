"""DARE, TIES, DARE+TIES, task arithmetic and linear merging of Hugging Face checkpoints and LoRA adapters, streaming."""

__version__ = "0.1.0"
