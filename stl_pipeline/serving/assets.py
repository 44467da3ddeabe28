"""Asset ``product_index`` (group ``serving``) and its checks."""

import time

import dagster as dg
import numpy as np
import torch
from pydantic import Field
from torch_geometric.data import HeteroData

from stl_pipeline.serving.index import ProductIndex, build_index
from stl_pipeline.training.models import load_model

SOURCES = ("gat", "sage", "triplet_head")


class ProductIndexConfig(dg.Config):
    model: str = Field(default="gat", description="Whose product vectors: gat, sage or triplet_head.")
    exact_limit: int = Field(default=50_000, description="Products up to which the search is exact.")
    nprobe: int = Field(default=8, description="Cells an IVF search probes (past exact_limit).")


@dg.asset(group_name="serving", io_manager_key="index_io_manager")
def product_index(
    config: ProductIndexConfig, stl_graph: HeteroData, gat_model: dict, sage_model: dict, triplet_head: dict
) -> dg.Output[ProductIndex]:
    """A FAISS index of the chosen model's product vectors, with the id map and provenance."""
    records = dict(zip(SOURCES, (gat_model, sage_model, triplet_head), strict=True))
    if config.model not in records:
        raise ValueError(f"unknown model {config.model!r} for product_index: use one of {SOURCES}")
    record = records[config.model]
    start = time.perf_counter()
    with torch.no_grad():
        vectors = load_model(record).products(stl_graph).numpy()
    index = build_index(vectors, stl_graph["product"].ids, config.exact_limit, config.nprobe)
    index.info |= {"model": config.model, "mlflow_run_id": record["mlflow_run_id"]}
    return dg.Output(
        index,
        metadata={
            **index.info,
            "products": len(index.ids),
            "seconds": round(time.perf_counter() - start, 3),
        },
    )


@dg.asset_check(
    asset=product_index, blocking=True, description="Every product is indexed and finds itself first."
)
def product_index_finds_every_product(product_index: ProductIndex) -> dg.AssetCheckResult:
    total = product_index.index.ntotal
    vectors = product_index.index.reconstruct_n(0, total)
    scores, found = product_index.search(vectors, 1)
    # A product finds itself first, or an exact duplicate of its vector (score 1 either way).
    missed = int(((found[:, 0] != np.arange(total)) & (scores[:, 0] < 1 - 1e-4)).sum())
    return dg.AssetCheckResult(
        passed=total == len(product_index.ids) and missed == 0,
        metadata={"indexed": total, "ids": len(product_index.ids), "not_found_first": missed},
    )
