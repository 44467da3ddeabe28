"""Recommenders that put scene queries and products in one space.

A score is the cosine of a query and a product, plus, when the model has one,
a per-task weight on the product's log train popularity (``popularity_bias``):
the cosine says what fits the scene, the prior how often a product is chosen at
all. At the release's size Complete the Look needs both: popularity alone beats
a cosine trained against popularity-drawn negatives.

``GraphRecommender`` encodes products with a GNN over the training graph and
projects an STL query (the bbox crop) and a CTL query (the region around it)
from their frozen backbone embeddings with a head per task; its CTL query adds
a category-conditioned attention over the scene's context tokens
(``models/context.py``) when it is built with them.
``TripletRecommender`` is the seed projects' baseline: one triplet head over
frozen features for queries and products alike, with no message passing.
All expose ``products(graph)``, ``encode(queries, task, products, graph)`` and
``popularity_bias(graph, task)``, so training and evaluation treat them the same.
"""

import torch
import torch.nn.functional as F
from torch import nn
from torch_geometric.data import HeteroData

from stl_pipeline.graph.schema import CO_OCCURS, CONTAINS
from stl_pipeline.models.context import CatalogueRead, ContextAttention
from stl_pipeline.models.encoders import EdgeType, HeteroEncoder, Kind
from stl_pipeline.models.heads import Projection, TripletHead
from stl_pipeline.models.queries import Queries

TASKS = ("stl", "ctl")
CONTEXT_VALUES = ("linear", "catalogue", "catalogue_category")


def log_popularity(data: HeteroData) -> torch.Tensor:
    """(P,) log(1 + train scenes of each product): its in-degree on ``contains`` (train edges
    only); zeros for a graph without them."""
    products = data["product"].num_nodes
    if CONTAINS not in data.edge_types:
        return torch.zeros(products, device=data["product"].x.device)
    index = data[CONTAINS].edge_index[1]
    return torch.bincount(index, minlength=products).float().log1p()


class PopularityPrior(nn.Module):
    """Per task, a weight on log popularity added to every candidate's cosine.

    The weights are a buffer, not parameters: they are fitted on validation queries after
    training (``training.loop.fit_popularity_prior``), since a loss over sampled negatives
    cannot learn them: in-batch negatives are drawn by popularity, so it teaches the model
    to rank popular products down.
    """

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("weight", torch.zeros(len(TASKS)))

    def forward(self, log_popularity: torch.Tensor, task: str) -> torch.Tensor:
        return self.weight[TASKS.index(task)] * log_popularity


class _Scored(nn.Module):
    """The popularity term shared by both recommenders; zeros when the model has no prior."""

    prior: PopularityPrior | None

    def queries(self, x: torch.Tensor, task: str) -> torch.Tensor:
        raise NotImplementedError

    def encode(self, queries: Queries, task: str, products: torch.Tensor, graph: HeteroData) -> torch.Tensor:
        """(Q, out_dim) unit query vectors of ``task``; ``products`` (``products(graph)``) and
        ``graph`` are what a CTL query that reads the catalogue (``CatalogueRead``) reads."""
        return self.queries(queries.x, task)

    def popularity_bias(self, data: HeteroData, task: str) -> torch.Tensor:
        """(P,) what the model adds to each product's cosine for a query of ``task``."""
        return self.bias_of(log_popularity(data), task)

    def bias_of(self, log_pop: torch.Tensor, task: str) -> torch.Tensor:
        """The same from each product's log(1 + train popularity), where no graph is at hand."""
        if task not in TASKS:
            raise KeyError(f"unknown task {task!r}: use {TASKS}")
        return self.prior(log_pop, task) if self.prior is not None else torch.zeros_like(log_pop)


class GraphRecommender(_Scored):
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
        popularity_prior: bool = False,
        categories: int = 0,
        edge_dims: dict[EdgeType, int] | None = None,
        visual_skip: bool = False,
        context_values: str = "linear",
        context_lead: int = 0,
    ) -> None:
        """``categories`` > 0 gives the CTL query the context attention over that many
        product categories; its tokens have ``query_dim`` columns, like the global vector.
        ``context_values`` is what a token adds: a ``linear`` map of it, or, read from the
        ``catalogue``, what the product it shows is worn with (``CatalogueRead``; it needs
        ``co_occurs`` edges); ``context_lead`` tokens first in each query (the masked scene of
        ``masked+items`` context) have a linear map of their own."""
        super().__init__()
        self.prior = PopularityPrior() if popularity_prior else None
        self.encoder = HeteroEncoder(node_dims, edge_types, kind, hidden, layers, heads, dropout, edge_dims)
        self.product_out = Projection(hidden, out_dim)
        self.query_heads = nn.ModuleDict(
            {task: Projection(query_dim, out_dim, hidden=hidden, dropout=dropout) for task in TASKS}
        )
        if context_values not in CONTEXT_VALUES:
            raise ValueError(f"context_values {context_values!r}: use one of {', '.join(CONTEXT_VALUES)}")
        read = None
        if context_values.startswith("catalogue"):
            if categories and CO_OCCURS not in edge_types:
                raise ValueError("context_values catalogue reads co_occurs edges: build stl_graph with them")
            read = CatalogueRead(self.query_heads["stl"], by_category=context_values == "catalogue_category")
        self.context = (
            ContextAttention(query_dim, categories, out_dim, hidden, read, context_lead)
            if categories
            else None
        )
        # The frozen visual vector through its own tower, added to the graph's product vector.
        self.visual = Projection(query_dim, out_dim, hidden=512, dropout=dropout) if visual_skip else None

    def products(self, data: HeteroData) -> torch.Tensor:
        """(P, out_dim) product vectors after message passing over ``data``'s edges."""
        attrs = {e: data[e].edge_attr for e in self.encoder.edge_dims if "edge_attr" in data[e]}
        h = self.encoder(data.x_dict, data.edge_index_dict, attrs)
        if self.visual is None:
            return self.product_out(h["product"])
        visual = data["product"].x[:, : self.visual.net[0].in_features]
        return F.normalize(self.product_out.net(h["product"]) + self.visual.net(visual), dim=-1)

    def queries(self, x: torch.Tensor, task: str) -> torch.Tensor:
        return self.query_heads[task](x)

    def encode(self, queries: Queries, task: str, products: torch.Tensor, graph: HeteroData) -> torch.Tensor:
        if task != "ctl" or self.context is None:
            return self.queries(queries.x, task)
        if queries.context is None or queries.category is None:
            raise ValueError(
                "this model's CTL queries attend over context tokens: pass ctl_scene_context "
                "and the category each query completes"
            )
        head = self.query_heads[task].net(queries.x)
        return F.normalize(head + self.context(queries.context, queries.category, products, graph), dim=-1)


class _OnFrozenVectors(_Scored):
    """A recommender over the backbone vectors alone, no message passing: the first
    ``visual_dim`` columns of the graph's product features are the product's backbone
    embedding (graph/build.py), and the rest is ignored."""

    def __init__(
        self,
        visual_dim: int,
        out_dim: int = 128,
        hidden: int = 512,
        dropout: float = 0.3,
        popularity_prior: bool = False,
    ) -> None:
        super().__init__()
        self.prior = PopularityPrior() if popularity_prior else None
        self.visual_dim = visual_dim
        self.build(out_dim, hidden, dropout)

    def build(self, out_dim: int, hidden: int, dropout: float) -> None:
        raise NotImplementedError

    def frozen(self, data: HeteroData) -> torch.Tensor:
        return data["product"].x[:, : self.visual_dim]


class TripletRecommender(_OnFrozenVectors):
    """The seed projects' ``TripletHead``, shared by products and queries."""

    def build(self, out_dim: int, hidden: int, dropout: float) -> None:
        self.head = TripletHead(self.visual_dim, out_dim, hidden, dropout)

    def products(self, data: HeteroData) -> torch.Tensor:
        return self.head(self.frozen(data))

    def queries(self, x: torch.Tensor, task: str) -> torch.Tensor:
        if task not in TASKS:
            raise KeyError(f"unknown task {task!r}: use {TASKS}")
        return self.head(x)


class TwoTowerRecommender(_OnFrozenVectors):
    """A product tower and a query tower per task: the baseline a graph model must beat to
    have earned its graph."""

    def build(self, out_dim: int, hidden: int, dropout: float) -> None:
        self.product_tower = Projection(self.visual_dim, out_dim, hidden, dropout)
        self.query_towers = nn.ModuleDict(
            {task: Projection(self.visual_dim, out_dim, hidden, dropout) for task in TASKS}
        )

    def products(self, data: HeteroData) -> torch.Tensor:
        return self.product_tower(self.frozen(data))

    def queries(self, x: torch.Tensor, task: str) -> torch.Tensor:
        return self.query_towers[task](x)


Recommender = GraphRecommender | TripletRecommender | TwoTowerRecommender
