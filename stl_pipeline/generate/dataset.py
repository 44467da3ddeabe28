"""A deterministic generator of Shop-the-Look data in the release's exact formats.

It writes ``fashion.json`` (JSON lines), ``fashion-cat.json`` (one object),
``images/<signature>.jpg`` and ``fashion-styles.json``, the latent ground truth
that only an oracle baseline may read. The data carries a learnable signal: a
scene dresses its person in one dominant style, and a style gives every
category its own look, so complementary products are not visually similar and
frozen-feature kNN cannot solve Complete-the-Look by colour matching.

Scenes take the release's shape by default: every photo shows a whole outfit of 2-5
garments, of which 1.5 on average are annotated (most scenes annotate one), so a
Complete-the-Look query mostly has only the image around its box to go on. The
``dense`` shape annotates every garment, as the generator did before.
"""

import hashlib
import json
import math
import multiprocessing
import os
import shutil
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from io import BytesIO
from pathlib import Path

import numpy as np
from PIL import Image

from stl_pipeline.categories import LEAVES, PATHS, PUBLISHED_COUNTS
from stl_pipeline.generate.draw import (
    REGIONS,
    Product,
    place_bbox,
    random_look,
    random_product,
    render_product_image,
    render_scene,
)
from stl_pipeline.storage import atomic_writer

PAIRS_FILE = "fashion.json"
CATEGORIES_FILE = "fashion-cat.json"
STYLES_FILE = "fashion-styles.json"
IMAGES_DIR = "images"

# The release's size: 38,111 products in 72,198 pairs over 47,739 scenes (Kang et al.'s
# count), 1.51 annotated products a scene.
FULL_SCALE = {"products": 38_111, "scenes": 47_739, "pairs": 72_198}
# release: a whole outfit in every photo, ``annotated`` of its garments in pairs on average;
# dense: every garment in pairs.
SHAPES = ("release", "dense")
OUTFIT = (2, 5)  # garments a scene shows
ANNOTATED = (1, 2.5)  # release shape: the mean annotated garments a scene may take


@dataclass(frozen=True)
class GeneratorConfig:
    products: int = 400
    scenes: int = 500
    pairs: int | None = None  # None: scenes x annotated (release), 2-5 a scene at random (dense)
    shape: str = "release"
    annotated: float = 1.5  # release shape: mean annotated garments a scene, 1 to 2.5
    styles: int = 8
    off_style: float = 0.15  # share of a scene's products drawn from another style
    jitter: float = 0.1  # colour, placement and pixel noise
    popularity_skew: float = 1.1  # Zipf exponent of product choice within a style
    product_size: int = 128
    scene_width: int = 192
    scene_height: int = 256
    jpeg_quality: int = 90
    seed: int = 0

    def validate(self) -> None:
        if self.styles < 1:
            raise ValueError("styles must be at least 1")
        if self.products < self.styles * len(LEAVES):
            raise ValueError(
                f"products={self.products} is too few: every (style, category) needs one "
                f"product, so use at least {self.styles * len(LEAVES)} or fewer styles"
            )
        if self.scenes < 1:
            raise ValueError("scenes must be at least 1")
        if self.shape not in SHAPES:
            raise ValueError(f"shape={self.shape!r} is unknown: use one of {', '.join(SHAPES)}")
        if self.shape == "release" and not ANNOTATED[0] <= self.annotated <= ANNOTATED[1]:
            raise ValueError(f"annotated={self.annotated} must lie in [1, 2.5] garments a scene")
        low, high = ANNOTATED if self.shape == "release" else OUTFIT
        if self.pairs is not None and not low * self.scenes <= self.pairs <= high * self.scenes:
            raise ValueError(
                f"pairs={self.pairs} cannot be spread over {self.scenes} {self.shape}-shaped scenes "
                f"of {low}-{high} pairs; choose pairs between {math.ceil(low * self.scenes)} and "
                f"{int(high * self.scenes)}"
            )
        if not 0.0 <= self.off_style <= 1.0 or not 0.0 <= self.jitter <= 0.5:
            raise ValueError("off_style must lie in [0, 1] and jitter in [0, 0.5]")


@dataclass(frozen=True)
class Scene:
    signature: str
    style: int
    items: tuple[tuple[int, tuple[float, ...]], ...]  # the annotated (product index, bbox)
    worn: tuple[tuple[int, tuple[float, ...]], ...] = ()  # shown in the photo, not annotated

    @property
    def shown(self) -> tuple[tuple[int, tuple[float, ...]], ...]:
        return self.items + self.worn


def signature(seed: int, kind: str, index: int) -> str:
    return hashlib.blake2b(f"stl-generate:{seed}:{kind}:{index}".encode(), digest_size=16).hexdigest()


def _rng(seed: int, kind: int, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, kind, index])


def _category_counts(config: GeneratorConfig) -> dict[str, int]:
    """One product per style in every category, the rest in the published proportions."""
    total = sum(PUBLISHED_COUNTS.values())
    spare = config.products - config.styles * len(LEAVES)
    shares = {c: spare * n / total for c, n in PUBLISHED_COUNTS.items()}
    counts = {c: config.styles + int(share) for c, share in shares.items()}
    by_remainder = sorted(shares, key=lambda c: shares[c] - int(shares[c]), reverse=True)
    for category in by_remainder[: config.products - sum(counts.values())]:
        counts[category] += 1
    return counts


class _Catalogue:
    """Products grouped by (style, category), chosen with a long-tailed popularity."""

    def __init__(self, config: GeneratorConfig) -> None:
        rng = _rng(config.seed, 0, 0)
        self.looks = [[random_look(rng) for _ in LEAVES] for _ in range(config.styles)]
        self.products: list[Product] = []
        self.styles: list[int] = []
        groups: dict[tuple[int, str], list[int]] = {}
        for category, count in _category_counts(config).items():
            for k in range(count):
                style = k % config.styles
                index = len(self.products)
                product_rng = _rng(config.seed, 1, index)
                look = self.looks[style][LEAVES.index(category)]
                self.products.append(random_product(category, look, product_rng, config.jitter))
                self.styles.append(style)
                groups.setdefault((style, category), []).append(index)
        self._unused = {key: list(rng.permutation(members)) for key, members in groups.items()}
        self._ranked = {key: rng.permutation(members) for key, members in groups.items()}
        self._weights = {
            key: (w := 1.0 / np.arange(1, len(members) + 1) ** config.popularity_skew) / w.sum()
            for key, members in groups.items()
        }

    def pick(self, style: int, category: str, rng: np.random.Generator) -> int:
        """Every product is annotated once before popularity decides: no dead catalogue."""
        key = (style, category)
        if self._unused[key]:
            return int(self._unused[key].pop())
        return self.popular(style, category, rng)

    def popular(self, style: int, category: str, rng: np.random.Generator) -> int:
        key = (style, category)
        return int(rng.choice(self._ranked[key], p=self._weights[key]))


def _scene_sizes(config: GeneratorConfig, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(garments shown, garments annotated) of each scene."""
    if config.shape == "dense":
        if config.pairs is None:
            sizes = rng.integers(OUTFIT[0], OUTFIT[1] + 1, config.scenes)
        else:
            sizes = _spread(np.full(config.scenes, OUTFIT[0]), config.pairs, OUTFIT[1], rng)
        return sizes, sizes
    shown = rng.integers(OUTFIT[0], OUTFIT[1] + 1, config.scenes)
    # Most scenes annotate one garment, a few several (1 + Poisson), to an exact total.
    count = _rng(config.seed, 5, 0)
    extra = np.minimum(count.poisson(config.annotated - 1.0, config.scenes), OUTFIT[1] - 1)
    pairs = config.pairs if config.pairs is not None else round(config.annotated * config.scenes)
    annotated = _spread(1 + extra, pairs, OUTFIT[1], count)
    return np.maximum(shown, annotated), annotated


def _spread(sizes: np.ndarray, total: int, cap: int, rng: np.random.Generator) -> np.ndarray:
    """``sizes`` moved one at a time in random scenes, within [1, ``cap``], until they sum to
    ``total`` (which validation keeps within reach)."""
    sizes = sizes.copy()
    while (gap := total - int(sizes.sum())) != 0:
        movable = np.flatnonzero(sizes < cap) if gap > 0 else np.flatnonzero(sizes > 1)
        chosen = rng.choice(movable, size=min(abs(gap), len(movable)), replace=False)
        sizes[chosen] += 1 if gap > 0 else -1
    return sizes


def _compose_scenes(
    config: GeneratorConfig,
    catalogue: _Catalogue,
    rng: np.random.Generator,
    sizes: np.ndarray,
    kind: str,
    annotated: np.ndarray | None = None,
) -> list[Scene]:
    """Each scene's style and its ``sizes`` garments, of which the first ``annotated`` (all
    when None) are in its pairs: those are picked so that every product gets annotated, the
    rest by popularity alone."""
    region_weight = {
        region: sum(PUBLISHED_COUNTS[c] for c in cats) for region, (_, _, cats) in REGIONS.items()
    }
    regions = list(REGIONS)
    p_region = np.array([region_weight[r] for r in regions], dtype=float)
    scenes = []
    for index, size in enumerate(sizes):
        style = int(rng.integers(config.styles))
        chosen = rng.choice(len(regions), size=int(size), replace=False, p=p_region / p_region.sum())
        annotate = int(size if annotated is None else annotated[index])
        items = []
        for position, r in enumerate(chosen):
            cats = REGIONS[regions[r]][2]
            weights = np.array([PUBLISHED_COUNTS[c] for c in cats], dtype=float)
            category = cats[int(rng.choice(len(cats), p=weights / weights.sum()))]
            product_style = style
            if config.styles > 1 and rng.random() < config.off_style:
                product_style = int((style + rng.integers(1, config.styles)) % config.styles)
            choose = catalogue.pick if position < annotate else catalogue.popular
            items.append((choose(product_style, category, rng), place_bbox(category, rng, config.jitter)))
        name = signature(config.seed, kind, index)
        scenes.append(Scene(name, style, tuple(items[:annotate]), tuple(items[annotate:])))
    return scenes


def compose(config: GeneratorConfig) -> tuple[_Catalogue, list[Scene]]:
    """Decide every scene's style, products and boxes (cheap; no pixels yet)."""
    config.validate()
    catalogue = _Catalogue(config)
    rng = _rng(config.seed, 2, 0)
    shown, annotated = _scene_sizes(config, rng)
    return catalogue, _compose_scenes(config, catalogue, rng, shown, "scene", annotated)


def unseen_scenes(config: GeneratorConfig, count: int, out: Path, stream: int = 1) -> list[dict]:
    """``count`` new scenes of ``config``'s catalogue, absent from its dataset, as JPEGs in
    ``out``; returns their pairs (scene, product, bbox, style) for cold-start tests and demos."""
    config.validate()
    catalogue, _ = compose(config)  # the dataset's own scenes first: popularity stays the same
    rng = _rng(config.seed, 4, stream)
    sizes = rng.integers(OUTFIT[0], OUTFIT[1] + 1, count)
    scenes = _compose_scenes(config, catalogue, rng, sizes, f"unseen-{stream}")
    out.mkdir(parents=True, exist_ok=True)
    _init_worker(config, catalogue, out)
    product_ids = [signature(config.seed, "product", i) for i in range(config.products)]
    pairs = []
    for index, scene in enumerate(scenes):
        _render(("scene", 10_000_000 * stream + index, scene.signature, (scene.style, scene.shown)))
        pairs += [
            {"scene": scene.signature, "product": product_ids[p], "bbox": list(box), "style": scene.style}
            for p, box in scene.items
        ]
    return pairs


# Worker state for parallel rendering; set once per process by _init_worker.
_STATE: dict = {}


def _init_worker(config: GeneratorConfig, catalogue: _Catalogue, images: Path) -> None:
    _STATE.update(config=config, catalogue=catalogue, images=images)


def _encode(image: Image.Image, quality: int) -> bytes:
    buffer = BytesIO()
    image.save(buffer, "JPEG", quality=quality)
    return buffer.getvalue()


def _render(task: tuple) -> None:
    config: GeneratorConfig = _STATE["config"]
    catalogue: _Catalogue = _STATE["catalogue"]
    kind, index, name, payload = task
    if kind == "product":
        image = render_product_image(catalogue.products[index], config.product_size)
    else:
        rng = _rng(config.seed, 3, index)
        style, items = payload
        tint = catalogue.looks[style][0].base
        image = render_scene(
            config.scene_width,
            config.scene_height,
            tint,
            [(catalogue.products[p], box) for p, box in items],
            rng,
            config.jitter,
        )
    # Plain writes: the staging directory as a whole is renamed into place.
    (_STATE["images"] / f"{name}.jpg").write_bytes(_encode(image, config.jpeg_quality))


def _tasks(config: GeneratorConfig, scenes: list[Scene]) -> Iterator[tuple]:
    for index in range(config.products):
        yield ("product", index, signature(config.seed, "product", index), None)
    for index, scene in enumerate(scenes):
        yield ("scene", index, scene.signature, (scene.style, scene.shown))


def _write(
    config: GeneratorConfig, catalogue: _Catalogue, scenes: list[Scene], staging: Path, workers: int | None
) -> None:
    images = staging / IMAGES_DIR
    images.mkdir(parents=True)

    product_ids = [signature(config.seed, "product", i) for i in range(config.products)]
    with atomic_writer(staging / PAIRS_FILE) as handle:
        for scene in scenes:
            for product, bbox in scene.items:
                line = {"product": product_ids[product], "scene": scene.signature, "bbox": list(bbox)}
                handle.write((json.dumps(line) + "\n").encode())
    with atomic_writer(staging / CATEGORIES_FILE) as handle:
        categories = {pid: PATHS[p.category] for pid, p in zip(product_ids, catalogue.products, strict=True)}
        handle.write(json.dumps(categories).encode())
    truth = {
        "generator": asdict(config),
        "products": dict(zip(product_ids, catalogue.styles, strict=True)),
        "scenes": {scene.signature: scene.style for scene in scenes},
    }
    with atomic_writer(staging / STYLES_FILE) as handle:
        handle.write(json.dumps(truth).encode())

    n_images = config.products + len(scenes)
    if workers is None:
        workers = min(os.cpu_count() or 1, max(1, n_images // 2000))
    if workers <= 1:
        _init_worker(config, catalogue, images)
        for task in _tasks(config, scenes):
            _render(task)
    else:
        # spawn, not fork: callers (Dagster runs) may hold threads and locks.
        context = multiprocessing.get_context("spawn")
        with context.Pool(workers, _init_worker, (config, catalogue, images)) as pool:
            for _ in pool.imap_unordered(_render, _tasks(config, scenes), chunksize=64):
                pass
            # Let the workers exit on their own before the pool's exit terminates it: terminate()
            # races the thread that replaces exited workers, and a worker started during it waits
            # for ever on the task queue's lock, so join() never returns (a test hung on it).
            pool.close()
            pool.join()


def generate_dataset(config: GeneratorConfig, out: Path, workers: int | None = None) -> dict:
    """Write a complete dataset to ``out`` (which must not exist yet); return a summary.

    Files are written into a sibling temporary directory that is renamed into
    place at the end, so ``out`` either holds a whole dataset or does not exist.
    """
    out = Path(out)
    if out.exists():
        raise FileExistsError(f"{out} already exists; remove it or choose another --out")
    catalogue, scenes = compose(config)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.with_name(f".{out.name}.generating-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    try:
        _write(config, catalogue, scenes, staging, workers)
        os.replace(staging, out)
    except BaseException as exc:
        shutil.rmtree(staging, ignore_errors=True)
        if isinstance(exc, OSError) and out.exists():
            raise FileExistsError(f"{out} was created by another process while generating") from exc
        raise
    return {
        "shape": config.shape,
        "products": config.products,
        "scenes": len(scenes),
        "pairs": sum(len(s.items) for s in scenes),
        "single_annotated_scenes": sum(len(s.items) == 1 for s in scenes),
        "images": config.products + len(scenes),
        "categories": {c: sum(p.category == c for p in catalogue.products) for c in LEAVES},
    }
