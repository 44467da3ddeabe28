"""Where asset values live under the data root: the one map that the IO managers, cold start,
the demo and the benchmarks share, so that a moved folder or a new format changes here only.
"""

from pathlib import Path
from typing import TYPE_CHECKING

from stl_pipeline.registry import MODEL_ASSETS

if TYPE_CHECKING:
    from stl_pipeline.vectors import Embeddings

# IO manager key -> (folder under STL_DATA_DIR, file suffix)
STORES = {
    "io_manager": ("tables", ".parquet"),
    "embedding_io_manager": ("embeddings", ".parquet"),
    "graph_io_manager": ("graph", ".safetensors"),
    "model_io_manager": ("models", ".pt"),
    "index_io_manager": ("serving", ".safetensors"),
}
# Assets stored as one file per partition (features/partitions.py) in a folder of their own.
PARTITIONED = frozenset(
    (
        "product_embeddings",
        "scene_embeddings",
        "stl_crop_embeddings",
        "ctl_scene_embeddings",
        "ctl_scene_context",
    )
)
# The IO manager of every asset read outside Dagster (test_definitions checks these against
# the assets' own declarations).
ASSET_STORES = {
    **dict.fromkeys(
        (
            "stl_pairs",
            "stl_products",
            "scene_images",
            "retrieval_report",
            "recommendations",
            "hm_transactions",
            "hm_articles",
            "hm_customers",
            "hm_report",
            "hm_recommendations",
        ),
        "io_manager",
    ),
    **dict.fromkeys(PARTITIONED, "embedding_io_manager"),
    "stl_graph": "graph_io_manager",
    "hm_graph": "graph_io_manager",
    "hm_sage_model": "model_io_manager",
    "stl_champion": "model_io_manager",
    "hm_champion": "model_io_manager",
    **dict.fromkeys(MODEL_ASSETS.values(), "model_io_manager"),
    "product_index": "index_io_manager",
}


def store_dir(data_dir: Path, io_manager_key: str) -> Path:
    return Path(data_dir) / STORES[io_manager_key][0]


def read_embeddings(data_dir: Path, asset: str) -> "Embeddings":
    """A partitioned embedding asset, every partition, as one set (what its readers in Dagster get)."""
    from stl_pipeline.features.partitions import PARTITIONS
    from stl_pipeline.vectors import load_partitions

    return load_partitions(asset_path(data_dir, asset), PARTITIONS)


def asset_path(data_dir: Path, asset: str) -> Path:
    """The file that holds ``asset``'s latest materialized value; for a partitioned asset, the
    folder of its partition files (``vectors.load_partitions``)."""
    store = ASSET_STORES[asset]
    folder = store_dir(data_dir, store)
    return folder / asset if asset in PARTITIONED else folder / f"{asset}{STORES[store][1]}"
