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
