"""Decoder strategies of seed 000: LoRA FT (a core phase), merge (DARE+TIES), FT -> merge, FT -> merge -> MoLE."""

from tbi_train.strategies.merge import export_lm, merge_vlms
from tbi_train.strategies.mole import load_mole_vlm, train_mole

__all__ = ["export_lm", "load_mole_vlm", "merge_vlms", "train_mole"]
