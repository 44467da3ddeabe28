"""The query side of one task and split, as every recommender and metric takes it."""

from dataclasses import dataclass, replace

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

    def rows(self, index: torch.Tensor) -> "Queries":
        """The queries at ``index``, every field alike."""
        return replace(
            self,
            x=self.x[index],
            product=self.product[index],
            category=None if self.category is None else self.category[index],
            context=None if self.context is None else self.context[index],
        )

    def to(self, device: torch.device | str) -> "Queries":
        return replace(
            self,
            x=self.x.to(device),
            product=self.product.to(device),
            category=None if self.category is None else self.category.to(device),
            context=None if self.context is None else self.context.to(device),
        )
