"""A GNN encoder with projections that put scene queries and products in one space.

Products are encoded by the GNN over the training graph; an STL query (the
bbox crop) and a CTL query (the region around it) are projected from their
frozen backbone embeddings by a head per task. Scores are cosines.
"""

import torch
from torch import nn
from torch_geometric.data import HeteroData

from stl_pipeline.models.encoders import EdgeType, HeteroEncoder, Kind
from stl_pipeline.models.heads import Projection

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
            {task: Projection(query_dim, out_dim, dropout=dropout) for task in TASKS}
        )

    def products(self, data: HeteroData) -> torch.Tensor:
        """(P, out_dim) product vectors after message passing over ``data``'s edges."""
        h = self.encoder(data.x_dict, data.edge_index_dict)
        return self.product_out(h["product"])

    def queries(self, x: torch.Tensor, task: str) -> torch.Tensor:
        return self.query_heads[task](x)
