"""Where asset values live under the data root: the one map that the IO managers, cold start,
the demo and the benchmarks share, so that a moved folder or a new format changes here only.
"""

from pathlib import Path

from stl_pipeline.registry import MODEL_ASSETS

# IO manager key -> (folder under STL_DATA_DIR, file suffix)
STORES = {
    "io_manager": ("tables", ".parquet"),
    "embedding_io_manager": ("embeddings", ".parquet"),
    "graph_io_manager": ("graph", ".safetensors"),
    "model_io_manager": ("models", ".pt"),
    "index_io_manager": ("serving", ".safetensors"),
}
# The IO manager of every asset read outside Dagster (test_definitions checks these against
# the assets' own declarations).
ASSET_STORES = {
    **dict.fromkeys(
        ("stl_pairs", "stl_products", "scene_images", "retrieval_report", "recommendations"), "io_manager"
    ),
    **dict.fromkeys(
        ("stl_crop_embeddings", "ctl_scene_embeddings", "ctl_scene_context"), "embedding_io_manager"
    ),
    "stl_graph": "graph_io_manager",
    **dict.fromkeys(MODEL_ASSETS.values(), "model_io_manager"),
    "product_index": "index_io_manager",
}


def store_dir(data_dir: Path, io_manager_key: str) -> Path:
    return Path(data_dir) / STORES[io_manager_key][0]


def asset_path(data_dir: Path, asset: str) -> Path:
    """The file that holds ``asset``'s latest materialized value."""
    store = ASSET_STORES[asset]
    return store_dir(data_dir, store) / f"{asset}{STORES[store][1]}"
