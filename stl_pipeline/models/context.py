"""The Complete-the-Look query encoder of the graph models, after Kang et al. (CVPR 2019).

What completes a look is in the rest of the scene: the other garments, on every side of
the missing one. The scene's context tokens (backbone feature-map cells of the scene seen
without the product, ``features/assets.py``) are weighted by an attention whose query is
the category being completed, since what matters for shoes is not what matters for a
bag, and their weighted sum is added to the projection of the global vector.

A token's value is either a linear map of the token, or, with ``CatalogueRead``, what the
graph knows of the product the token shows. When the tokens are the scene's other
garments (``regions.CONTEXT_SOURCES``, ``items``), one garment's pixels say little of what
goes with it; the train scenes its product appears in say a lot. So each token is
recognized in the catalogue, and its value is the mean vector of the products that
product shares a train scene with, in the category being completed (``catalogue_category``)
or in any (``catalogue``).
"""

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch_geometric.data import HeteroData

from stl_pipeline.graph.schema import CO_OCCURS
from stl_pipeline.models.shapes import pad_rows, take


def worn_with(products: torch.Tensor, graph: HeteroData, categories: int = 0) -> torch.Tensor:
    """(P, d) the mean vector of the products each product shares a train scene with
    (``stl_graph``'s ``co_occurs`` edges); zeros for a product that shares none.

    With ``categories``, (P * categories, d): row ``p * categories + c`` is the mean of
    p's partners in category c, shrunk toward the mean of all its partners by one
    pseudo-partner, so that a product never seen with category c still says what it is
    worn with."""
    source, target = graph[CO_OCCURS].edge_index
    partners = torch.bincount(source, minlength=len(products)).clamp(min=1).to(products.dtype)
    worn = products.new_zeros(products.shape).index_add(0, source, take(products, target)) / partners[:, None]
    if not categories:
        return worn
    rows = source * categories + graph["product"].category[target]
    total = products.new_zeros(len(products) * categories, products.shape[1])
    total = total.index_add(0, rows, take(products, target))
    seen = torch.bincount(rows, minlength=len(total)).to(products.dtype)
    return (total + worn.repeat_interleave(categories, dim=0)) / (seen + 1)[:, None]


class CatalogueRead(nn.Module):
    """(N, d) tokens to (N, out_dim): what the products each token shows are worn with.

    Each token, through ``recognize`` (the STL query head, trained to find a crop's
    product), matches its ``k`` nearest product vectors; their ``worn_with`` vectors,
    softmax-weighted by the match, are its value. ``by_category``: the ``worn_with`` rows
    of the category each token's query completes (``category``), since a pair of trousers
    says which shoes go with it and the mean over all its partners mixes in tops and bags.
    On validation a learned map after the read did worse than none, and so did k = 8
    (benchmarks/ctl_context.py). Tokens are scored against the catalogue a block at a time,
    without a gradient, and only their k best are kept; the values are summed by
    ``embedding_bag`` without gathering an (N, k, d) tensor of them. Time grows with N * P
    (the search), memory and backward with N * k * d."""

    BLOCK = 4096  # tokens scored against the whole catalogue at once

    def __init__(
        self, recognize: nn.Module, k: int = 32, temperature: float = 20.0, by_category: bool = False
    ) -> None:
        super().__init__()
        self.recognize = recognize
        self.k = k
        self.temperature = nn.Parameter(torch.tensor(temperature))
        self.by_category = by_category

    def forward(
        self,
        tokens: torch.Tensor,
        products: torch.Tensor,
        worn: torch.Tensor,
        category: torch.Tensor | None = None,
    ) -> torch.Tensor:
        seen = self.recognize(tokens)
        k = min(self.k, len(products))
        if not len(seen):
            return worn.new_zeros(0, worn.shape[1])
        # Only the k best matches carry a gradient, so the search runs without one and their
        # scores are computed again for them alone: backward then never multiplies an (N, P)
        # gradient, which at the release's size was most of a step.
        with torch.no_grad():
            nearest = torch.cat(
                [(block @ products.T).topk(k, dim=1).indices for block in seen.detach().split(self.BLOCK)]
            )
        match = torch.einsum("nd,nkd->nk", seen, take(products, nearest))
        if category is not None:
            nearest = nearest * (len(worn) // len(products)) + category[:, None]
        weights = F.softmax(self.temperature * match, dim=1).to(worn.dtype)  # autocast may lower it
        return F.embedding_bag(nearest, worn, per_sample_weights=weights, mode="sum")


class ContextAttention(nn.Module):
    """(Q, T, d) tokens and (Q,) categories to (Q, out_dim): the category-weighted sum of
    the tokens' values. Zero rows are padding and get no weight; a query without tokens
    gets zeros. With ``lead``, each query's first ``lead`` tokens (the masked scene of
    ``masked+items`` context) are no product to recognize and not weighed against the
    garments: the mean of a linear map of them is added, and the attention is over the rest."""

    def __init__(
        self,
        dim: int,
        categories: int,
        out_dim: int,
        hidden: int = 128,
        read: CatalogueRead | None = None,
        lead: int = 0,
    ) -> None:
        super().__init__()
        self.keys = nn.Linear(dim, hidden)
        self.values = read if read is not None else nn.Linear(dim, out_dim)
        self.category = nn.Embedding(categories, hidden)
        self.scale = 1 / math.sqrt(hidden)
        self.lead = lead
        self.lead_values = nn.Linear(dim, out_dim) if lead else None

    def forward(
        self, tokens: torch.Tensor, category: torch.Tensor, products: torch.Tensor, graph: HeteroData
    ) -> torch.Tensor:
        """``products``: ``products(graph)``, which a ``CatalogueRead`` reads. Keys and values
        are computed for the tokens present only: on release-shaped data most queries have
        fewer than the widest one's, and the padding is most of the tensor."""
        scene = None
        if self.lead_values is not None:
            lead, tokens = tokens[:, : self.lead], tokens[:, self.lead :]
            shown = lead.ne(0).any(dim=-1).to(lead.dtype)
            scene = (self.lead_values(lead) * shown[..., None]).sum(1) / shown.sum(1, keepdim=True).clamp(
                min=1
            )
        present = tokens.ne(0).any(dim=-1)
        query = present.nonzero()[:, 0]
        weights = self.weights(tokens, category, present)[present]
        # Padded to a bucket of rows (models/shapes.py); the fillers' values are dropped.
        read = self._read(pad_rows(tokens[present]), pad_rows(category[query]), products, graph)[: len(query)]
        weighted = weights[:, None] * read  # under autocast, in the wider of their dtypes
        out = weighted.new_zeros(len(tokens), weighted.shape[1]).index_add(0, query, weighted)
        return out if scene is None else out + scene.to(out.dtype)

    def _read(
        self, shown: torch.Tensor, category: torch.Tensor, products: torch.Tensor, graph: HeteroData
    ) -> torch.Tensor:
        """(N, out_dim) the values of ``shown`` tokens, whose queries complete ``category``."""
        if not isinstance(self.values, CatalogueRead):
            return self.values(shown)
        if self.values.by_category:
            categories = self.category.num_embeddings
            return self.values(shown, products, worn_with(products, graph, categories), category)
        return self.values(shown, products, worn_with(products, graph))

    def weights(
        self, tokens: torch.Tensor, category: torch.Tensor, present: torch.Tensor | None = None
    ) -> torch.Tensor:
        """(Q, T) the attention of each query over its tokens (zero rows are padding;
        ``present``, the rows that are not, when the caller has it)."""
        if present is None:
            present = tokens.ne(0).any(dim=-1)
        query = present.nonzero()[:, 0]
        keys = self.keys(pad_rows(tokens[present]))  # padded as in forward
        scores = (keys * self.category(pad_rows(category[query]))).sum(dim=-1)[: len(query)]
        grid = scores.new_full(present.shape, -torch.inf)
        grid[present] = scores * self.scale
        return F.softmax(grid, dim=1).nan_to_num(0.0)
