"""Ranking losses over query and product vectors (both L2-normalized; scores are cosines).

Negatives are given as an index matrix into the product table, so in-batch and
same-category hard negatives are one code path.
"""

import torch
import torch.nn.functional as F


def candidate_scores(
    queries: torch.Tensor, products: torch.Tensor, positives: torch.Tensor, negatives: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Scores of each query's positive (B,), of its negatives (B, N), and the mask of negatives
    that are really other products (B, N).

    Queries are scored with one matrix product, against the whole table when it is
    not much larger than the negatives (sorting out the distinct candidates costs
    more than the product then), else against the distinct candidates only.
    Gathering a (B, N, d) block of product vectors instead costs B times the memory.
    """
    rows = torch.arange(len(queries), device=queries.device)
    if len(products) <= 4 * negatives.shape[1]:
        scores = queries @ products.T
        positive, negative = scores[rows, positives], scores.gather(1, negatives)
    else:
        candidates, where = torch.unique(torch.cat([positives, negatives.flatten()]), return_inverse=True)
        scores = queries @ products[candidates].T
        positive = scores[rows, where[: len(positives)]]
        negative = scores.gather(1, where[len(positives) :].view_as(negatives))
    return positive, negative, negatives != positives[:, None]


def info_nce(
    queries: torch.Tensor,
    products: torch.Tensor,
    positives: torch.Tensor,
    negatives: torch.Tensor,
    temperature: float = 0.07,
    log_q: torch.Tensor | None = None,
) -> torch.Tensor:
    """Cross-entropy of the positive against ``negatives`` (B, N) product indices.

    A negative that equals the query's positive is masked, so in-batch
    negatives may include other queries of the same product. ``log_q`` (P,), the
    log of how often the sampling offers each product as a candidate, is taken
    off every candidate's logit (Yi et al., RecSys 2019): without it, products
    that are offered often, the popular ones as in-batch negatives, are learned
    to rank low for every query but their own.
    """
    positive, negative, valid = candidate_scores(queries, products, positives, negatives)
    logits = torch.cat([positive[:, None], negative.masked_fill(~valid, float("-inf"))], dim=1) / temperature
    if log_q is not None:
        logits = logits - log_q[torch.cat([positives[:, None], negatives], dim=1)]
    return F.cross_entropy(logits, torch.zeros(len(queries), dtype=torch.long, device=queries.device))


def triplet(
    queries: torch.Tensor,
    products: torch.Tensor,
    positives: torch.Tensor,
    negatives: torch.Tensor,
    margin: float = 0.2,
) -> torch.Tensor:
    """Hinge on the hardest valid negative of each query (cosine distance)."""
    positive, negative, valid = candidate_scores(queries, products, positives, negatives)
    hardest = negative.masked_fill(~valid, float("-inf")).max(dim=1).values
    return F.relu(hardest - positive + margin).mean()


def bpr(
    queries: torch.Tensor, products: torch.Tensor, positives: torch.Tensor, negatives: torch.Tensor
) -> torch.Tensor:
    """Bayesian personalized ranking: -log sigmoid(positive - negative), averaged over negatives."""
    positive, negative, valid = candidate_scores(queries, products, positives, negatives)
    loss = -F.logsigmoid((positive[:, None] - negative) * 10.0)  # cosines are small: scale them
    return (loss * valid).sum() / valid.sum().clamp(min=1)


LOSSES = {"infonce": info_nce, "triplet": triplet, "bpr": bpr}


def sampling_log_q(
    positives: torch.Tensor, product_category: torch.Tensor, batch: int, in_batch: bool, same_category: int
) -> torch.Tensor:
    """(P,) log of the expected number of times each product is among a query's candidates
    under ``sample_negatives``: in a batch of ``batch`` queries drawn from ``positives`` (the
    task's training queries), and ``same_category`` uniform draws from its category."""
    count = torch.zeros(len(product_category), dtype=torch.float64)
    if in_batch:
        share = torch.bincount(positives.cpu(), minlength=len(count)).double() / max(1, len(positives))
        count += 1 - (1 - share) ** batch
    if same_category:
        sizes = torch.bincount(product_category.cpu()).double()
        count += same_category / sizes[product_category.cpu()]
    return count.clamp(min=1e-12).log().float()


def sample_negatives(
    positives: torch.Tensor,
    product_category: torch.Tensor,
    in_batch: bool = True,
    same_category: int = 8,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """(B, N) negative product indices: the batch's distinct positives, and ``same_category``
    random products of each positive's own category (the hard ones)."""
    parts = []
    if in_batch:
        # Each distinct product once: a full batch repeats popular products many times,
        # and (B, B) negatives would cost quadratic memory for no new candidates.
        distinct = torch.unique(positives)
        parts.append(distinct[None, :].expand(len(positives), -1))
    if same_category:
        categories = product_category[positives]
        order = torch.argsort(product_category, stable=True)
        counts = torch.bincount(product_category, minlength=int(product_category.max()) + 1)
        starts = torch.cumsum(counts, 0) - counts
        draw = torch.rand(len(positives), same_category, generator=generator, device=positives.device)
        offsets = (draw * counts[categories][:, None]).long()
        parts.append(order[starts[categories][:, None] + offsets])
    if not parts:
        raise ValueError("no negatives: enable in-batch or same-category negatives")
    return torch.cat(parts, dim=1)
