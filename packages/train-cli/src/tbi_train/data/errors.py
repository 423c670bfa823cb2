"""The error raised by the data and synth rooms of tbi-train."""

from tbi_train.errors import TrainError


class DataError(TrainError):
    """A dataset, record, tokenizer or generator setting is unusable.

    The message names the file, record id or key that was wrong and how to fix it.
    """
