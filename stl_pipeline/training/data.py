"""Training and evaluation inputs from the assets: query vectors and true product indices."""

import pandas as pd
import torch
from torch_geometric.data import HeteroData

from stl_pipeline.training.loop import Queries
from stl_pipeline.vectors import Embeddings


def split_queries(
    graph: HeteroData, pairs: pd.DataFrame, queries: dict[str, Embeddings], split: str
) -> tuple[dict[str, Queries], dict[str, pd.DataFrame]]:
    """Per task, the queries of ``split``'s pairs whose product is a graph node and whose query
    was embedded; and the pairs they come from, in the same order."""
    position = {p: i for i, p in enumerate(graph["product"].ids)}
    chosen = pairs[(pairs["split"].astype(str) == split) & pairs["product"].isin(position)]
    result, rows = {}, {}
    for task, embeddings in queries.items():
        keep = chosen[chosen["pair_id"].isin(embeddings.positions())].reset_index(drop=True)
        x = torch.from_numpy(embeddings.take(list(keep["pair_id"])))
        result[task] = Queries(x, torch.tensor(keep["product"].map(position).to_numpy(), dtype=torch.long))
        rows[task] = keep
    return result, rows
