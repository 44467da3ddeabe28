"""Embed images in batches: decode in data-loader workers, infer on the device, cache by content.

The cache is keyed by (image sha256, crop box) inside a namespace of
(model, weights, transform), so new images cost work and old ones do not,
and a changed backbone never reuses stale vectors.
"""

import json
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from stl_pipeline.device import Precision, autocast
from stl_pipeline.features.backbone import Backbone
from stl_pipeline.features.queries import ImageItem
from stl_pipeline.features.transform import Letterbox
from stl_pipeline.storage import atomic_write_bytes
from stl_pipeline.vectors import KEY, Embeddings

COMPACT_AFTER = 16  # cache parts before they are merged into one


class ImageDataset(Dataset):
    def __init__(self, items: list[ImageItem], transform: Letterbox) -> None:
        self.items, self.transform = items, transform

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> torch.Tensor:
        item = self.items[index]
        try:
            with Image.open(item.path) as image:
                return self.transform(image, item.box)
        except (OSError, ValueError) as error:
            raise RuntimeError(
                f"cannot read the image of {item.key} at {item.path}: {error}; "
                "rematerialize the image assets to download it again"
            ) from error


class Embedder:
    """The backbone on its device: uint8 batches in, L2-normalized float32 vectors out."""

    def __init__(self, backbone: Backbone, device: torch.device, precision: Precision = "fp32") -> None:
        self.device, self.precision = device, precision
        self.model = backbone.model.to(device).eval().to(memory_format=torch.channels_last)
        self.offset, self.scale = backbone.transform.normalizer(device)

    @torch.inference_mode()
    def __call__(self, batch: torch.Tensor) -> np.ndarray:
        # Reorder while still uint8 (a quarter of the bytes), then normalize in place.
        x = batch.to(self.device, non_blocking=True).contiguous(memory_format=torch.channels_last)
        x = x.float().sub_(self.offset).div_(self.scale)
        with autocast(self.device, self.precision):
            features = self.model(x)
        return F.normalize(features.float(), dim=1).cpu().numpy()


def batches(
    items: list[ImageItem], transform: Letterbox, batch_size: int, workers: int, pin_memory: bool = False
) -> Iterable[torch.Tensor]:
    """Decoded, cropped, letterboxed uint8 batches, made in ``workers`` processes."""
    return DataLoader(
        ImageDataset(items, transform),
        batch_size=batch_size,
        num_workers=workers,
        pin_memory=pin_memory,
        persistent_workers=False,
    )


class EmbeddingCache:
    """Append-only parquet parts under ``root/<namespace>``; merged once there are many."""

    def __init__(self, root: Path, backbone: Backbone) -> None:
        self.dir = Path(root) / backbone.namespace()
        self.dir.mkdir(parents=True, exist_ok=True)
        about = self.dir / "backbone.json"
        if not about.exists():
            atomic_write_bytes(about, json.dumps(backbone.describe(), indent=2).encode())

    def _parts(self) -> list[Path]:
        return sorted(self.dir.glob("part-*.parquet"))

    def load(self, wanted: set[str] | None = None) -> Embeddings | None:
        """The cached vectors (only those of ``wanted`` keys, if given: the namespace holds
        every asset's vectors, and a full-scale run should not hold them all in memory)."""
        tables = []
        for part in self._parts():
            try:
                table = pq.read_table(part)
            except FileNotFoundError:  # merged away by a concurrent run
                continue
            if wanted is not None:
                table = table.filter(pc.is_in(table[KEY], value_set=pa.array(sorted(wanted), pa.string())))
            tables.append(Embeddings.from_table(table))
        if not tables:
            return None
        keys = [key for table in tables for key in table.keys]
        return Embeddings(keys, np.concatenate([t.vectors for t in tables]))

    def add(self, keys: list[str], vectors: np.ndarray) -> None:
        """Persist one batch at once, so an interrupted run resumes where it stopped."""
        if keys:
            Embeddings(keys, vectors).save(self.dir / f"part-{time.time_ns()}-{os.getpid()}.parquet")

    def compact(self) -> None:
        parts = self._parts()
        if len(parts) <= COMPACT_AFTER:
            return
        merged = self.load()
        if merged is not None:
            unique = dict(zip(merged.keys, merged.vectors, strict=True))
            Embeddings(list(unique), np.stack(list(unique.values()))).save(
                self.dir / f"part-{time.time_ns()}-{os.getpid()}-merged.parquet"
            )
            for part in parts:
                part.unlink(missing_ok=True)


@dataclass
class EmbedStats:
    computed: int
    cached: int
    seconds: float

    @property
    def images_per_second(self) -> float:
        return self.computed / self.seconds if self.seconds > 0 else 0.0


def embed_items(
    items: list[ImageItem],
    backbone: Backbone,
    device: torch.device,
    precision: Precision = "fp32",
    batch_size: int = 64,
    workers: int = 2,
    cache: EmbeddingCache | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[Embeddings, EmbedStats]:
    """Embeddings of ``items`` in their order, computing only what the cache lacks."""
    known = cache.load({item.cache_key for item in items}) if cache else None
    found = known.positions() if known else {}
    todo = [item for item in items if item.cache_key not in found]
    unique_todo = list({item.cache_key: item for item in todo}.values())
    start = time.perf_counter()
    fresh: dict[str, np.ndarray] = {}
    if unique_todo:
        embedder = Embedder(backbone, device, precision)
        done = 0
        loader = batches(unique_todo, backbone.transform, batch_size, workers, device.type == "cuda")
        for batch in loader:
            vectors = embedder(batch)
            chunk = unique_todo[done : done + len(vectors)]
            fresh.update((item.cache_key, v) for item, v in zip(chunk, vectors, strict=True))
            if cache:
                cache.add([item.cache_key for item in chunk], vectors)
            done += len(vectors)
            if progress:
                progress(done, len(unique_todo))
        if cache:
            cache.compact()
    seconds = time.perf_counter() - start
    dim = backbone.dim
    vectors = np.empty((len(items), dim), dtype=np.float32)
    for row, item in enumerate(items):
        vector = fresh.get(item.cache_key)
        vectors[row] = vector if vector is not None else known.vectors[found[item.cache_key]]
    info = {**backbone.describe(), "device": str(device), "precision": precision}
    stats = EmbedStats(computed=len(unique_todo), cached=len(items) - len(todo), seconds=seconds)
    return Embeddings([item.key for item in items], vectors, info), stats
