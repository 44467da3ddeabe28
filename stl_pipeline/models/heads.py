"""Projections into the shared scoring space, and the seed projects' triplet head."""

import torch
import torch.nn.functional as F
from torch import nn

from stl_pipeline.models.dropout import Dropout


class Projection(nn.Module):
    """Linear-norm-ReLU-Dropout-Linear, L2-normalized so that scores are cosines."""

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        hidden: int | None = None,
        dropout: float = 0.0,
        norm: type[nn.Module] = nn.LayerNorm,
    ) -> None:
        super().__init__()
        hidden = hidden or max(in_dim, out_dim)
        self.net = nn.Sequential(
            nn.Linear(in_dim, hidden),
            norm(hidden),
            nn.ReLU(),
            Dropout(dropout),
            nn.Linear(hidden, out_dim),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.net(x), dim=-1)


class TripletHead(Projection):
    """The seed projects' head: Linear-BatchNorm-ReLU-Dropout-Linear, then L2 normalization,
    frozen features to 128-d."""

    def __init__(self, in_dim: int, out_dim: int = 128, hidden: int = 512, dropout: float = 0.3) -> None:
        super().__init__(in_dim, out_dim, hidden, dropout, norm=nn.BatchNorm1d)
