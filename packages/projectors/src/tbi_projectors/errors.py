"""The one exception type of tbi-projectors."""


class ProjectorError(ValueError):
    """A projector was built, called, saved or loaded wrongly; the message says what and how to fix it."""
