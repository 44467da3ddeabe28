"""One way to turn image bytes into pixels, shared by downloads, embeddings, galleries and
``stl-recommend``: the picture as a browser shows it.

A browser turns a phone photo upright by its EXIF orientation, scales 16-bit samples to 8,
lays transparent pixels over the page's white and shows the first frame of an animation.
Pillow's ``convert("RGB")`` does none of that: it keeps the sensor's rotation (so a box is
cropped from the wrong pixels), clips 16-bit grey to white and keeps whatever colour lies
under a transparent pixel. Images too small, too elongated or wholly transparent to show a
product are refused with the reason, not embedded and answered with confidence.
"""

import warnings
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

# EXIF orientations that turn the picture a quarter (width and height trade places).
_QUARTER_TURNS = frozenset({5, 6, 7, 8})
_EXIF_ORIENTATION = 0x0112
_SIXTEEN_BIT = frozenset({"I;16", "I;16B", "I;16L", "I;16N", "I"})
_WITH_ALPHA = frozenset({"RGBA", "LA", "La", "RGBa", "PA"})
WHITE = (255, 255, 255, 255)


class BadImageError(ValueError):
    """The bytes are not an image we accept (wrong type, corrupt, too large or unusable)."""


@dataclass(frozen=True)
class ImageLimits:
    """What an accepted image may be: the pixel cap guards memory, the others usefulness."""

    max_pixels: int = 25_000_000
    min_side: int = 32
    max_aspect: float = 8.0

    def check_size(self, width: int, height: int) -> None:
        shown = f"{width}x{height}"
        if width * height > self.max_pixels:
            raise BadImageError(f"{shown} pixels is over the cap of {self.max_pixels:,}")
        if min(width, height) < self.min_side:
            raise BadImageError(
                f"{shown} is under {self.min_side} pixels on a side, too small to show a product; "
                "use a larger image (or lower min_side)"
            )
        aspect = max(width, height) / min(width, height)
        if aspect > self.max_aspect:
            raise BadImageError(
                f"{shown} is {aspect:.1f} times longer than wide, over max_aspect {self.max_aspect:g}: "
                "a strip or a banner, not a photo"
            )


def upright_size(image: Image.Image) -> tuple[int, int]:
    """Width and height once the EXIF orientation is applied, read from the header alone."""
    width, height = image.size
    orientation = image.getexif().get(_EXIF_ORIENTATION, 1)
    return (height, width) if orientation in _QUARTER_TURNS else (width, height)


def _rgb(image: Image.Image) -> tuple[Image.Image, bool]:
    """8-bit RGB with transparency laid over white, and whether any pixel is visible."""
    if image.mode in _SIXTEEN_BIT:
        # Grey of up to 16 bits per sample: scale to 8 (convert() clips all over 255 to white).
        scaled = np.asarray(image, dtype=np.float64) / 257.0
        image = Image.fromarray(np.clip(np.rint(scaled), 0, 255).astype(np.uint8), "L")
    if image.mode == "P" or "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode not in _WITH_ALPHA:
        return image.convert("RGB"), True
    image = image.convert("RGBA")
    visible = image.getchannel("A").getextrema()[1] > 0
    canvas = Image.new("RGBA", image.size, WHITE)
    canvas.alpha_composite(image)
    return canvas.convert("RGB"), visible


def decode(source: bytes | Path | str, limits: ImageLimits | None = None, reduce: int = 1) -> Image.Image:
    """The first frame as RGB, upright, over white. With ``limits``, the header's size is
    checked before any pixel is decoded (a decompression bomb costs a few bytes of parsing),
    and a wholly transparent picture is refused. ``reduce`` > 1 lets a JPEG decode at that
    fraction of its size: every byte is still read, so truncation is caught at a fraction of
    the cost. Raises BadImageError, naming what is wrong, for anything Pillow cannot read."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(BytesIO(source) if isinstance(source, bytes) else source) as opened:
                if limits is not None:
                    limits.check_size(*opened.size)
                opened.seek(0)  # an animation's first frame, as a still would show
                if reduce > 1:
                    width, height = opened.size
                    opened.draft("RGB", (max(1, width // reduce), max(1, height // reduce)))
                opened.load()
                picture, visible = _rgb(ImageOps.exif_transpose(opened))
    except BadImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise BadImageError(f"decompression bomb: {exc}") from exc
    except Exception as exc:  # Pillow raises many types for corrupt input
        raise BadImageError(f"corrupt or unreadable: {exc}") from exc
    if limits is not None and not visible:
        raise BadImageError("every pixel is fully transparent: there is nothing to see")
    return picture
