"""The Complete-the-Look query encoder of the graph models, after Kang et al. (CVPR 2019).

What completes a look is in the rest of the scene: the other garments, on every side of
the missing one. The scene's context tokens (backbone feature-map cells of the scene seen
without the product, ``features/assets.py``) are weighted by an attention whose query is
the category being completed, since what matters for shoes is not what matters for a
bag, and their weighted sum is added to the projection of the global vector.
"""

import math

import torch
import torch.nn.functional as F
from torch import nn


class ContextAttention(nn.Module):
    """(Q, T, d) tokens and (Q,) categories to (Q, out_dim): the category-weighted sum of
    the tokens' values. Zero rows are padding and get no weight; a query without tokens
    gets zeros."""

    def __init__(self, dim: int, categories: int, out_dim: int, hidden: int = 128) -> None:
        super().__init__()
        self.keys = nn.Linear(dim, hidden)
        self.values = nn.Linear(dim, out_dim)
        self.category = nn.Embedding(categories, hidden)
        self.scale = 1 / math.sqrt(hidden)

    def forward(self, tokens: torch.Tensor, category: torch.Tensor) -> torch.Tensor:
        return torch.einsum("qt,qto->qo", self.weights(tokens, category), self.values(tokens))

    def weights(self, tokens: torch.Tensor, category: torch.Tensor) -> torch.Tensor:
        """(Q, T) the attention of each query over its tokens."""
        present = tokens.abs().sum(dim=-1) > 0
        scores = torch.einsum("qth,qh->qt", self.keys(tokens), self.category(category)) * self.scale
        return F.softmax(scores.masked_fill(~present, -torch.inf), dim=1).nan_to_num(0.0)
