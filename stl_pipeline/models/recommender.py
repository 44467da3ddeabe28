"""Recommenders that put scene queries and products in one space; scores are cosines.

``GraphRecommender`` encodes products with a GNN over the training graph and
projects an STL query (the bbox crop) and a CTL query (the region around it)
from their frozen backbone embeddings with a head per task.
``TripletRecommender`` is the seed projects' baseline: one triplet head over
frozen features for queries and products alike, with no message passing.
Both expose ``products(graph)`` and ``queries(x, task)``, so training and
evaluation treat them the same.
"""

import torch
from torch import nn
from torch_geometric.data import HeteroData

from stl_pipeline.models.encoders import EdgeType, HeteroEncoder, Kind
from stl_pipeline.models.heads import Projection, TripletHead

TASKS = ("stl", "ctl")


class GraphRecommender(nn.Module):
    def __init__(
        self,
        node_dims: dict[str, int],
        edge_types: list[EdgeType],
        query_dim: int,
        kind: Kind = "gat",
        hidden: int = 128,
        layers: int = 2,
        heads: int = 4,
        dropout: float = 0.3,
        out_dim: int = 128,
    ) -> None:
        super().__init__()
        self.encoder = HeteroEncoder(node_dims, edge_types, kind, hidden, layers, heads, dropout)
        self.product_out = Projection(hidden, out_dim)
        self.query_heads = nn.ModuleDict(
            {task: Projection(query_dim, out_dim, hidden=hidden, dropout=dropout) for task in TASKS}
        )

    def products(self, data: HeteroData) -> torch.Tensor:
        """(P, out_dim) product vectors after message passing over ``data``'s edges."""
        h = self.encoder(data.x_dict, data.edge_index_dict)
        return self.product_out(h["product"])

    def queries(self, x: torch.Tensor, task: str) -> torch.Tensor:
        return self.query_heads[task](x)


class TripletRecommender(nn.Module):
    """A shared ``TripletHead`` over the backbone vectors of products and queries.

    The first ``visual_dim`` columns of the graph's product features are the
    product's backbone embedding (graph/build.py); the rest is ignored here.
    """

    def __init__(self, visual_dim: int, out_dim: int = 128, hidden: int = 512, dropout: float = 0.3) -> None:
        super().__init__()
        self.visual_dim = visual_dim
        self.head = TripletHead(visual_dim, out_dim, hidden, dropout)

    def products(self, data: HeteroData) -> torch.Tensor:
        return self.head(data["product"].x[:, : self.visual_dim])

    def queries(self, x: torch.Tensor, task: str) -> torch.Tensor:
        if task not in TASKS:
            raise KeyError(f"unknown task {task!r}: use {TASKS}")
        return self.head(x)


Recommender = GraphRecommender | TripletRecommender
