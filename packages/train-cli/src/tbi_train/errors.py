"""The one exception base class of tbi-train."""

__all__ = ["TrainError"]


class TrainError(Exception):
    """Base class of every tbi-train error; the message says what was wrong and how to fix it."""
