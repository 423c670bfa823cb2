"""The one exception type of tbi-vision-rope."""


class VisionRopeError(ValueError):
    """Bad input to a tbi-vision-rope function: the message names the offending values and the fix."""
