"""The error of the synthetic data generator."""

from tbi_train.data.errors import DataError


class SynthError(DataError):
    """A generator setting is invalid or the Hangul font is missing; the message says how to fix it."""
