"""Ranking losses over query and product vectors (both L2-normalized; scores are cosines).

A step's negatives (``Negatives``) are a set shared by every query of the batch
(the batch's distinct positives) and a few per query (same-category draws), so
in-batch and hard negatives are one code path, and a step costs B x (shared +
own) scores, never B x B.
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from stl_pipeline.models.shapes import pad_rows, take


@dataclass(frozen=True)
class Negatives:
    """Product indices: ``shared`` (U,) offered to every query, ``own`` (B, K) to one query each.
    The last ``padding`` of ``shared`` are fillers, offered to no query (models/shapes.py)."""

    shared: torch.Tensor
    own: torch.Tensor
    padding: int = 0

    @property
    def drawn(self) -> torch.Tensor:
        """The shared negatives without their fillers."""
        return self.shared[: len(self.shared) - self.padding]

    def to(self, device: torch.device) -> "Negatives":
        return Negatives(self.shared.to(device), self.own.to(device), self.padding)


def candidate_scores(
    queries: torch.Tensor, products: torch.Tensor, positives: torch.Tensor, negatives: Negatives
) -> tuple[torch.Tensor, list[tuple[torch.Tensor, torch.Tensor]]]:
    """Scores of each query's positive (B,) and, for the shared (B, U) and own (B, K)
    negatives, their scores with the mask of those that are really other products.

    The shared negatives are one matrix product; each query's own are gathered, (B, K, d),
    which is small for the few same-category draws. The parts stay apart: joining them
    would copy the largest matrices of the step once more.
    """
    positive = (queries * take(products, positives)).sum(1)
    shared = queries @ take(products, negatives.shared).T
    own = torch.einsum("bd,bkd->bk", queries, take(products, negatives.own))
    offered = negatives.shared[None, :] != positives[:, None]
    offered[:, len(negatives.drawn) :] = False  # the fillers, if any
    return positive, [(shared, offered), (own, negatives.own != positives[:, None])]


def info_nce(
    queries: torch.Tensor,
    products: torch.Tensor,
    positives: torch.Tensor,
    negatives: Negatives,
    temperature: float = 0.07,
    log_q: torch.Tensor | None = None,
) -> torch.Tensor:
    """Cross-entropy of the positive against its negatives.

    A negative that equals the query's positive is masked, so in-batch
    negatives may include other queries of the same product. ``log_q`` (P,), the
    log of how often the sampling offers each product as a candidate, is taken
    off every candidate's logit (Yi et al., RecSys 2019): without it, products
    that are offered often, the popular ones as in-batch negatives, are learned
    to rank low for every query but their own.
    """
    positive, parts = candidate_scores(queries, products, positives, negatives)
    positive = positive / temperature
    corrections = [None, None]
    if log_q is not None:
        positive = positive - log_q[positives]
        corrections = [log_q[negatives.shared][None, :], log_q[negatives.own]]
    terms = [positive]
    for (scores, valid), correction in zip(parts, corrections, strict=True):
        logits = scores / temperature
        if correction is not None:
            logits = logits - correction
        terms.append(logits.masked_fill(~valid, float("-inf")).logsumexp(dim=1))
    return (torch.stack(terms, dim=1).logsumexp(dim=1) - positive).mean()


def triplet(
    queries: torch.Tensor,
    products: torch.Tensor,
    positives: torch.Tensor,
    negatives: Negatives,
    margin: float = 0.2,
) -> torch.Tensor:
    """Hinge on the hardest valid negative of each query (cosine distance)."""
    positive, parts = candidate_scores(queries, products, positives, negatives)
    hardest = (
        torch.stack(
            [s.masked_fill(~v, float("-inf")).max(dim=1).values for s, v in parts if s.shape[1]], dim=1
        )
        .max(dim=1)
        .values
    )
    return F.relu(hardest - positive + margin).mean()


def bpr(
    queries: torch.Tensor, products: torch.Tensor, positives: torch.Tensor, negatives: Negatives
) -> torch.Tensor:
    """Bayesian personalized ranking: -log sigmoid(positive - negative), averaged over negatives."""
    positive, parts = candidate_scores(queries, products, positives, negatives)
    # cosines are small: scale them
    total = sum((-F.logsigmoid((positive[:, None] - s) * 10.0) * v).sum() for s, v in parts)
    return total / sum(v.sum() for _, v in parts).clamp(min=1)


LOSSES = {"infonce": info_nce, "triplet": triplet, "bpr": bpr}


def sampling_log_q(
    positives: torch.Tensor,
    product_category: torch.Tensor,
    batch: int,
    in_batch: bool,
    same_category: int,
    max_shared: int = 0,
) -> torch.Tensor:
    """(P,) log of the expected number of times each product is among a query's candidates
    under ``sample_negatives``: in a batch of ``batch`` queries drawn from ``positives`` (the
    task's training queries), of which ``max_shared`` distinct ones at most are kept (0: all),
    and ``same_category`` uniform draws from its category."""
    count = torch.zeros(len(product_category), dtype=torch.float64)
    if in_batch:
        share = torch.bincount(positives.cpu(), minlength=len(count)).double() / max(1, len(positives))
        in_the_batch = 1 - (1 - share) ** batch
        distinct = float(in_the_batch.sum())
        kept = min(1.0, max_shared / distinct) if max_shared > 0 and distinct > 0 else 1.0
        count += in_the_batch * kept
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
    max_shared: int = 0,
) -> Negatives:
    """The batch's distinct positives, shared by every query (a random ``max_shared`` of them
    when there are more; 0: all; padded with fillers to a bucket of rows, models/shapes.py),
    and ``same_category`` random products of each positive's own category (the hard ones)."""
    if not in_batch and not same_category:
        raise ValueError("no negatives: enable in-batch or same-category negatives")
    shared = positives.new_zeros(0)
    if in_batch:
        # Each distinct product once: a large batch repeats popular products many times.
        shared = torch.unique(positives)
        if 0 < max_shared < len(shared):
            shared = shared[torch.randperm(len(shared), generator=generator)[:max_shared]]
    drawn = len(shared)
    shared = pad_rows(shared)
    own = positives.new_zeros(len(positives), 0)
    if same_category:
        categories = product_category[positives]
        order = torch.argsort(product_category, stable=True)
        counts = torch.bincount(product_category, minlength=int(product_category.max()) + 1)
        starts = torch.cumsum(counts, 0) - counts
        draw = torch.rand(len(positives), same_category, generator=generator, device=positives.device)
        offsets = (draw * counts[categories][:, None]).long()
        own = order[starts[categories][:, None] + offsets]
    return Negatives(shared, own, len(shared) - drawn)
