"""How images are fetched, declared once: the ``image_source`` resource is made from these
fields (``run_config.config_class``) and the downloader reads the dataclass. Plain data, so
the code location loads it without the HTTP client."""

from dataclasses import dataclass
from typing import TYPE_CHECKING

from stl_pipeline.ids import check_url_template
from stl_pipeline.run_config import knob

if TYPE_CHECKING:
    from stl_pipeline.images.decode import ImageLimits


@dataclass(frozen=True)
class DownloadPolicy:
    url_template: str = knob(
        doc="URL of an image with {signature} and optional {shard} (STL_IMAGE_URL_TEMPLATE); http(s):// "
        "or file://.",
    )
    allowed_hosts: frozenset[str] = knob(
        frozenset(), "Hosts the downloader may contact (STL_ALLOWED_HOSTS); file:// needs none."
    )
    concurrency: int = 16
    connect_timeout_s: float = 5.0
    read_timeout_s: float = knob(15.0, "Longest silence between two reads.")
    total_timeout_s: float = knob(60.0, "Longest whole transfer, against slow-drip servers.")
    max_attempts: int = 4
    backoff_base_s: float = 0.5
    backoff_max_s: float = knob(30.0, "Longest wait between attempts, also for a Retry-After.")
    max_bytes: int = 8 * 1024 * 1024
    max_pixels: int = knob(25_000_000, "Largest image, in pixels, read from its header before decoding.")
    min_side: int = knob(32, "Smallest width or height an image may have; a smaller one is refused.")
    max_aspect: float = knob(8.0, "Longest side over shortest side past which an image is refused.")
    max_redirects: int = 3

    def __post_init__(self) -> None:
        check_url_template(self.url_template)
        if self.concurrency < 1 or self.max_attempts < 1:
            raise ValueError("concurrency and max_attempts must be at least 1")
        if self.min_side < 1 or self.max_aspect < 1:
            raise ValueError("min_side and max_aspect must be at least 1")
        object.__setattr__(self, "allowed_hosts", frozenset(h.lower() for h in self.allowed_hosts))

    @property
    def limits(self) -> "ImageLimits":
        from stl_pipeline.images.decode import ImageLimits  # here: Pillow stays out of the code location

        return ImageLimits(self.max_pixels, self.min_side, self.max_aspect)
