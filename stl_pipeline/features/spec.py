"""Which backbone to load, as plain data: the resources that carry it load without torch."""

from dataclasses import dataclass
from typing import Literal

WeightsSource = Literal["hub", "checkpoint", "packaged", "none"]
WEIGHTS_SOURCES: tuple[str, ...] = ("hub", "checkpoint", "packaged", "none")


@dataclass(frozen=True)
class BackboneSpec:
    model: str = "resnet50"
    weights: WeightsSource = "hub"
    checkpoint: str | None = None
    image_size: int | None = None  # None: the model's pretrained input size
    seed: int = 0  # initializes ``none`` weights reproducibly
