"""Compose, train, merge and evaluate bilingual VLMs; run the seeds' ablation suites (`tbi`)."""

__version__ = "0.1.0"

from tbi_train.errors import TrainError

__all__ = ["TrainError", "__version__"]
