"""Retrieval metrics of scored candidates: HR@K, MRR, NDCG@10 and same-category AUC, each
with a 95% bootstrap interval over queries.

Every metric is a mean of per-query values, so that the interval says how much a
difference between methods could be the luck of which scenes were held out. HR@K and
NDCG@10 are read off the top-K lists (as PyG's link-prediction metrics compute them),
MRR is over the full ranking, and AUC is per query, against negatives of the same
category from other scenes.
"""

from dataclasses import dataclass

import numpy as np
import torch

from stl_pipeline.metrics import bootstrap, true_ranks

KS = (1, 5, 10, 50)
POOLS = ("same_category", "catalogue")
METRICS = [*(f"HR@{k}" for k in KS), "MRR", "NDCG@10", "AUC"]


@dataclass
class RetrievalTask:
    """The held-out queries of one task, and what the AUC compares against."""

    truth: torch.Tensor  # (Q,) index of the true product
    category: torch.Tensor  # (P,) category of every product
    auc_negatives: torch.Tensor  # (Q, M) same-category products from other scenes


def pool_mask(task: RetrievalTask, pool: str) -> torch.Tensor | None:
    if pool == "catalogue":
        return None
    if pool == "same_category":
        return task.category[None, :] == task.category[task.truth][:, None]
    raise ValueError(f"unknown candidate pool {pool!r}: use {POOLS}")


def per_query(scores: torch.Tensor, task: RetrievalTask, pool: str) -> dict[str, np.ndarray]:
    """Every metric's value for each query of one method on one task and pool (``scores`` is
    (Q, P)); AUC is NaN for a query without negatives."""
    allowed = pool_mask(task, pool)
    masked = scores if allowed is None else scores.masked_fill(~allowed, float("-inf"))
    rows = torch.arange(len(task.truth))
    top = masked.topk(min(max(KS), masked.shape[1]), dim=1).indices
    found = top == task.truth[:, None]
    position = torch.where(found.any(1), found.float().argmax(1), torch.full_like(task.truth, 10**9))
    values = {f"HR@{k}": (position < k).float() for k in KS}
    values["MRR"] = 1.0 / (true_ranks(scores, task.truth, allowed).float() + 1)
    values["NDCG@10"] = torch.where(position < 10, 1.0 / torch.log2(position.float() + 2), 0.0)
    values["AUC"] = auc_per_query(
        scores[rows, task.truth], scores.gather(1, task.auc_negatives.clamp(min=0)), task.auc_negatives >= 0
    )
    return {name: value.double().numpy() for name, value in values.items()}


def summary(per_query_values: dict[str, np.ndarray]) -> dict[str, float]:
    """Every metric's mean over queries and its interval (``<metric>_low``, ``<metric>_high``);
    a query without AUC negatives is left out of AUC (NaN if all are)."""
    result = {}
    for name, values in per_query_values.items():
        valid = values[~np.isnan(values)]
        result[name] = float(valid.mean()) if len(valid) else float("nan")
        result[f"{name}_low"], result[f"{name}_high"] = bootstrap(values)
    return result


def auc_per_query(positive: torch.Tensor, negative: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """The ROC AUC of each query's positive (Q,) against its valid negatives (Q, M): the share
    of negatives it outscores, ties counting half; NaN for a query without a valid negative."""
    wins = (positive[:, None] > negative).float() + 0.5 * (positive[:, None] == negative).float()
    count = valid.sum(dim=1)
    per_query = (wins * valid).sum(dim=1) / count.clamp(min=1)
    return torch.where(count > 0, per_query, float("nan"))


def sample_auc_negatives(
    truth: torch.Tensor,
    category: torch.Tensor,
    scene_products: list[set[int]],
    count: int = 20,
    seed: int = 0,
) -> torch.Tensor:
    """(Q, count) products of each true product's category that are not in the query's scene;
    -1 where the category has no such product."""
    rng = np.random.default_rng(seed)
    by_category = {int(c): np.flatnonzero(category.numpy() == c) for c in category.unique()}
    rows = []
    for product, in_scene in zip(truth.tolist(), scene_products, strict=True):
        candidates = by_category[int(category[product])]
        candidates = candidates[~np.isin(candidates, list(in_scene))]
        if len(candidates) == 0:
            rows.append(np.full(count, -1))
        else:
            rows.append(rng.choice(candidates, count, replace=len(candidates) < count))
    return torch.from_numpy(np.stack(rows)) if rows else torch.empty((0, count), dtype=torch.long)
