"""Looks: the catalogue's products clustered by their frozen image vectors within each
category, the auxiliary target of the Complete-the-Look query (``TrainConfig.look_weight``).

A CTL query's positive is one product, but what the image around the box tells is the
look of what completes it, not which of the look's products the scene happened to show:
most of the loss's signal is noise about the product. Ranking the positive's look above
the category's other looks is the same question without the noise.
"""

import torch
import torch.nn.functional as F


def look_clusters(
    vectors: torch.Tensor, category: torch.Tensor, per_category: int, seed: int = 0
) -> torch.Tensor:
    """(P,) each product's look: k-means (on unit vectors) within its category, at most
    ``per_category`` clusters a category; ids are global, a category's in one range."""
    from sklearn.cluster import KMeans

    looks = torch.empty(len(category), dtype=torch.long)
    unit = F.normalize(vectors.float(), dim=1).cpu().numpy()
    start = 0
    for value in torch.unique(category).tolist():
        members = (category.cpu() == value).nonzero().squeeze(1)
        k = min(per_category, len(members))
        found = KMeans(k, n_init=3, random_state=seed).fit_predict(unit[members.numpy()])
        looks[members] = torch.from_numpy(found).long() + start
        start += k
    return looks.to(category.device)


def look_loss(
    queries: torch.Tensor,
    products: torch.Tensor,
    positives: torch.Tensor,
    looks: torch.Tensor,
    category: torch.Tensor,
    temperature: float,
) -> torch.Tensor:
    """Cross-entropy of each query's positive's look among its category's looks, each look
    scored by the cosine with the mean of its products' vectors."""
    count = int(looks.max()) + 1
    sizes = torch.bincount(looks, minlength=count).clamp(min=1).to(products.dtype)
    centroids = F.normalize(
        products.new_zeros(count, products.shape[1]).index_add(0, looks, products) / sizes[:, None], dim=1
    )
    look_category = torch.zeros(count, dtype=category.dtype, device=category.device).index_copy(
        0, looks, category
    )
    allowed = look_category[None, :] == category[positives][:, None]
    scores = (queries @ centroids.T / temperature).masked_fill(~allowed, -torch.inf)
    return F.cross_entropy(scores, looks[positives])
