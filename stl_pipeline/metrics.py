"""Every ranking metric, in one place and one spelling (``HR@10``, ``MRR``, ``MAP@12``,
``Recall@12``, ``NDCG@12``): training's validation, both reports, the serving checks, the
champion's comparison and the tests read them here.

Shop the Look has one true product per query: metrics come from its rank among the
candidates. Purchases have several per customer: metrics come from top-k lists through PyG's
link-prediction metrics, per customer, so that intervals and paired comparisons can be drawn
over customers.
"""

import numpy as np
import torch

RESAMPLES, LEVEL = 1000, 0.95  # bootstrap intervals: resamples of the queries, coverage


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


def mlflow_name(name: str) -> str:
    """MLflow allows no '@' in metric names: ``test_ctl_HR@10`` -> ``test_ctl_hr_at_10``."""
    return name.lower().replace("@", "_at_")


def top_k_metrics(top: np.ndarray, customers: np.ndarray, bought: tuple[np.ndarray, np.ndarray]) -> dict:
    """Per customer (rows of ``top``, the top-k article codes of sorted, distinct ``customers``),
    ``MAP@k``, ``Recall@k``, ``HR@k`` and ``NDCG@k`` against the distinct purchases ``bought``
    (customer codes, article codes). MAP@k divides each customer's sum of precisions by
    min(purchases, k), as RelBench's and the H&M benchmark's MAP@12 do."""
    from torch_geometric.metrics import LinkPredHitRatio, LinkPredMAP, LinkPredNDCG, LinkPredRecall
    from torch_geometric.metrics.link_pred import LinkPredMetricData

    k = top.shape[1]
    rows = np.searchsorted(customers, bought[0])
    data = LinkPredMetricData(
        torch.from_numpy(top), (torch.from_numpy(rows), torch.from_numpy(bought[1].astype(np.int64)))
    )
    found = {}
    for name, metric in (("MAP", LinkPredMAP), ("Recall", LinkPredRecall), ("HR", LinkPredHitRatio)):
        # PyG accumulates means; each customer's value is its _compute hook's row.
        found[f"{name}@{k}"] = metric(k)._compute(data).double().numpy()
    found[f"NDCG@{k}"] = LinkPredNDCG(k)._compute(data).double().numpy()
    return found


def bootstrap(values: np.ndarray, seed: int = 0) -> tuple[float, float]:
    """The 95% percentile interval of the mean over ``RESAMPLES`` resamples of the queries."""
    values = values[~np.isnan(values)]
    if len(values) == 0:
        return float("nan"), float("nan")
    draws = np.random.default_rng(seed).integers(0, len(values), (RESAMPLES, len(values)))
    means = values[draws].mean(axis=1)
    tail = (1 - LEVEL) / 2 * 100
    return float(np.percentile(means, tail)), float(np.percentile(means, 100 - tail))
