"""Asset ``stl_graph`` (group ``graph``) and the checks that guard it."""

import time

import dagster as dg
import pandas as pd

from stl_pipeline.artifacts import HeteroData
from stl_pipeline.graph.config import GraphConfig
from stl_pipeline.graph.schema import CONTAINS
from stl_pipeline.guards import not_shrunk
from stl_pipeline.lineage import PAIRS_DIGEST, pairs_digest
from stl_pipeline.reporting import markdown
from stl_pipeline.run_config import config_class, to_dataclass
from stl_pipeline.vectors import Embeddings

GraphBuildConfig = config_class(
    "GraphBuildConfig", GraphConfig, dg.Config, __name__, "How stl_graph is built (graph/config.py)."
)


@dg.asset(group_name="graph", io_manager_key="graph_io_manager")
def stl_graph(
    context: dg.AssetExecutionContext,
    config: GraphBuildConfig,  # type: ignore[valid-type]
    stl_pairs: pd.DataFrame,
    stl_products: pd.DataFrame,
    product_embeddings: Embeddings,
    scene_embeddings: Embeddings,
) -> dg.Output[HeteroData]:
    """Products, scenes and categories with train-only label edges and visual kNN edges (PyG HeteroData)."""
    from stl_pipeline.graph.build import build_graph, summary

    start = time.perf_counter()
    graph_config = to_dataclass(GraphConfig, config.model_dump())
    data, report = build_graph(stl_products, stl_pairs, product_embeddings, scene_embeddings, graph_config)
    data.info = {
        "config": config.model_dump(),
        "backbone": product_embeddings.info,
        "pairs_used": report.pairs_used,
        PAIRS_DIGEST: pairs_digest(stl_pairs),
    }
    nodes, edges = summary(data)
    context.log.info(f"stl_graph nodes: {dict(zip(nodes.node_type, nodes['count'], strict=True))}")
    context.log.info(f"stl_graph edges: {dict(zip(edges.edge_type, edges.edges, strict=True))}")
    metadata: dict = {f"nodes_{row.node_type}": int(row.count) for row in nodes.itertuples()}
    metadata |= {f"edges_{row.edge_type}": int(row.edges) for row in edges.itertuples()}
    metadata |= {
        "held_out_val_pairs": int(data[CONTAINS].val_edge_index.shape[1]),
        "held_out_test_pairs": int(data[CONTAINS].test_edge_index.shape[1]),
        "pairs_without_image": report.pairs_without_image,
        "products_without_image": report.products_without_image,
        "knn": ", ".join(f"{k}: {v}" for k, v in report.knn_methods.items()) or "none",
        "edges": dg.MetadataValue.md(markdown(edges.round(6), max_rows=20)),
        "nodes": dg.MetadataValue.md(markdown(nodes)),
        "seconds": round(time.perf_counter() - start, 2),
    }
    return dg.Output(data, metadata=metadata)


@dg.asset_check(asset=stl_graph, blocking=True, description="Every edge index lies within its node counts.")
def stl_graph_edge_indices_valid(stl_graph: HeteroData) -> dg.AssetCheckResult:
    from stl_pipeline.graph.checks import out_of_range

    problems = out_of_range(stl_graph)
    return dg.AssetCheckResult(
        passed=not problems,
        metadata={"out_of_range": sum(problems.values()), **{k: v for k, v in problems.items()}},
    )


@dg.asset_check(
    asset=stl_graph,
    blocking=True,
    description="No validation or test pair among message-passing edges (contains, reverse, co-occurrence).",
)
def stl_graph_no_leakage(stl_graph: HeteroData) -> dg.AssetCheckResult:
    from stl_pipeline.graph.checks import leakage

    leaks = leakage(stl_graph)
    return dg.AssetCheckResult(
        passed=not leaks,
        metadata={"leaked_edges": sum(leaks.values()), **leaks},
        description=f"held-out labels leak into the graph: {leaks}" if leaks else None,
    )


@dg.asset_check(asset=stl_graph, blocking=True, description="Every scene has at least one edge.")
def stl_graph_scenes_connected(stl_graph: HeteroData) -> dg.AssetCheckResult:
    from stl_pipeline.graph.checks import isolated

    count = isolated(stl_graph, "scene")
    return dg.AssetCheckResult(passed=count == 0, metadata={"scenes_without_edges": count})


stl_graph_not_shrunk = not_shrunk("stl_graph", ("nodes_product", "nodes_scene"))
