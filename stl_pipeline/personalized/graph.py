"""The customer-article purchase graph, and the snapshot of it that each window may see.

``hm_graph`` holds every purchase as a ``buys`` edge with its day, price and sales channel,
sorted by day, and the reverse ``rev_buys`` edges. Nothing reads it whole: a window starting
on day ``t`` gets ``snapshot(graph, t)``, whose edges, degree features and sales features come
only from purchases before ``t``. Sorting by day makes that a prefix of the edge list.
"""

import hashlib
import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from torch_geometric.data import HeteroData

from stl_pipeline.personalized.ingest import ARTICLE_FEATURES
from stl_pipeline.personalized.split import Windows

CUSTOMER, ARTICLE = "customer", "article"
BUYS, REV_BUYS = (CUSTOMER, "buys", ARTICLE), (ARTICLE, "rev_buys", CUSTOMER)
MAX_VALUES = 64  # one-hot columns per attribute; rarer values share one
# Sales features look back this many days from a snapshot's cutoff.
RECENT_DAYS = (7, 28)
ARTICLE_DYNAMIC = ("sales_7d", "sales_28d", "sales_all", "sold_before", "years_since_first_sale")
CUSTOMER_DYNAMIC = ("purchases_28d", "purchases_all", "has_history", "years_since_last_purchase")


def ids_digest(ids: pd.Series | pd.Index) -> str:
    """What ties the graph's node order to the tables it was built from."""
    return hashlib.sha256("\n".join(map(str, ids)).encode()).hexdigest()


def _one_hot(values: pd.Series, name: str) -> tuple[np.ndarray, list[str]]:
    counts = values.astype(str).value_counts()
    kept = list(counts.index[:MAX_VALUES])
    codes = pd.Categorical(values.astype(str), categories=kept).codes  # -1: a rarer value
    columns = len(kept) + (1 if len(counts) > MAX_VALUES else 0)
    out = np.zeros((len(values), columns), np.float32)
    out[np.arange(len(values)), np.where(codes < 0, columns - 1, codes)] = 1.0
    return out, [f"{name}={v}" for v in kept] + ([f"{name}=other"] if columns > len(kept) else [])


def customer_features(customers: pd.DataFrame) -> tuple[np.ndarray, list[str]]:
    age = customers["age"].astype("float32")
    parts = [
        np.stack(
            [
                (age.fillna(age.median() if age.notna().any() else 30) / 100).to_numpy(np.float32),
                age.isna().to_numpy(np.float32),
                customers["FN"].to_numpy(np.float32),
                customers["Active"].to_numpy(np.float32),
            ],
            axis=1,
        )
    ]
    names = ["age", "age_missing", "FN", "Active"]
    for column in ("club_member_status", "fashion_news_frequency"):
        block, labels = _one_hot(customers[column], column)
        parts.append(block)
        names += labels
    return np.concatenate(parts, axis=1), names


def article_features(articles: pd.DataFrame) -> tuple[np.ndarray, list[str]]:
    parts, names = [], []
    for column in ARTICLE_FEATURES:
        block, labels = _one_hot(articles[column], column)
        parts.append(block)
        names += labels
    return np.concatenate(parts, axis=1), names


def build_hm_graph(
    transactions: pd.DataFrame, articles: pd.DataFrame, customers: pd.DataFrame, windows: Windows
) -> HeteroData:
    for column, table, key in (
        ("customer_id", customers, "customer_id"),
        ("article_id", articles, "article_id"),
    ):
        categories = transactions[column].cat.categories
        if len(categories) != len(table) or not (categories == pd.Index(table[key])).all():
            raise ValueError(
                f"hm_transactions' {column} categories are not hm_{key.split('_')[0]}s' ids: the tables "
                "come from different ingestions; rematerialize hm_transactions, hm_articles and hm_customers"
            )
    start = transactions["t_dat"].min().normalize()
    day = ((transactions["t_dat"] - start) // pd.Timedelta(days=1)).to_numpy(np.int64)
    order = np.argsort(day, kind="stable")
    customer = transactions["customer_id"].cat.codes.to_numpy(np.int64)[order]
    article = transactions["article_id"].cat.codes.to_numpy(np.int64)[order]
    data = HeteroData()
    x_customer, customer_names = customer_features(customers)
    x_article, article_names = article_features(articles)
    data[CUSTOMER].x = torch.from_numpy(x_customer)
    data[ARTICLE].x = torch.from_numpy(x_article)
    data[ARTICLE].product_type = torch.from_numpy(
        pd.Categorical(articles["product_type_name"].astype(str)).codes.astype(np.int64)
    )
    # The release's article id is the product code and a three-digit variant: colour variants
    # of one product share the code (candidates.py offers a bought product's other variants).
    data[ARTICLE].product = torch.from_numpy(
        pd.factorize(articles["article_id"].astype(str).str.slice(0, -3))[0].astype(np.int64)
    )
    edge_index = torch.from_numpy(np.stack([customer, article]))
    time = torch.from_numpy(day[order].astype(np.int32))
    price = torch.from_numpy(transactions["price"].to_numpy(np.float32)[order])
    data[BUYS].edge_index, data[BUYS].time, data[BUYS].price = edge_index, time, price
    data[BUYS].channel = torch.from_numpy(transactions["sales_channel_id"].to_numpy(np.int8)[order])
    data[REV_BUYS].edge_index = edge_index.flip(0)
    data[REV_BUYS].time, data[REV_BUYS].price = time.clone(), price.clone()  # safetensors stores no aliases

    def day_of(when) -> int:
        return int((pd.Timestamp(when) - start) // pd.Timedelta(days=1))

    data.info = {
        "start": start.date().isoformat(),
        "val_start_day": day_of(windows.val_start),
        "test_start_day": day_of(windows.test_start),
        "end_day": day_of(windows.end) + 1,  # after the last purchase: what serving sees
        "window_days": day_of(windows.test_start) - day_of(windows.val_start),
        "windows": windows.as_dict(),
        "customers_sha256": ids_digest(customers["customer_id"]),
        "articles_sha256": ids_digest(articles["article_id"]),
        "customer_features": customer_names,
        "article_features": article_names,
    }
    return data


@dataclass
class Snapshot:
    """The graph as of the start of day ``cutoff``: inputs for a model and the baselines."""

    cutoff: int
    x: dict[str, torch.Tensor]
    adj_t: dict[tuple[str, str, str], torch.Tensor]  # sparse CSR (dst, src), rows averaging
    adj: dict[tuple[str, str, str], torch.Tensor]  # their transposes, for the backward pass
    edge_index: torch.Tensor  # (2, edges) customer -> article, purchases before cutoff
    time: torch.Tensor  # their days
    bought_keys: torch.Tensor  # sorted distinct customer * articles + article
    bought_counts: torch.Tensor  # how often each was bought

    @property
    def edges(self) -> int:
        return int(self.edge_index.shape[1])

    @property
    def articles(self) -> int:
        return int(self.x[ARTICLE].shape[0])

    def bought(self, customers: torch.Tensor, articles: torch.Tensor) -> torch.Tensor:
        """How often each customer bought the paired article before the cutoff."""
        keys = customers.to(torch.int64) * self.articles + articles
        at = torch.searchsorted(self.bought_keys, keys).clamp(max=max(len(self.bought_keys) - 1, 0))
        if not len(self.bought_keys):
            return torch.zeros(len(keys), device=keys.device)
        return torch.where(self.bought_keys[at] == keys, self.bought_counts[at], 0.0)

    def bought_entries(self, customers: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(row in ``customers``, article, count) of every pair the customers bought before the
        cutoff: the nonzero entries of their rows, without a dense (customers, articles) matrix."""
        n = self.articles
        lo = torch.searchsorted(self.bought_keys, customers.to(torch.int64) * n)
        hi = torch.searchsorted(self.bought_keys, (customers.to(torch.int64) + 1) * n)
        lengths = hi - lo
        row = torch.repeat_interleave(torch.arange(len(customers), device=lengths.device), lengths)
        at = torch.repeat_interleave(lo - torch.cumsum(lengths, 0) + lengths, lengths) + torch.arange(
            int(lengths.sum()), device=lengths.device
        )
        return row, self.bought_keys[at] % n, self.bought_counts[at]

    def to(self, device: torch.device) -> "Snapshot":
        return Snapshot(
            self.cutoff,
            {k: v.to(device) for k, v in self.x.items()},
            {k: v.to(device) for k, v in self.adj_t.items()},
            {k: v.to(device) for k, v in self.adj.items()},
            self.edge_index.to(device),
            self.time.to(device),
            self.bought_keys.to(device),
            self.bought_counts.to(device),
        )


def _adjacency(
    customer: torch.Tensor, article: torch.Tensor, n_customers: int, n_articles: int
) -> tuple[dict, dict]:
    """Sparse CSR (dst, src) matrices whose rows average a node's neighbours (a repeat purchase
    counts again), for both edge types, and their transposes. A transpose is one of the two
    index structures with the other side's weights: built once per snapshot, it spares the
    backward pass torch's transposition of the CSR matrix at every step."""

    def structure(dst: torch.Tensor, src: torch.Tensor, n_dst: int, n_src: int) -> torch.Tensor:
        # Indices are node codes the graph was built from: in range by construction, unchecked.
        counts = torch.sparse_coo_tensor(
            torch.stack([dst, src]), torch.ones(len(dst)), (n_dst, n_src), check_invariants=False
        )
        return counts.coalesce().to_sparse_csr()

    with warnings.catch_warnings():  # torch calls the CSR layout beta
        warnings.filterwarnings("ignore", "Sparse CSR tensor support is in beta", UserWarning)
        by_customer = structure(customer, article, n_customers, n_articles)
        by_article = structure(article, customer, n_articles, n_customers)
    degree = {
        CUSTOMER: torch.bincount(customer, minlength=n_customers).clamp(min=1).float(),
        ARTICLE: torch.bincount(article, minlength=n_articles).clamp(min=1).float(),
    }

    def weighted(like: torch.Tensor, by: str, rows: bool) -> torch.Tensor:
        crow, col = like.crow_indices(), like.col_indices()
        index = torch.repeat_interleave(torch.arange(len(crow) - 1), crow.diff()) if rows else col
        return torch.sparse_csr_tensor(
            crow, col, like.values() / degree[by][index], like.shape, check_invariants=False
        )

    adj_t = {BUYS: weighted(by_article, ARTICLE, True), REV_BUYS: weighted(by_customer, CUSTOMER, True)}
    adj = {BUYS: weighted(by_customer, ARTICLE, False), REV_BUYS: weighted(by_article, CUSTOMER, False)}
    return adj_t, adj


def snapshot(graph: HeteroData, cutoff: int, adjacency: bool = True) -> Snapshot:
    """Purchases strictly before day ``cutoff`` and the features they imply; no later purchase
    reaches an edge, a degree or a sales count (guarded by the ``hm_graph`` check). Without
    ``adjacency``, no message-passing matrices: features and counts only."""
    time = graph[BUYS].time
    n = int(torch.searchsorted(time, torch.tensor(cutoff, dtype=time.dtype)))
    edge_index, time = graph[BUYS].edge_index[:, :n], time[:n]
    customer, article = edge_index
    n_customers, n_articles = graph[CUSTOMER].num_nodes, graph[ARTICLE].num_nodes
    age = (cutoff - time).to(torch.float32)

    def count(index: torch.Tensor, size: int, within: float | None = None) -> torch.Tensor:
        chosen = index if within is None else index[age <= within]
        return torch.log1p(torch.bincount(chosen, minlength=size).to(torch.float32))

    first_sale = torch.full((n_articles,), float("inf")).scatter_reduce(0, article, time.float(), "amin")
    last_purchase = torch.full((n_customers,), float("-inf")).scatter_reduce(
        0, customer, time.float(), "amax"
    )
    sold = torch.isfinite(first_sale)
    bought = torch.isfinite(last_purchase)
    article_dynamic = torch.stack(
        [
            count(article, n_articles, RECENT_DAYS[0]),
            count(article, n_articles, RECENT_DAYS[1]),
            count(article, n_articles),
            sold.float(),
            torch.where(sold, (cutoff - first_sale) / 365, torch.zeros(())).float(),
        ],
        dim=1,
    )
    customer_dynamic = torch.stack(
        [
            count(customer, n_customers, RECENT_DAYS[1]),
            count(customer, n_customers),
            bought.float(),
            torch.where(bought, (cutoff - last_purchase) / 365, torch.ones(())).float(),
        ],
        dim=1,
    )
    x = {
        CUSTOMER: torch.cat([graph[CUSTOMER].x, customer_dynamic], dim=1),
        ARTICLE: torch.cat([graph[ARTICLE].x, article_dynamic], dim=1),
    }
    adj_t, adj = _adjacency(customer, article, n_customers, n_articles) if adjacency else ({}, {})
    keys, counts = torch.unique(customer * n_articles + article, sorted=True, return_counts=True)
    return Snapshot(cutoff, x, adj_t, adj, edge_index, time, keys, counts.to(torch.float32))


def window_purchases(graph: HeteroData, start: int, days: int) -> tuple[np.ndarray, np.ndarray]:
    """Distinct (customer, article) pairs bought on days ``[start, start + days)``: a window's
    labels, sorted by customer."""
    time = graph[BUYS].time
    lo, hi = (int(torch.searchsorted(time, torch.tensor(d, dtype=time.dtype))) for d in (start, start + days))
    customer, article = graph[BUYS].edge_index[:, lo:hi].numpy()
    n_articles = graph[ARTICLE].num_nodes
    keys = np.unique(customer * n_articles + article)
    return keys // n_articles, keys % n_articles
