"""The Hangul-capable font, for PIL drawing and matplotlib labels."""

from __future__ import annotations

from pathlib import Path

from matplotlib.font_manager import FontProperties
from PIL import ImageFont

from tbi_train.synth.errors import SynthError


class FontBook:
    """One TrueType font at several pixel sizes (PIL) plus its matplotlib properties.

    Raises:
        SynthError: the font file does not exist (install Debian's fonts-nanum).
    """

    def __init__(self, path: str) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise SynthError(
                f"Hangul font not found at {self.path}. Install the Debian package fonts-nanum "
                "(apt-get install fonts-nanum) or pass font_path= pointing to a TrueType font with Hangul glyphs."
            )
        self._sizes: dict[int, ImageFont.FreeTypeFont] = {}
        self.mpl = FontProperties(fname=str(self.path))

    def pil(self, size: int) -> ImageFont.FreeTypeFont:
        """The font at `size` pixels."""
        if size not in self._sizes:
            self._sizes[size] = ImageFont.truetype(str(self.path), size)
        return self._sizes[size]

    def fit(self, text: str, max_width: int, start: int, minimum: int = 8) -> ImageFont.FreeTypeFont:
        """The largest size <= `start` at which `text` is at most `max_width` pixels wide."""
        size = start
        while size > minimum and self.pil(size).getlength(text) > max_width:
            size -= 1
        return self.pil(size)
