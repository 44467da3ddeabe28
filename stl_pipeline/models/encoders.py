"""Heterogeneous GAT and GraphSAGE encoders over ``stl_graph``, built from PyG's layers.

Each node type is first projected to a common width, from its features plus
the log in-degree of each incoming edge type: attention and mean aggregation
normalize degree away, yet it carries popularity (a product's in-degree on
``contains`` edges is its count of train scenes). Every layer is a
``HeteroConv`` over the message-passing edge types, followed by a residual
connection and layer norm, which keeps deep stacks from collapsing all nodes
onto one vector (over-smoothing).
"""

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn
from torch_geometric.nn import GATConv, HeteroConv, SAGEConv

from stl_pipeline.models.dropout import dropout

EdgeType = tuple[str, str, str]
Kind = Literal["gat", "sage"]


class HeteroEncoder(nn.Module):
    def __init__(
        self,
        node_dims: dict[str, int],
        edge_types: list[EdgeType],
        kind: Kind = "gat",
        hidden: int = 128,
        layers: int = 2,
        heads: int = 4,
        dropout: float = 0.3,
        edge_dims: dict[EdgeType, int] | None = None,
    ) -> None:
        """``edge_dims``: the ``edge_attr`` width of the edge types whose features GAT's
        attention reads (GraphSAGE has no place for them)."""
        super().__init__()
        if kind == "gat" and hidden % heads:
            raise ValueError(f"hidden ({hidden}) must be a multiple of heads ({heads})")
        self.kind, self.dropout = kind, dropout
        if edge_dims and kind != "gat":
            raise ValueError(f"{kind} layers read no edge features: use gat, or no edge_dims")
        self.edge_dims = dict(edge_dims or {})
        self.incoming = {t: [e for e in edge_types if e[2] == t] for t in node_dims}
        self.inputs = nn.ModuleDict(
            {t: nn.Linear(d + len(self.incoming[t]), hidden) for t, d in node_dims.items()}
        )
        self.convs = nn.ModuleList()
        for _ in range(layers):
            per_edge: dict[EdgeType, nn.Module] = {}
            for edge_type in edge_types:
                if kind == "gat":
                    per_edge[edge_type] = GATConv(
                        (hidden, hidden),
                        hidden // heads,
                        heads=heads,
                        dropout=dropout,
                        add_self_loops=False,
                        edge_dim=self.edge_dims.get(edge_type),
                    )
                elif kind == "sage":
                    per_edge[edge_type] = SAGEConv((hidden, hidden), hidden)
                else:
                    raise ValueError(f"unknown encoder {kind!r}: use gat or sage")
            self.convs.append(HeteroConv(per_edge, aggr="sum"))
        self.norms = nn.ModuleList(
            nn.ModuleDict({t: nn.LayerNorm(hidden) for t in node_dims}) for _ in range(layers)
        )

    def forward(
        self,
        x_dict: dict[str, torch.Tensor],
        edge_index_dict: dict[EdgeType, torch.Tensor],
        edge_attr_dict: dict[EdgeType, torch.Tensor] | None = None,
    ) -> dict[str, torch.Tensor]:
        h = {t: self.inputs[t](self._with_degrees(t, x, edge_index_dict)) for t, x in x_dict.items()}
        # Counts run to the hundreds where similarities and boxes stay within 1: a signed log
        # keeps them on one scale and the order of each.
        attrs = {
            e: torch.sign(a) * torch.log1p(a.abs())
            for e, a in (edge_attr_dict or {}).items()
            if e in self.edge_dims
        }
        for conv, norms in zip(self.convs, self.norms, strict=True):
            out = conv(h, edge_index_dict, edge_attr_dict=attrs) if attrs else conv(h, edge_index_dict)
            h = {
                t: norms[t](h[t] + dropout(F.elu(out[t]), self.dropout, self.training)) if t in out else h[t]
                for t in h
            }
        return h

    def _with_degrees(
        self, node_type: str, x: torch.Tensor, edge_index_dict: dict[EdgeType, torch.Tensor]
    ) -> torch.Tensor:
        degrees = [
            torch.bincount(edge_index_dict[e][1], minlength=len(x)).to(x.dtype).log1p()
            if e in edge_index_dict
            else x.new_zeros(len(x))
            for e in self.incoming[node_type]
        ]
        return torch.cat([x, *(d[:, None] for d in degrees)], dim=1) if degrees else x
