"""What fanning the embeddings out by partition costs on one machine, and that it changes nothing.

On a generated dataset, after ingestion and downloads, materializes ``product_embeddings``
and ``scene_embeddings`` (with their checks) twice from an empty embedding cache: once as
one run over all sixteen partitions (what ``make demo`` and the sensor's ingestion do), and
once as sixteen runs of one partition each (what a backfill launches). Prints the wall
time of each, the ratio to the one-run floor, and the largest difference between the two
sets of vectors. On a deployment the sixteen runs go to as many containers or pods as the
``gpu`` pool has slots, so their wall time divides by that number; the ratio here is the
overhead that buys it.

    .venv/bin/python benchmarks/partitions.py [--products 400 --scenes 300] [--scale 0.1]
"""

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

import dagster as dg
import numpy as np
from tabulate import tabulate

from stl_pipeline.catalogue import read_embeddings
from stl_pipeline.definitions import MODULES, build_definitions
from stl_pipeline.features.assets import ALL_PARTITIONS
from stl_pipeline.features.partitions import PARTITIONS
from stl_pipeline.generate import FULL_SCALE, GeneratorConfig, generate_dataset
from stl_pipeline.settings import load_settings

EMBEDDINGS = ("product_embeddings", "scene_embeddings")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--products", type=int, default=400)
    parser.add_argument("--scenes", type=int, default=300)
    parser.add_argument("--scale", type=float, help="a share of the release's size instead")
    parser.add_argument("--image-size", type=int, default=128)
    args = parser.parse_args()
    if args.scale:
        args.products = int(FULL_SCALE["products"] * args.scale)
        args.scenes = int(FULL_SCALE["scenes"] * args.scale)

    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "raw"
        generate_dataset(GeneratorConfig(products=args.products, scenes=args.scenes, seed=3), raw)
        environ = {
            "STL_DATA_DIR": str(Path(tmp) / "data"),
            "STL_PAIRS_PATH": str(raw / "fashion.json"),
            "STL_CATEGORIES_PATH": str(raw / "fashion-cat.json"),
            "STL_IMAGE_URL_TEMPLATE": (raw / "images").as_uri() + "/{signature}.jpg",
            "STL_BACKBONE": "tf_efficientnet_lite0",
            "STL_BACKBONE_WEIGHTS": "packaged",
            "STL_BACKBONE_IMAGE_SIZE": str(args.image_size),
            "STL_DEVICE": os.environ.get("STL_DEVICE", "auto"),
        }
        settings = load_settings(environ)
        resources = build_definitions(settings).resources
        assets = [*dg.load_assets_from_modules(MODULES), *dg.load_asset_checks_from_modules(MODULES)]
        instance = dg.DagsterInstance.ephemeral()

        def materialize(selection: dg.AssetSelection, **kwargs: object) -> None:
            result = dg.materialize(
                assets, selection=selection, resources=resources, instance=instance, **kwargs
            )
            assert result.success

        materialize(dg.AssetSelection.groups("ingest", "images"))
        embeddings = dg.AssetSelection.assets(*EMBEDDINGS)
        images = 0

        rows, vectors = [], {}
        for mode, runs in (
            ("one run, all partitions", [ALL_PARTITIONS]),
            ("a run per partition", PARTITIONS),
        ):
            shutil.rmtree(settings.data_dir / "cache", ignore_errors=True)
            start = time.perf_counter()
            for run in runs:
                if isinstance(run, dict):
                    materialize(embeddings, tags=run)
                else:
                    materialize(embeddings, partition_key=run)
            seconds = time.perf_counter() - start
            vectors[mode] = {name: read_embeddings(settings.data_dir, name) for name in EMBEDDINGS}
            images = sum(len(v) for v in vectors[mode].values())
            rows.append([mode, len(runs), f"{seconds:.1f}", f"{images / seconds:.0f}", seconds])

        floor = rows[0][-1]
        first, second = vectors.values()
        difference = max(
            float(np.abs(second[name].take(first[name].keys) - first[name].vectors).max())
            for name in EMBEDDINGS
        )
        for row in rows:
            row[-1] = f"{row[-1] / floor:.2f}"
        print(f"\n{args.products:,} products, {args.scenes:,} scenes; {images:,} images embedded each way")
        print(tabulate(rows, headers=["mode", "runs", "wall s", "images/s", "x one run"], tablefmt="github"))
        print(f"largest |difference| between the two sets of vectors: {difference:.2e}")


if __name__ == "__main__":
    main()
