"""The input transform: crop, letterbox to a square, resize; normalization happens on the device.

Letterboxing keeps the whole crop: a center crop would cut off the edges of
tall scenes and of the narrow regions that Complete-the-Look queries use.
This module imports no torch: decoding processes run it with numpy and Pillow
alone, at a tenth of the memory a torch process takes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from stl_pipeline.features.regions import Box
from stl_pipeline.images.decode import decode

if TYPE_CHECKING:
    import torch

Job = tuple[str, str, Box | None, Box | None]  # key, image path, crop box, masked box

_RESAMPLE = {
    "bicubic": Image.Resampling.BICUBIC,
    "bilinear": Image.Resampling.BILINEAR,
    "nearest": Image.Resampling.NEAREST,
}


@dataclass(frozen=True)
class Letterbox:
    size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str = "bicubic"

    def describe(self) -> str:
        mean = ",".join(f"{v:.3f}" for v in self.mean)
        std = ",".join(f"{v:.3f}" for v in self.std)
        return f"letterbox {self.size}px {self.interpolation} mean=({mean}) std=({std})"

    def __call__(self, image: Image.Image, box: Box | None = None, mask: Box | None = None) -> np.ndarray:
        """A uint8 CHW array; uint8 keeps worker-to-device traffic four times smaller. A
        ``mask`` is filled with the mean colour, which normalizes to zero on the device."""
        image = image.convert("RGB")  # a copy even when it is RGB already: the input stays as it was
        fill = tuple(round(255 * m) for m in self.mean)
        if mask is not None:
            image.paste(fill, mask)
        if box is not None:
            image = image.crop(box)
        width, height = image.size
        scale = self.size / max(width, height)
        resized = image.resize(
            (max(1, round(width * scale)), max(1, round(height * scale))),
            _RESAMPLE.get(self.interpolation, Image.Resampling.BILINEAR),
        )
        canvas = Image.new("RGB", (self.size, self.size), fill)
        canvas.paste(resized, ((self.size - resized.width) // 2, (self.size - resized.height) // 2))
        return np.ascontiguousarray(np.asarray(canvas).transpose(2, 0, 1))

    def normalizer(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-channel offset and scale for uint8 input: ``(x - offset) / scale``."""
        import torch

        mean = torch.tensor(self.mean, device=device).view(1, 3, 1, 1) * 255
        std = torch.tensor(self.std, device=device).view(1, 3, 1, 1) * 255
        return mean, std


def decode_batch(jobs: list[Job], transform: Letterbox) -> np.ndarray:
    """(B, 3, S, S) uint8: each image decoded as shown (upright, over white), cropped and
    letterboxed, so boxes meet the pixels they were drawn on; a bad file is named."""
    out = np.empty((len(jobs), 3, transform.size, transform.size), dtype=np.uint8)
    # A scene's views follow each other (its pairs' regions, masks and garments): each is
    # decoded once. The transform draws on a copy, never on the decoded image.
    last: tuple[str, Image.Image] | None = None
    for row, (key, path, box, mask) in enumerate(jobs):
        try:
            if last is None or last[0] != path:
                last = (path, decode(path))
            out[row] = transform(last[1], box, mask)
        except (OSError, ValueError) as error:
            raise RuntimeError(
                f"cannot read the image of {key} at {path}: {error}; "
                "rematerialize the image assets to download it again"
            ) from error
    return out
