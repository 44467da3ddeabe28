"""Embed images in batches: decode in data-loader workers, infer on the device, cache by content.

The cache is keyed by (image sha256, crop box) inside a namespace of
(model, weights, transform, precision), so new images cost work and old ones do not,
and a changed backbone never reuses stale vectors.
"""

import json
import multiprocessing
import os
import time
import warnings
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch
import torch.nn.functional as F

from stl_pipeline.device import Precision, autocast
from stl_pipeline.features.backbone import Backbone
from stl_pipeline.features.queries import ImageItem
from stl_pipeline.features.transform import Letterbox, decode_batch
from stl_pipeline.storage import atomic_write_bytes, atomic_write_with
from stl_pipeline.vectors import KEY, Embeddings

COMPACT_AFTER = 16  # cache parts before they are merged into one
READ_BATCH = 8192  # cached vectors read at a time


class Embedder:
    """The backbone on its device: uint8 batches in, L2-normalized float32 vectors out.

    With ``grid`` set, each image also gives ``grid * grid`` tokens: its last feature map
    average-pooled to a grid, each cell L2-normalized, row after row, flattened into one
    row. The pooled vector is the head over that map (its mean, for the usual average
    pool), so a token is what the one vector says about its part of the image."""

    def __init__(
        self, backbone: Backbone, device: torch.device, precision: Precision = "fp32", grid: int = 0
    ) -> None:
        self.device, self.precision, self.grid = device, precision, grid
        self.model = backbone.model.to(device).eval().to(memory_format=torch.channels_last)
        self.offset, self.scale = backbone.transform.normalizer(device)

    def _normalized(self, batch: torch.Tensor) -> torch.Tensor:
        # Reorder while still uint8 (a quarter of the bytes), then normalize in place.
        x = batch.to(self.device, non_blocking=True).contiguous(memory_format=torch.channels_last)
        return x.float().sub_(self.offset).div_(self.scale)

    @torch.inference_mode()
    def __call__(self, batch: torch.Tensor) -> np.ndarray:
        with autocast(self.device, self.precision):
            features = self.model(self._normalized(batch))
        return F.normalize(features.float(), dim=1).cpu().numpy()

    @torch.inference_mode()
    def with_tokens(self, batch: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """The pooled vectors and the tokens of ``batch`` from one pass: a timm model is its
        last feature map (``forward_features``) then its head."""
        with autocast(self.device, self.precision):
            features = self.model.forward_features(self._normalized(batch))
            pooled = self.model.forward_head(features)
        if features.dim() != 4:
            raise ValueError(
                f"context tokens need a convolutional feature map, got shape {tuple(features.shape)}"
            )
        cells = F.adaptive_avg_pool2d(features.float(), self.grid).flatten(2).transpose(1, 2)
        tokens = F.normalize(cells, dim=2).flatten(1).cpu().numpy()
        return F.normalize(pooled.float(), dim=1).cpu().numpy(), tokens


def batches(
    items: list[ImageItem], transform: Letterbox, batch_size: int, workers: int
) -> Iterator[torch.Tensor]:
    """Decoded, cropped, letterboxed uint8 batches in ``items``' order, made in ``workers``
    processes (0: in this one).

    The processes come from a fork server that imports only the transform (numpy and
    Pillow), not from this process: forked copies of a process that holds torch and a
    model would each count its gigabytes again. At most two batches per process are in
    flight, so a slow device never lets decoded images pile up.
    """
    jobs = [
        [(i.key, i.path, i.box, i.mask) for i in items[s : s + batch_size]]
        for s in range(0, len(items), batch_size)
    ]
    if workers <= 0:
        for chunk in jobs:
            yield torch.from_numpy(decode_batch(chunk, transform))
        return
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload([decode_batch.__module__])
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=context)
    try:
        pending: deque = deque()
        for chunk in jobs:
            pending.append(pool.submit(decode_batch, chunk, transform))
            if len(pending) >= 2 * workers:
                yield torch.from_numpy(pending.popleft().result())
        while pending:
            yield torch.from_numpy(pending.popleft().result())
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _part_batches(part: Path) -> Iterator[pa.RecordBatch]:
    """A cache part, a bounded batch at a time. A part merged away by a concurrent run is
    skipped; a damaged one is removed, so its vectors are computed again instead of every
    later run failing on it."""
    try:
        yield from pq.ParquetFile(part).iter_batches(batch_size=READ_BATCH)
    except FileNotFoundError:
        return
    except (OSError, pa.ArrowException) as error:
        warnings.warn(f"removed damaged embedding cache part {part} ({error}); recomputing", stacklevel=2)
        part.unlink(missing_ok=True)


class EmbeddingCache:
    """Append-only parquet parts under ``root/<namespace>``; merged once there are many.
    Vectors computed in reduced precision differ from fp32's in the third decimal, so each
    precision has its own namespace: one asset never mixes the two."""

    def __init__(self, root: Path, backbone: Backbone, precision: Precision = "fp32") -> None:
        self.dir = Path(root) / (backbone.namespace() + ("" if precision == "fp32" else f"-{precision}"))
        self.dir.mkdir(parents=True, exist_ok=True)
        about = self.dir / "backbone.json"
        if not about.exists():
            atomic_write_bytes(about, json.dumps(backbone.describe(), indent=2).encode())

    def _parts(self) -> list[Path]:
        return sorted(self.dir.glob("part-*.parquet"))

    def _batches(self) -> Iterator[pa.RecordBatch]:
        """Every part, a bounded batch at a time: the namespace holds every asset's vectors,
        and a run at the release's size should never hold them all."""
        for part in self._parts():
            yield from _part_batches(part)

    def fill(self, rows_of: dict[str, list[int]], out: np.ndarray) -> set[str]:
        """Write the cached vector of each key in ``rows_of`` into those rows of ``out``;
        return the keys found."""
        found: set[str] = set()
        wanted = pa.array(list(rows_of), pa.string())
        for batch in self._batches():
            hits = batch.filter(pc.is_in(batch.column(KEY), value_set=wanted))
            if not hits.num_rows:
                continue
            cached = Embeddings.from_table(pa.Table.from_batches([hits]))
            for key, vector in zip(cached.keys, cached.vectors, strict=True):
                out[rows_of[key]] = vector
                found.add(key)
        return found

    def add(self, keys: list[str], vectors: np.ndarray) -> None:
        """Persist one batch at once, so an interrupted run resumes where it stopped."""
        if keys:
            Embeddings(keys, vectors).save(self.dir / f"part-{time.time_ns()}-{os.getpid()}.parquet")

    def compact(self) -> None:
        """Merge the parts into one once there are many, streaming, each key once."""
        parts = self._parts()
        if len(parts) <= COMPACT_AFTER:
            return
        seen: set[str] = set()

        def merge(tmp: Path) -> None:
            with pq.ParquetWriter(tmp, pq.read_schema(parts[0])) as writer:
                for part in parts:
                    for batch in _part_batches(part):
                        keys = batch.column(KEY).to_pylist()
                        new = [i for i, key in enumerate(keys) if key not in seen]
                        seen.update(keys[i] for i in new)
                        if new:
                            writer.write_batch(batch.take(pa.array(new)))

        atomic_write_with(self.dir / f"part-{time.time_ns()}-{os.getpid()}-merged.parquet", merge)
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
    grid: int = 0,
    pooled_cache: EmbeddingCache | None = None,
) -> tuple[Embeddings, EmbedStats]:
    """Embeddings of ``items`` in their order, computing only what the cache lacks; with
    ``grid``, each row holds an item's ``grid * grid`` tokens (``Embedder``), ``cache`` must
    be one of rows that wide, and the pooled vector the same pass gives goes to
    ``pooled_cache``: an asset that embeds the same views finds it there.

    A 1 x 1 grid is the pooled vector itself (the head's average pool): it is read from
    and written to ``pooled_cache``, where the crops other assets embed already are.

    Cached and new vectors go straight into the result's rows: one copy of the
    vectors is held, whatever the size of the run."""
    if grid == 1:
        return embed_items(items, backbone, device, precision, batch_size, workers, pooled_cache, progress)
    rows_of: dict[str, list[int]] = {}
    for row, item in enumerate(items):
        rows_of.setdefault(item.cache_key, []).append(row)
    vectors = np.empty((len(items), backbone.dim * max(1, grid) ** 2), dtype=np.float32)
    found = cache.fill(rows_of, vectors) if cache else set()
    todo = [items[rows[0]] for key, rows in rows_of.items() if key not in found]
    start = time.perf_counter()
    if todo:
        embedder = Embedder(backbone, device, precision, grid)
        done = 0
        for batch in batches(todo, backbone.transform, batch_size, workers):
            pooled, tokens = embedder.with_tokens(batch) if grid else (embedder(batch), None)
            computed = pooled if tokens is None else tokens
            chunk = todo[done : done + len(computed)]
            for item, vector in zip(chunk, computed, strict=True):
                vectors[rows_of[item.cache_key]] = vector
            if cache:
                cache.add([item.cache_key for item in chunk], computed)
            if pooled_cache and tokens is not None:
                pooled_cache.add([item.cache_key for item in chunk], pooled)
            done += len(computed)
            if progress:
                progress(done, len(todo))
        for used in (cache, pooled_cache):
            if used:
                used.compact()
    seconds = time.perf_counter() - start
    cached = sum(len(rows_of[key]) for key in found)
    info = {**backbone.describe(), "device": str(device), "precision": precision}
    stats = EmbedStats(computed=len(todo), cached=cached, seconds=seconds)
    return Embeddings([item.key for item in items], vectors, info), stats
