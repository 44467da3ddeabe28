"""Top-12 lists for active customers from the latest snapshot, and their lookup for the CLI.

``hm_recommendations`` ranks from the snapshot after the last purchase (every window's data,
test included: serving predicts the week after the data ends). A customer without a list,
new or inactive, gets last week's best sellers, kept beside the table.
"""

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import torch
from torch_geometric.data import HeteroData

from stl_pipeline.personalized.evaluate import K, PopularityScorer, rank
from stl_pipeline.personalized.graph import BUYS, snapshot
from stl_pipeline.personalized.ranker import scorer_for

POPULAR_FILE = "hm_popular.parquet"


def active_customers(graph: HeteroData, active_days: int) -> np.ndarray:
    """Customers with a purchase in the last ``active_days`` days of the data."""
    end = graph.info["end_day"]
    recent = graph[BUYS].time >= end - active_days
    return np.unique(graph[BUYS].edge_index[0, recent].numpy())


def recommend(
    graph: HeteroData,
    record: dict,
    customer_ids: pd.Index,
    article_ids: pd.Index,
    active_days: int,
    device: torch.device,
    k: int = K,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(the lists of active customers, the cold-start list): long tables of rank and score,
    from the model ``record`` (GraphSAGE or the ranker)."""
    end = graph.info["end_day"]
    customers = active_customers(graph, active_days)
    top, scores = rank(scorer_for(record, graph, end, device), customers, k)[:2]
    snap = snapshot(graph, end, adjacency=False)
    lists = pd.DataFrame(
        {
            "customer_id": np.repeat(customer_ids.to_numpy()[customers], k),
            "rank": np.tile(np.arange(1, k + 1, dtype=np.int16), len(customers)),
            "article_id": article_ids.to_numpy()[top.ravel()],
            "score": scores.ravel().astype(np.float32),
        }
    )
    popular = PopularityScorer(snap, snap.articles).row
    best = torch.topk(popular, min(k, len(popular))).indices.numpy()
    fallback = pd.DataFrame(
        {
            "rank": np.arange(1, len(best) + 1, dtype=np.int16),
            "article_id": article_ids.to_numpy()[best],
            "sales_last_week": popular[best].floor().numpy().astype(np.int64),
        }
    )
    return lists, fallback


@dataclass
class CustomerAnswer:
    customer_id: str
    personalized: bool  # False: the cold-start list (no recent purchase)
    articles: list[dict]


def lookup(table: Path, popular: Path, customer_id: str, k: int) -> CustomerAnswer:
    """The customer's stored list (a filtered read, not the whole table), or the best sellers."""
    for path, asset in ((table, "hm_recommendations"), (popular, "hm_recommendations")):
        if not path.is_file():
            raise FileNotFoundError(f"{path} does not exist; materialize {asset} first (make demo)")
    rows = pq.read_table(table, filters=[("customer_id", "==", customer_id)]).to_pandas()
    if len(rows):
        rows = rows.sort_values("rank").head(k)
        return CustomerAnswer(customer_id, True, rows[["rank", "article_id", "score"]].to_dict("records"))
    rows = pd.read_parquet(popular).sort_values("rank").head(k)
    return CustomerAnswer(customer_id, False, rows.to_dict("records"))
