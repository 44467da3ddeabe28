"""Decide whether untrusted bytes are a usable image, before they touch the store."""

from dataclasses import dataclass
from io import BytesIO

from PIL import Image

from stl_pipeline.images.decode import BadImageError, ImageLimits, decode, upright_size

# Leading bytes of the formats we accept; anything else is rejected unread.
_MAGIC: tuple[tuple[bytes, str], ...] = (
    (b"\xff\xd8\xff", "jpeg"),
    (b"\x89PNG\r\n\x1a\n", "png"),
    (b"GIF87a", "gif"),
    (b"GIF89a", "gif"),
)
EXTENSIONS = {"jpeg": ".jpg", "png": ".png", "gif": ".gif", "webp": ".webp"}


@dataclass(frozen=True)
class ImageInfo:
    format: str
    width: int  # as shown: after the EXIF orientation
    height: int


def sniff(head: bytes) -> str | None:
    """The format named by the leading bytes, or None."""
    for magic, name in _MAGIC:
        if head.startswith(magic):
            return name
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "webp"
    return None


def verify_image(data: bytes, limits: ImageLimits) -> ImageInfo:
    """Check the signature, the header's size against ``limits`` and a whole decode (as
    embeddings will decode it); raise BadImageError, with the reason, otherwise."""
    kind = sniff(data[:16])
    if kind is None:
        raise BadImageError("not an image: no JPEG, PNG, GIF or WebP signature")
    try:
        decode(data, limits, reduce=8)
        with Image.open(BytesIO(data)) as image:
            width, height = upright_size(image)
    except BadImageError as exc:
        raise BadImageError(f"{kind}: {exc}") from exc
    return ImageInfo(format=kind, width=width, height=height)
