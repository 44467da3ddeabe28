"""The query side of one task and split, as every recommender and metric takes it."""

from collections.abc import Callable
from dataclasses import dataclass, fields, replace

import torch


@dataclass
class Queries:
    """Query vectors and the index of each one's true product; for Complete the Look also
    the category each query completes and its scene's context tokens (zero rows pad a query
    with fewer), which the graph models' CTL encoder attends over."""

    x: torch.Tensor  # (Q, backbone dim): the crop (STL) or the largest region around it (CTL)
    product: torch.Tensor  # (Q,)
    category: torch.Tensor | None = None  # (Q,) the category to complete
    context: torch.Tensor | None = None  # (Q, T, backbone dim)

    def __len__(self) -> int:
        return len(self.product)

    def _each(self, change: "Change") -> "Queries":
        """The same queries with ``change`` applied to every field that is set."""
        return replace(self, **{f.name: _maybe(change, getattr(self, f.name)) for f in fields(self)})

    def rows(self, index: torch.Tensor) -> "Queries":
        """The queries at ``index`` (a 1-D tensor of positions), every field alike."""
        return self._each(lambda tensor: tensor.index_select(0, index))

    def to(self, device: torch.device | str) -> "Queries":
        return self._each(lambda tensor: tensor.to(device))


Change = Callable[[torch.Tensor], torch.Tensor]


def _maybe(change: Change, tensor: torch.Tensor | None) -> torch.Tensor | None:
    return None if tensor is None else change(tensor)
