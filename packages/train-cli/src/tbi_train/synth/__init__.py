"""Deterministic generator of synthetic bilingual (Korean/English) text-rich VQA data.

Images with rendered Korean and English words, bar/line charts with printed values, tables,
small documents, shape counting/colour scenes and short frame sequences, each with a question
whose answer can be read from the picture, written as LLaVA JSON + PNG files.
"""

from tbi_train.synth.config import TASKS, SynthConfig
from tbi_train.synth.errors import SynthError
from tbi_train.synth.generate import generate_synthetic

__all__ = ["TASKS", "SynthConfig", "SynthError", "generate_synthetic"]
