"""Cold-start latency: ``ColdStart.scene`` and ``ColdStart.product`` as Python calls on a warm
model, on CPU, with the index at demo size and at the release's size (38,111 products).

The model, index and train scenes have the shapes the pipeline makes (the demo backbone,
tf_efficientnet_lite0 at 128 px, 1,280-d features; a GAT's 128-d product vectors) and
random values: latency depends on shapes, not on what was learned. The query is a
generated scene photo with a bbox. ``product`` is compared, in the same run, with a
brute-force numpy search over the same vectors (its peer).

    .venv/bin/python benchmarks/recommend.py [--calls 200] [--threads 2]
"""

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from tabulate import tabulate

from stl_pipeline.categories import LEAVES, PUBLISHED_COUNTS
from stl_pipeline.features.backbone import load_backbone
from stl_pipeline.features.spec import BackboneSpec
from stl_pipeline.generate import FULL_SCALE, GeneratorConfig, unseen_scenes
from stl_pipeline.graph.schema import PRODUCT, SCENE
from stl_pipeline.models.recommender import GraphRecommender
from stl_pipeline.serving.cold_start import ColdStart, TrainScenes
from stl_pipeline.serving.index import build_index

SIZES = {"demo": (400, 200), "release": (FULL_SCALE["products"], int(FULL_SCALE["scenes"] * 0.8))}


def unit(rows: int, dim: int, rng: np.random.Generator) -> np.ndarray:
    x = rng.standard_normal((rows, dim), dtype=np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def service(products: int, scenes: int, backbone, seed: int = 0) -> ColdStart:
    rng = np.random.default_rng(seed)
    weights = np.array([PUBLISHED_COUNTS[c] for c in LEAVES], dtype=float)
    category = rng.choice(len(LEAVES), products, p=weights / weights.sum())
    node_dims = {PRODUCT: backbone.dim + len(LEAVES), SCENE: backbone.dim}
    model = GraphRecommender(node_dims, [], backbone.dim).eval()
    ids = [f"{i:032x}" for i in range(products)]
    return ColdStart(
        backbone=backbone,
        model=model,
        index=build_index(unit(products, 128, rng), ids),
        category=category,
        scenes=TrainScenes(
            ids=[f"{i:032x}" for i in range(scenes)],
            vectors=torch.from_numpy(unit(scenes, backbone.dim, rng)),
            products=[rng.integers(0, products, rng.integers(2, 6)) for _ in range(scenes)],
            k=10,
        ),
        source={"model": "gat"},
    )


def timed(call, calls: int, warmup: int = 10) -> list[float]:
    for _ in range(warmup):
        call()
    seconds = []
    for _ in range(calls):
        start = time.perf_counter()
        call()
        seconds.append(time.perf_counter() - start)
    return seconds


def row(size: str, products: int, name: str, seconds: list[float], peer: list[float] | None = None) -> list:
    ms = np.array(seconds) * 1000
    ratio = f"{np.sum(peer) / np.sum(seconds):.2f}" if peer else ""
    return [
        size,
        products,
        name,
        np.percentile(ms, 50),
        np.percentile(ms, 99),
        len(ms) / np.sum(seconds),
        ratio,
    ]


def measure(size: str, cold: ColdStart, image: Path, bbox: tuple, calls: int) -> list[list]:
    vectors, product = cold.index.vectors(), cold.index.ids[1]
    products = len(vectors)
    brute = timed(lambda: np.argsort(-(vectors @ vectors[1]))[:11], calls)
    return [
        row(size, products, "scene (bbox)", timed(lambda: cold.scene(image, bbox), calls)),
        row(size, products, "product", timed(lambda: cold.product(product), calls), brute),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    backbone = load_backbone(BackboneSpec("tf_efficientnet_lite0", "packaged", None, 128))
    with tempfile.TemporaryDirectory() as folder:
        (pair, *_) = unseen_scenes(GeneratorConfig(products=80, scenes=1), 1, Path(folder))
        image, bbox = Path(folder) / f"{pair['scene']}.jpg", tuple(pair["bbox"])
        rows = [
            line
            for size, (products, scenes) in SIZES.items()
            for line in measure(size, service(products, scenes, backbone), image, bbox, args.calls)
        ]
    headers = ["index", "products", "call", "p50 ms", "p99 ms", "QPS (1 caller)", "numpy brute force / this"]
    print(f"CPU, {args.threads} torch threads, {args.calls} calls each after 10 warm-up calls\n")
    print(tabulate(rows, headers=headers, floatfmt=".2f", tablefmt="github"))


if __name__ == "__main__":
    main()
