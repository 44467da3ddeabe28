"""Retrieval metrics of scored candidates: HR@K, MRR, NDCG@10 and same-category AUC.

HR@K and NDCG@10 come from PyG's link-prediction metrics over the top-K lists;
MRR is over the full ranking (PyG's is cut at K), and AUC is per query, against
negatives of the same category from other scenes.
"""

from dataclasses import dataclass

import numpy as np
import torch
from torch_geometric.metrics import LinkPredHitRatio, LinkPredNDCG

from stl_pipeline.training.ranking import mrr, true_ranks

KS = (1, 5, 10, 50)
POOLS = ("same_category", "catalogue")


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


def metrics(scores: torch.Tensor, task: RetrievalTask, pool: str) -> dict[str, float]:
    """Every metric of one method on one task and pool; ``scores`` is (Q, P)."""
    allowed = pool_mask(task, pool)
    masked = scores if allowed is None else scores.masked_fill(~allowed, float("-inf"))
    rows = torch.arange(len(task.truth))
    label_index = torch.stack([rows, task.truth])
    top = masked.topk(min(max(KS), masked.shape[1]), dim=1).indices
    result = {}
    for k in KS:
        hit = LinkPredHitRatio(k)
        hit.update(top[:, :k], label_index)
        result[f"HR@{k}"] = float(hit.compute())
    ndcg = LinkPredNDCG(10)
    ndcg.update(top[:, :10], label_index)
    result["NDCG@10"] = float(ndcg.compute())
    result["MRR"] = mrr(true_ranks(scores, task.truth, allowed))
    result["AUC"] = auc(
        scores[rows, task.truth], scores.gather(1, task.auc_negatives.clamp(min=0)), task.auc_negatives >= 0
    )
    return result


def auc(positive: torch.Tensor, negative: torch.Tensor, valid: torch.Tensor) -> float:
    """Mean over queries of the ROC AUC of one positive (Q,) against its valid negatives (Q, M):
    the share of negatives it outscores, ties counting half. Queries without a valid negative
    are left out; NaN if none has one."""
    wins = (positive[:, None] > negative).float() + 0.5 * (positive[:, None] == negative).float()
    count = valid.sum(dim=1)
    per_query = (wins * valid).sum(dim=1) / count.clamp(min=1)
    return float(per_query[count > 0].mean()) if bool((count > 0).any()) else float("nan")


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
