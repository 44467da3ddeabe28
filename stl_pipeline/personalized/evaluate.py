"""Rank every article for a window's customers, by the model and by the baselines, and score it.

Each method is a scorer: ``scores(customers)`` gives a dense row of article scores per
customer, computed in chunks, from the window's snapshot only (purchases before its start),
on the scorer's device: only the top-k and the scored pairs travel back.
From those rows come the top-12 lists (already-bought articles allowed: repurchase is real),
MAP@12, Recall@12, HR@12 and NDCG@12 (metrics.py) over the customers who bought in the window, and the
link-prediction view: AUC and AP of the window's purchases against as many sampled
non-purchases, plus accuracy and F1 at probability 0.5 for a model whose scores are logits.
"""

from dataclasses import dataclass
from datetime import date, timedelta
from typing import TYPE_CHECKING, Protocol

import numpy as np
import pandas as pd
import torch
from scipy import sparse

from stl_pipeline.metrics import top_k_metrics
from stl_pipeline.personalized.graph import ARTICLE, CUSTOMER, RECENT_DAYS, Snapshot

if TYPE_CHECKING:
    from stl_pipeline.personalized.generate import Truth
    from stl_pipeline.personalized.model import HmSage
    from stl_pipeline.personalized.windows import Window

K = 12
CHUNK = 2048  # customers scored at once: CHUNK x articles floats
COPURCHASE_DAYS = 28
MODELS = ("hm_sage", "hm_ranker")
HEURISTICS = ("popularity", "repurchase", "co_purchase")


class DenseScorer(Protocol):
    logits: bool  # scores are log-odds of a purchase (accuracy and F1 apply)

    def scores(self, customers: torch.Tensor) -> torch.Tensor: ...


def _recent_counts(snap: Snapshot, n_articles: int, days: int) -> torch.Tensor:
    recent = snap.time >= snap.cutoff - days
    return torch.bincount(snap.edge_index[1, recent].cpu(), minlength=n_articles).float()


def _history(
    snap: Snapshot, n_customers: int, n_articles: int, since: int | None = None
) -> sparse.csr_matrix:
    """(customers, articles) purchase counts before the cutoff (and on or after day ``since``)."""
    edge_index, time = snap.edge_index.cpu().numpy(), snap.time.cpu().numpy()
    if since is not None:
        edge_index = edge_index[:, time >= since]
    ones = np.ones(edge_index.shape[1], np.float32)
    return sparse.csr_matrix((ones, (edge_index[0], edge_index[1])), shape=(n_customers, n_articles))


class FilledScorer:
    """A scorer whose row is a few entries per customer above one ``fill`` row shared by all
    (last week's best sellers, every value below any entry's). Its top-k and pair scores come
    from the entries alone: no dense (customers, articles) matrix, which at the release's size
    is 100,000 x 105,542 floats a method and window."""

    logits = False
    fill: np.ndarray  # (articles,) float32

    def entries(self, customers: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(row in ``customers``, article, score) of the customers' own entries."""
        empty = np.zeros(0, np.int64)
        return empty, empty, np.zeros(0, np.float32)


Scorer = DenseScorer | FilledScorer


class PopularityScorer(FilledScorer):
    """Last week's best sellers, for everyone (ties broken by the previous four weeks)."""

    def __init__(self, snap: Snapshot, n_articles: int) -> None:
        week = _recent_counts(snap, n_articles, RECENT_DAYS[0])
        month = _recent_counts(snap, n_articles, RECENT_DAYS[1])
        self.row = week + month / (month.max() + 1)
        self.fill = self.row.numpy()


class _OwnScorer(FilledScorer):
    """A customer-specific score, with last week's best sellers filling the rest of the list."""

    def __init__(self, snap: Snapshot, n_articles: int, matrix: sparse.csr_matrix) -> None:
        popularity = PopularityScorer(snap, n_articles).row
        self.fill = (popularity / (popularity.max() + 1)).numpy()  # below any own score of 1 or more
        self.matrix = matrix

    def own(self, customers: np.ndarray) -> sparse.csr_matrix:
        return self.matrix[customers]

    def entries(self, customers: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        own = self.own(customers).tocoo()
        keep = own.data > 0
        row, article = own.row[keep].astype(np.int64), own.col[keep].astype(np.int64)
        return row, article, (own.data[keep] + 1 + self.fill[article]).astype(np.float32)


class RepurchaseScorer(_OwnScorer):
    """The customer's own purchases, most bought first, then last week's best sellers."""

    def __init__(self, snap: Snapshot, n_customers: int, n_articles: int) -> None:
        super().__init__(snap, n_articles, _history(snap, n_customers, n_articles))


class CoPurchaseScorer(_OwnScorer):
    """Item-to-item: articles bought, in the last four weeks, by customers who also bought the
    customer's articles, weighted by how often; then last week's best sellers. Each chunk's
    rows are multiplied out when asked for: all customers' at once do not fit at the
    release's size (4.4 billion entries)."""

    def __init__(self, snap: Snapshot, n_customers: int, n_articles: int) -> None:
        recent = _history(snap, n_customers, n_articles, since=snap.cutoff - COPURCHASE_DAYS)
        recent.data[:] = 1
        together = (recent.T @ recent).tocsr()
        together.setdiag(0)
        together.eliminate_zeros()
        profile = _history(snap, n_customers, n_articles)
        profile.data[:] = 1
        super().__init__(snap, n_articles, profile)
        self.together = together

    def own(self, customers: np.ndarray) -> sparse.csr_matrix:
        return self.matrix[customers] @ self.together


class SageScorer:
    """The model's logits: embeddings computed once per snapshot, rows by matrix product."""

    logits = True

    def __init__(self, model: "HmSage", snap: Snapshot) -> None:
        with torch.no_grad():
            self.customer, self.article, self.bias = model(snap)
        self.model, self.snap = model, snap

    def scores(self, customers: torch.Tensor) -> torch.Tensor:
        customers = customers.to(self.customer.device)
        with torch.no_grad():
            rows = self.customer[customers] @ self.article.T + self.bias
            # repeat(0) is 0 (no bias): only the pairs bought before move.
            row, article, count = self.snap.bought_entries(customers)
            rows[row, article] += self.model.repeat(count)
        return rows.float()


class OracleScorer:
    """The generator's own purchase probabilities for the window: the customer's style mixture
    times each article's share of its style's sales that week, plus repurchase of the
    customer's history at the customer's rate. An upper reference, not a method."""

    logits = False

    def __init__(
        self,
        truth: "Truth",
        snap: Snapshot,
        customer_ids: pd.Index,
        article_ids: pd.Index,
        start: date,
        days: int,
    ) -> None:
        articles = truth.article_index.get_indexer(article_ids)
        customers = truth.customer_index.get_indexer(customer_ids)
        if (articles < 0).any() or (customers < 0).any():
            raise ValueError("the ground truth does not cover these articles and customers: not its dataset")
        weeks = sorted({(start + timedelta(days=d) - truth.start).days // 7 for d in range(days)})
        weeks = [w for w in weeks if 0 <= w < len(truth.popularity)]
        styles = truth.article_style[articles]
        share = truth.popularity[weeks][:, articles].astype(np.float64)
        totals = np.zeros((len(weeks), truth.customer_styles.shape[1]))
        for i in range(len(weeks)):
            np.add.at(totals[i], styles, share[i])
        self.article_share = torch.from_numpy((share / totals[:, styles]).mean(0).astype(np.float32))
        self.style_onehot = torch.nn.functional.one_hot(torch.from_numpy(styles), totals.shape[1]).float()
        self.tastes = torch.from_numpy(truth.customer_styles[customers])
        self.repurchase = torch.from_numpy(truth.customer_repurchase[customers])
        history = _history(snap, len(customer_ids), len(article_ids))
        totals_c = np.asarray(history.sum(1)).ravel()
        self.history = sparse.diags(1 / np.maximum(totals_c, 1)) @ history

    def scores(self, customers: torch.Tensor) -> torch.Tensor:
        new = (self.tastes[customers] @ self.style_onehot.T) * self.article_share
        again = torch.from_numpy(self.history[customers.numpy()].toarray()).float()
        rate = torch.where(again.sum(1, keepdim=True) > 0, self.repurchase[customers, None], 0.0)
        return (1 - rate) * new + rate * again


@dataclass
class WindowResult:
    metrics: dict[str, float]
    per_customer: dict[str, np.ndarray]  # each ranking metric of each customer, in customer order
    customers: np.ndarray


def rank(
    scorer: Scorer, customers: np.ndarray, k: int = K, pairs: tuple[np.ndarray, np.ndarray] | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Top-``k`` article codes and their scores per customer (rows in ``customers`` order), and
    the scores of ``pairs`` (customer, article) whose customers are all in ``customers``."""
    top = np.empty((len(customers), k), np.int64)
    values = np.empty((len(customers), k), np.float32)
    pair_scores = pair_rows = None
    if pairs is not None:
        pair_scores = np.empty(len(pairs[0]), np.float32)
        pair_rows = np.searchsorted(customers, pairs[0])  # customers are sorted and distinct
    filled = _FilledTop(scorer, k) if isinstance(scorer, FilledScorer) else None
    for lo in range(0, len(customers), CHUNK):
        part = customers[lo : lo + CHUNK]
        mine = None if pair_rows is None else np.flatnonzero((pair_rows >= lo) & (pair_rows < lo + CHUNK))
        asked = None if mine is None else (pair_rows[mine] - lo, pairs[1][mine])
        ranked = filled.rank(part, asked) if filled is not None else _dense_top(scorer, part, k, asked)
        top[lo : lo + CHUNK], values[lo : lo + CHUNK] = ranked[0], ranked[1]
        if mine is not None:
            pair_scores[mine] = ranked[2]
    return top, values, pair_scores


def _dense_top(
    scorer: DenseScorer, customers: np.ndarray, k: int, pairs: tuple[np.ndarray, np.ndarray] | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """A dense scorer's top-k and pair scores for one chunk; the rows stay on its device."""
    rows = scorer.scores(torch.from_numpy(customers))
    best = torch.topk(rows, min(k, rows.shape[1]), dim=1)
    scored = None
    if pairs is not None:
        at = [torch.from_numpy(i).to(rows.device) for i in pairs]
        scored = rows[at[0], at[1]].cpu().numpy()
    return best.indices.cpu().numpy(), best.values.cpu().numpy(), scored


class _FilledTop:
    """A ``FilledScorer``'s top-k: each row's entries, best first, then the best fill articles
    the row does not hold (from the fill's top k: a row holding m entries hides at most m of
    those and needs k - m), exactly as a top-k over the dense row would order them."""

    def __init__(self, scorer: FilledScorer, k: int) -> None:
        self.scorer, self.n = scorer, len(scorer.fill)
        self.k = min(k, self.n)
        head = np.argsort(-scorer.fill, kind="stable")[: self.k]
        self.head, self.head_values = head, scorer.fill[head]

    def rank(
        self, customers: np.ndarray, pairs: tuple[np.ndarray, np.ndarray] | None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        k, n_rows = self.k, len(customers)
        row, article, value = self.scorer.entries(customers)
        order = np.lexsort((-value, row))
        row, article, value = row[order], article[order], value[order]
        place = np.arange(len(row)) - np.searchsorted(row, row)  # rank within the row
        top = np.zeros((n_rows, k), np.int64)
        values = np.zeros((n_rows, k), np.float32)
        keep = place < k
        top[row[keep], place[keep]] = article[keep]
        values[row[keep], place[keep]] = value[keep]
        held = np.minimum(np.bincount(row, minlength=n_rows), k)
        keys = row * self.n + article
        by_key = np.argsort(keys)
        keys_sorted = keys[by_key]
        wanted = np.arange(n_rows, dtype=np.int64)[:, None] * self.n + self.head[None, :]
        free = ~_contains(keys_sorted, wanted)
        slot = held[:, None] + np.cumsum(free, axis=1) - 1
        take = free & (slot < k)
        r, c = np.nonzero(take)
        top[r, slot[r, c]] = self.head[c]
        values[r, slot[r, c]] = self.head_values[c]
        scored = None
        if pairs is not None:
            scored = self.scorer.fill[pairs[1]].astype(np.float32)
            asked = pairs[0].astype(np.int64) * self.n + pairs[1]
            found = _contains(keys_sorted, asked)
            scored[found] = value[by_key][np.searchsorted(keys_sorted, asked[found])]
        return top, values, scored


def _contains(sorted_keys: np.ndarray, keys: np.ndarray) -> np.ndarray:
    at = np.minimum(np.searchsorted(sorted_keys, keys), max(len(sorted_keys) - 1, 0))
    return sorted_keys[at] == keys if len(sorted_keys) else np.zeros(keys.shape, bool)


def ranking_metrics(
    top: np.ndarray, customers: np.ndarray, bought_c: np.ndarray, bought_a: np.ndarray
) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """The means over customers of ``metrics.top_k_metrics``, and each customer's values."""
    per_customer = top_k_metrics(top, customers, (bought_c, bought_a))
    return {name: float(values.mean()) for name, values in per_customer.items()}, per_customer


def sample_negatives(window: "Window", seed: int) -> tuple[np.ndarray, np.ndarray]:
    """For each purchase of the window, the same customer and an article on sale that the
    customer did not buy in the window."""
    generator = torch.Generator().manual_seed(seed)
    customers = window.customers.cpu().numpy()
    n_articles = int(window.snap.x[ARTICLE].shape[0])
    bought = customers.astype(np.int64) * n_articles + window.articles.cpu().numpy()
    articles = window.negatives.uniform(len(customers), generator).numpy()
    for _ in range(20):  # redraw collisions with the customer's own purchases
        clash = np.isin(customers.astype(np.int64) * n_articles + articles, bought)
        if not clash.any():
            break
        articles[clash] = window.negatives.uniform(int(clash.sum()), generator).numpy()
    keep = ~np.isin(customers.astype(np.int64) * n_articles + articles, bought)
    return customers[keep], articles[keep]


def pair_metrics(positive: np.ndarray, negative: np.ndarray, logits: bool) -> dict[str, float]:
    from sklearn.metrics import average_precision_score, f1_score, roc_auc_score

    labels = np.concatenate([np.ones(len(positive)), np.zeros(len(negative))])
    scores = np.concatenate([positive, negative]).astype(np.float64)
    metrics = {
        "AUC": float(roc_auc_score(labels, scores)),
        "AP": float(average_precision_score(labels, scores)),
    }
    if logits:
        predicted = scores > 0  # probability above 0.5
        metrics |= {"accuracy": float((predicted == labels).mean()), "F1": float(f1_score(labels, predicted))}
    return metrics


def evaluate(scorer: Scorer, window: "Window", pairs: bool = False, seed: int = 0) -> WindowResult:
    """Rank for every customer who bought in the window; with ``pairs``, the link-prediction
    metrics too."""
    bought_c, bought_a = window.customers.cpu().numpy(), window.articles.cpu().numpy()
    customers = np.unique(bought_c)
    sampled = None
    if pairs:
        neg_c, neg_a = sample_negatives(window, seed)
        sampled = (np.concatenate([bought_c, neg_c]), np.concatenate([bought_a, neg_a]))
    top, _, pair_scores = rank(scorer, customers, K, sampled)
    metrics, per_customer = ranking_metrics(top, customers, bought_c, bought_a)
    if pair_scores is not None:
        metrics |= pair_metrics(pair_scores[: len(bought_c)], pair_scores[len(bought_c) :], scorer.logits)
    metrics["customers"] = len(customers)
    return WindowResult(metrics, per_customer, customers)


def baselines(
    window: "Window",
    truth: "Truth | None",
    customer_ids: pd.Index,
    article_ids: pd.Index,
    start: date,
) -> dict[str, Scorer]:
    """The heuristics of the report for one window, and the oracle where the truth is known."""
    snap = window.snap
    n_customers, n_articles = int(snap.x[CUSTOMER].shape[0]), int(snap.x[ARTICLE].shape[0])
    found: dict[str, Scorer] = {
        "popularity": PopularityScorer(snap, n_articles),
        "repurchase": RepurchaseScorer(snap, n_customers, n_articles),
        "co_purchase": CoPurchaseScorer(snap, n_customers, n_articles),
    }
    if truth is not None:
        day = start + timedelta(days=window.start)
        found["oracle"] = OracleScorer(truth, snap, customer_ids, article_ids, day, window.days)
    return found


def paired_gain(ours: np.ndarray, reference: np.ndarray) -> tuple[float, float]:
    """The mean per-customer difference and its standard error."""
    gain = ours - reference
    return float(gain.mean()), float(gain.std(ddof=1) / np.sqrt(len(gain))) if len(gain) > 1 else float("nan")


RANKING = (f"MAP@{K}", f"Recall@{K}", f"HR@{K}", f"NDCG@{K}")
# Against the window's best heuristic: the mean paired MAP@12 difference and its 95% interval.
GAIN = (f"MAP@{K}_gain", f"MAP@{K}_gain_low", f"MAP@{K}_gain_high")
COLUMNS = (*RANKING, *GAIN, "AUC", "AP", "accuracy", "F1", "customers")
