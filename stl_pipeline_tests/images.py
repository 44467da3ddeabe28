"""Image bytes for tests: real encodings and hostile ones."""

import struct
import zlib
from io import BytesIO

import numpy as np
from PIL import Image


def encoded(
    fmt: str = "JPEG", size: tuple[int, int] = (64, 48), colour: tuple[int, int, int] = (200, 30, 60)
) -> bytes:
    buffer = BytesIO()
    Image.new("RGB", size, colour).save(buffer, fmt)
    return buffer.getvalue()


def png_bomb(width: int = 30_000, height: int = 30_000) -> bytes:
    """A PNG whose header claims a huge image: a decompression bomb's first bytes."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\0" * 4096))
        + chunk(b"IEND", b"")
    )


def saved(image: Image.Image, fmt: str = "PNG", **options: object) -> bytes:
    buffer = BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def exif_rotated(upright: Image.Image, fmt: str = "JPEG") -> bytes:
    """What a phone writes: the sensor's pixels (a quarter turn off) and EXIF orientation 6,
    "turn clockwise to show"."""
    exif = Image.Exif()
    exif[0x0112] = 6
    return saved(upright.transpose(Image.Transpose.ROTATE_90), fmt, exif=exif, quality=95)


def grey16(upright: Image.Image) -> tuple[bytes, Image.Image]:
    """A 16-bit grey PNG of ``upright``, and the 8-bit grey picture it shows."""
    grey = upright.convert("L")
    wide = np.asarray(grey).astype(np.uint16) * 257
    return saved(Image.fromarray(wide)), grey.convert("RGB")


def see_through(upright: Image.Image) -> tuple[bytes, Image.Image]:
    """An RGBA PNG whose left third is transparent over black pixels, and what it shows: that
    third white."""
    pixels = np.asarray(upright.convert("RGBA")).copy()
    third = pixels.shape[1] // 3
    pixels[:, :third] = 0
    shown = np.asarray(upright.convert("RGB")).copy()
    shown[:, :third] = 255
    return saved(Image.fromarray(pixels, "RGBA")), Image.fromarray(shown)


def animated(size: tuple[int, int] = (64, 64)) -> tuple[bytes, Image.Image]:
    """A two-frame GIF, red then blue, and its first frame."""
    red, blue = Image.new("RGB", size, (255, 0, 0)), Image.new("RGB", size, (0, 0, 255))
    return saved(red, "GIF", save_all=True, append_images=[blue], duration=100, loop=0), red
