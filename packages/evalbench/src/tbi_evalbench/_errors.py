"""The one exception type of tbi-evalbench."""


class EvalbenchError(ValueError):
    """Bad input to a scorer, loader or report: the message names the file, line, key or id and the fix."""
