"""The one exception type of tbi-mole."""


class MoLEError(Exception):
    """A MoLE layer cannot be built, run, saved or loaded.

    The message names the layer, expert, file or tensor key at fault and how to fix it.
    """
