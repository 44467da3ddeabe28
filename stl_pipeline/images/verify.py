"""Decide whether untrusted bytes are a usable image, before they touch the store."""

import warnings
from dataclasses import dataclass
from io import BytesIO

from PIL import Image

# Leading bytes of the formats we accept; anything else is rejected unread.
_MAGIC: tuple[tuple[bytes, str], ...] = (
    (b"\xff\xd8\xff", "jpeg"),
    (b"\x89PNG\r\n\x1a\n", "png"),
    (b"GIF87a", "gif"),
    (b"GIF89a", "gif"),
)
EXTENSIONS = {"jpeg": ".jpg", "png": ".png", "gif": ".gif", "webp": ".webp"}


class BadImageError(ValueError):
    """The bytes are not an image we accept (wrong type, corrupt, or too large)."""


@dataclass(frozen=True)
class ImageInfo:
    format: str
    width: int
    height: int


def sniff(head: bytes) -> str | None:
    """The format named by the leading bytes, or None."""
    for magic, name in _MAGIC:
        if head.startswith(magic):
            return name
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "webp"
    return None


def verify_image(data: bytes, max_pixels: int) -> ImageInfo:
    """Check signature, header size and a full decode; raise BadImageError otherwise.

    The pixel cap is checked from the header, before any decoding, so a
    decompression bomb costs a few bytes of parsing, not gigabytes of memory.
    """
    kind = sniff(data[:16])
    if kind is None:
        raise BadImageError("not an image: no JPEG, PNG, GIF or WebP signature")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(BytesIO(data)) as image:
                width, height = image.size
                if width * height > max_pixels:
                    raise BadImageError(f"{width}x{height} pixels is over the cap of {max_pixels:,}")
                image.verify()
            with Image.open(BytesIO(data)) as image:
                # A reduced-size JPEG decode still reads every byte, so truncation and
                # corrupt entropy data are caught at a fraction of the cost.
                image.draft("RGB", (max(1, width // 8), max(1, height // 8)))
                image.load()
    except BadImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise BadImageError(f"decompression bomb: {exc}") from exc
    except Exception as exc:  # Pillow raises many types for corrupt input
        raise BadImageError(f"corrupt {kind}: {exc}") from exc
    return ImageInfo(format=kind, width=width, height=height)
