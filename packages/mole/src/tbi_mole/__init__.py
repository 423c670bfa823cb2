"""Mixture-of-language-experts layers upcycled from fine-tuned checkpoints."""

__version__ = "0.1.0"
