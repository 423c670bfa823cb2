"""The one exception type of tbi-merging."""


class MergeError(Exception):
    """A merge cannot proceed. The message names the file, tensor or option at fault and how to fix it."""
