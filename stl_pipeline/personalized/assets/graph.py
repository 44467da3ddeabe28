"""hm_graph: customers, articles and every purchase as dated edges; and the temporal-split check."""

import time

import dagster as dg
import pandas as pd
from pydantic import Field

from stl_pipeline.artifacts import HeteroData
from stl_pipeline.personalized.config import GROUP


class HmGraphConfig(dg.Config):
    window_days: int = Field(default=7, description="Must match hm_tables' window_days.")


@dg.asset(group_name=GROUP, io_manager_key="graph_io_manager")
def hm_graph(
    config: HmGraphConfig,
    hm_transactions: pd.DataFrame,
    hm_articles: pd.DataFrame,
    hm_customers: pd.DataFrame,
) -> dg.Output[HeteroData]:
    """Customers and articles with their attribute features; every purchase as a ``buys`` edge
    (day, price) and its reverse, sorted by day so a window's snapshot is a prefix."""
    from stl_pipeline.personalized.graph import ARTICLE, BUYS, CUSTOMER, build_hm_graph
    from stl_pipeline.personalized.split import check_windows

    began = time.perf_counter()
    windows = check_windows(hm_transactions, config.window_days)
    graph = build_hm_graph(hm_transactions, hm_articles, hm_customers, windows)
    return dg.Output(
        graph,
        metadata={
            "nodes_customer": graph[CUSTOMER].num_nodes,
            "nodes_article": graph[ARTICLE].num_nodes,
            "edges_buys": int(graph[BUYS].edge_index.shape[1]),
            "customer_features": len(graph.info["customer_features"]),
            "article_features": len(graph.info["article_features"]),
            "val_start_day": graph.info["val_start_day"],
            "test_start_day": graph.info["test_start_day"],
            "seconds": round(time.perf_counter() - began, 2),
        },
    )


@dg.asset_check(
    asset="hm_graph",
    blocking=True,
    additional_ins={"hm_transactions": dg.AssetIn()},
    description="No purchase of a window or a later one reaches the snapshot, the features or the negatives "
    "of that window (test, validation and twelve training weeks, recounted from hm_transactions).",
)
def hm_graph_temporal_split(hm_graph: HeteroData, hm_transactions: pd.DataFrame) -> dg.AssetCheckResult:
    from stl_pipeline.personalized.windows import temporal_violations

    problems = temporal_violations(hm_graph, hm_transactions)
    return dg.AssetCheckResult(
        passed=not problems,
        metadata={"violations": len(problems)},
        description="; ".join(problems[:5]) or None,
    )
