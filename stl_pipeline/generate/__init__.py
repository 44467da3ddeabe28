"""The embedded default dataset: generated Shop-the-Look data in the release's formats."""

from stl_pipeline.generate.dataset import (
    CATEGORIES_FILE,
    FULL_SCALE,
    IMAGES_DIR,
    PAIRS_FILE,
    SHAPES,
    STYLES_FILE,
    GeneratorConfig,
    generate_dataset,
    unseen_scenes,
)

__all__ = [
    "CATEGORIES_FILE",
    "FULL_SCALE",
    "IMAGES_DIR",
    "PAIRS_FILE",
    "SHAPES",
    "STYLES_FILE",
    "GeneratorConfig",
    "generate_dataset",
    "unseen_scenes",
]
