"""Training and evaluation inputs from the assets: query vectors and true product indices."""

import pandas as pd
import torch
from torch_geometric.data import HeteroData

from stl_pipeline.lineage import require_made_from, require_same_pairs
from stl_pipeline.training.loop import Queries
from stl_pipeline.vectors import Embeddings

QUERY_ASSETS = {"stl": "stl_crop_embeddings", "ctl": "ctl_scene_embeddings"}


def split_queries(
    graph: HeteroData, pairs: pd.DataFrame, queries: dict[str, Embeddings], split: str
) -> tuple[dict[str, Queries], dict[str, pd.DataFrame]]:
    """Per task, the queries of ``split``'s pairs whose product is a graph node and whose query
    was embedded; and the pairs they come from, in the same order. Refuses a graph or query
    embeddings made from other pairs (MismatchedInputError)."""
    require_same_pairs("stl_graph", getattr(graph, "info", {}), pairs, "Rematerialize stl_graph.")
    for task, embeddings in queries.items():
        name = QUERY_ASSETS[task]
        require_made_from(name, embeddings.keys, "stl_pairs", pairs["pair_id"], f"Rematerialize {name}.")
    position = {p: i for i, p in enumerate(graph["product"].ids)}
    chosen = pairs[(pairs["split"].astype(str) == split) & pairs["product"].isin(position)]
    result, rows = {}, {}
    for task, embeddings in queries.items():
        keep = chosen[chosen["pair_id"].isin(embeddings.positions())].reset_index(drop=True)
        x = torch.from_numpy(embeddings.take(list(keep["pair_id"])))
        result[task] = Queries(x, torch.tensor(keep["product"].map(position).to_numpy(), dtype=torch.long))
        rows[task] = keep
    return result, rows
