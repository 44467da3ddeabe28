"""Ranks of the true product among candidates, the basis of every retrieval metric."""

import torch


def true_ranks(
    scores: torch.Tensor, truth: torch.Tensor, allowed: torch.Tensor | None = None
) -> torch.Tensor:
    """0-based rank of each query's true product among the allowed candidates.

    ``scores`` is (Q, P), ``truth`` (Q,), ``allowed`` an optional (Q, P) mask of
    the candidate pool (the true product is always allowed). Ties count against
    the true product, so a constant scorer earns no credit.
    """
    true = scores.gather(1, truth[:, None])
    better = scores >= true
    if allowed is not None:
        better &= allowed
    better[torch.arange(len(truth), device=truth.device), truth] = False
    return better.sum(dim=1)


def mrr(ranks: torch.Tensor) -> float:
    return float((1.0 / (ranks.float() + 1)).mean()) if len(ranks) else 0.0


def hit_rate(ranks: torch.Tensor, k: int) -> float:
    return float((ranks < k).float().mean()) if len(ranks) else 0.0


def ranks_in_category(
    queries: torch.Tensor,
    products: torch.Tensor,
    truth: torch.Tensor,
    category: torch.Tensor,
    biases: list[torch.Tensor],
    chunk: int = 1024,
) -> list[torch.Tensor]:
    """For each bias (P,), each query's ``true_ranks`` among the products of its true
    product's category, scored by ``queries @ products.T + bias``.

    Only each category's block is scored, a fraction of the (Q, P) matrix (which is
    1.1 GB a task at the release's size), in chunks of queries, and each block's
    scores are computed once for all biases.
    """
    ranks = [truth.new_zeros(len(truth)) for _ in biases]
    query_category = category[truth]
    position = torch.empty_like(category)
    for value in torch.unique(query_category):
        members = (category == value).nonzero().squeeze(1)
        position[members] = torch.arange(len(members), device=members.device)
        rows = (query_category == value).nonzero().squeeze(1)
        candidates = products[members]
        for part in rows.split(chunk):
            scores = queries[part] @ candidates.T
            local = position[truth[part]]
            for found, bias in zip(ranks, biases, strict=True):
                found[part] = true_ranks(scores + bias[members], local)
    return ranks
