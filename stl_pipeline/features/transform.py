"""The input transform: crop, letterbox to a square, resize; normalization happens on the device.

Letterboxing keeps the whole crop: a center crop would cut off the edges of
tall scenes and of the narrow regions that Complete-the-Look queries use.
"""

from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from stl_pipeline.features.regions import Box

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

    def __call__(self, image: Image.Image, box: Box | None = None) -> torch.Tensor:
        """A uint8 CHW tensor; uint8 keeps worker-to-device traffic four times smaller."""
        image = image.convert("RGB")
        if box is not None:
            image = image.crop(box)
        width, height = image.size
        scale = self.size / max(width, height)
        resized = image.resize(
            (max(1, round(width * scale)), max(1, round(height * scale))),
            _RESAMPLE.get(self.interpolation, Image.Resampling.BILINEAR),
        )
        fill = tuple(round(255 * m) for m in self.mean)
        canvas = Image.new("RGB", (self.size, self.size), fill)
        canvas.paste(resized, ((self.size - resized.width) // 2, (self.size - resized.height) // 2))
        return torch.from_numpy(np.asarray(canvas).copy()).permute(2, 0, 1)

    def normalizer(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-channel offset and scale for uint8 input: ``(x - offset) / scale``."""
        mean = torch.tensor(self.mean, device=device).view(1, 3, 1, 1) * 255
        std = torch.tensor(self.std, device=device).view(1, 3, 1, 1) * 255
        return mean, std
