"""Image signatures: the 32-hex ids of STL products and scenes.

Signatures come from untrusted files and become file names and URLs, so every
path or URL built from one goes through `check_signature` first.
"""

import re
import string
from urllib.parse import urlsplit

_SIGNATURE = re.compile(r"[0-9a-f]{32}")
TEMPLATE_FIELDS = frozenset({"signature", "shard"})
SCHEMES = ("http", "https", "file")


class InvalidSignatureError(ValueError):
    """A value that should be a signature is not 32 lowercase hex characters."""


def is_signature(value: object) -> bool:
    return isinstance(value, str) and _SIGNATURE.fullmatch(value) is not None


def check_signature(value: object, what: str = "signature") -> str:
    if not is_signature(value):
        shown = repr(value)
        if len(shown) > 60:
            shown = shown[:57] + "..."
        raise InvalidSignatureError(f"{what} {shown} is not 32 lowercase hex characters")
    return value  # type: ignore[return-value]


def shard(signature: str) -> str:
    """The three-level directory prefix of Pinterest's CDN: ``ab/cd/ef``."""
    signature = check_signature(signature)
    return f"{signature[0:2]}/{signature[2:4]}/{signature[4:6]}"


def check_url_template(template: str) -> str:
    """Reject templates with placeholders other than ``{signature}`` and ``{shard}``, schemes
    other than http, https and file, and file templates that do not name the image in their
    path (a query or fragment would point every signature at one file)."""
    try:
        fields = {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}
    except ValueError as exc:
        raise ValueError(f"image URL template {template!r} is malformed: {exc}") from exc
    unknown = fields - TEMPLATE_FIELDS
    if unknown or "signature" not in fields:
        raise ValueError(
            f"image URL template {template!r} must contain {{signature}} and may contain "
            f"{{shard}}; it has {sorted(fields)}"
        )
    parts = urlsplit(template)
    if parts.scheme not in SCHEMES:
        raise ValueError(f"image URL template {template!r}: scheme must be one of {', '.join(SCHEMES)}")
    if parts.scheme == "file" and ("{signature}" not in parts.path or parts.query or parts.fragment):
        raise ValueError(
            f"image URL template {template!r}: a file template puts {{signature}} in its path and has "
            "no query or fragment"
        )
    return template


def image_url(template: str, signature: str) -> str:
    signature = check_signature(signature)
    return template.format(signature=signature, shard=shard(signature))
