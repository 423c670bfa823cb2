"""Scorers matching the official VLM benchmark scripts, benchmark loaders, statistics across seeds and reports. No torch."""

__version__ = "0.1.0"
