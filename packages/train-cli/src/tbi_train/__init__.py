"""Compose, train, merge and evaluate bilingual VLMs; run the seeds' ablation suites (`tbi`)."""

__version__ = "0.1.0"
