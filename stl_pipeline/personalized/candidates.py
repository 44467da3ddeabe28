"""The ranker's first stage: per customer, the union of what cheap generators propose, with
each generator's rank and score kept as features beside the pair's, the customer's and the
article's statistics, all computed from the purchases before one cutoff day.

The generators are those of the two-stage systems that won the H&M competition:

* ``repurchase``: the customer's own purchases, weighted by recency;
* ``co_purchase``: item-to-item, articles bought in the last four weeks by the customers who
  bought the customer's articles, as the share of those customers;
* ``same_product``: the other colour variants of a product the customer bought;
* ``popularity``, ``popularity_age``, ``popularity_channel``: last week's best sellers overall,
  within the customer's age band and within the customer's usual sales channel;
* ``hm_sage``: the GraphSAGE model's top-N, whose score is also a feature of every candidate.

Beside them each candidate carries the customer's affinity to the article's attributes: the
recency-weighted share of the customer's purchases with the same product type, colour, and
so on (each of ingest's ``ARTICLE_FEATURES``).

Everything is computed for a chunk of customers at a time from sparse per-snapshot tables,
so the release's 1.37M customers never need a dense (customers, articles) matrix.
"""

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch
from scipy import sparse
from torch_geometric.data import HeteroData

from stl_pipeline.personalized.config import RankerConfig
from stl_pipeline.personalized.graph import ARTICLE, BUYS, CUSTOMER
from stl_pipeline.personalized.ingest import ARTICLE_FEATURES

GENERATORS = (
    "repurchase",
    "co_purchase",
    "same_product",
    "popularity",
    "popularity_age",
    "popularity_channel",
    "hm_sage",
)
RECENCY_DAYS = 30.0  # a purchase's weight is exp(-days ago / this)
WEEK, MONTH = 7, 28
AGE_BANDS = np.array([25.0, 35.0, 45.0, 55.0])  # five bands, and a sixth for an unknown age
CATEGORICAL = ("article_product_type", "article_index_group")
FEATURES = (
    *(f"{g}_{what}" for g in GENERATORS for what in ("rank", "score")),
    "sage_score",
    "pair_purchases",
    "pair_recency",
    "pair_days_since",
    "article_sales_7d",
    "article_sales_28d",
    "article_sales_all",
    "article_days_since_first_sale",
    "article_price",
    "article_sales_7d_age_band",
    "article_sales_7d_channel",
    *CATEGORICAL,
    "customer_age",
    "customer_purchases_all",
    "customer_purchases_28d",
    "customer_days_since_last",
    "customer_price",
    "customer_online_share",
    "customer_distinct_articles",
    "price_ratio",
    *(f"affinity_{column}" for column in ARTICLE_FEATURES),
)


class RowScorer(Protocol):
    def scores(self, customers: torch.Tensor) -> torch.Tensor: ...


@dataclass
class CandidateBlock:
    """Candidates of a chunk of customers, sorted by (row, article)."""

    rows: np.ndarray  # index into the chunk's customers
    articles: np.ndarray
    features: np.ndarray  # (candidates, len(FEATURES)) float32, NaN where a value does not exist

    def generated_by(self, generator: str) -> np.ndarray:
        return ~np.isnan(self.features[:, FEATURES.index(f"{generator}_rank")])


def _top_per_row(matrix: sparse.csr_matrix, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(row, column, value, rank) of each row's ``n`` largest stored values, rank from 0."""
    matrix = matrix.tocsr()
    matrix.sum_duplicates()
    row = np.repeat(np.arange(matrix.shape[0]), np.diff(matrix.indptr))
    order = np.lexsort((-matrix.data, row))
    rank = np.arange(len(order)) - matrix.indptr[row[order]]
    keep = order[rank < n]
    return row[keep], matrix.indices[keep], matrix.data[keep], rank[rank < n]


def _segment_top(counts: np.ndarray, n: int) -> np.ndarray:
    """(segments, n) the most sold articles of each segment's row of ``counts``."""
    return np.argsort(-counts, axis=1, kind="stable")[:, : min(n, counts.shape[1])]


def block_codes(x: torch.Tensor, names: list[str], prefix: str) -> np.ndarray:
    """The value code of a one-hot block of the graph's static features (-1: none)."""
    columns = [i for i, name in enumerate(names) if name.startswith(f"{prefix}=")]
    if not columns:
        return np.full(x.shape[0], -1, np.int64)
    block = x[:, columns].numpy()
    return np.where(block.max(1) > 0, block.argmax(1), -1)


class Candidates:
    """The generators and features of one cutoff day (a window's start, or the day after the
    data for serving): ``block(customers)`` gives a chunk's candidates."""

    def __init__(
        self, graph: HeteroData, cutoff: int, config: RankerConfig, sage: RowScorer | None = None
    ) -> None:
        self.cutoff, self.config, self.sage = cutoff, config, sage
        time = graph[BUYS].time
        n = int(torch.searchsorted(time, torch.tensor(cutoff, dtype=time.dtype)))
        customer = graph[BUYS].edge_index[0, :n].numpy()
        article = graph[BUYS].edge_index[1, :n].numpy()
        day = time[:n].numpy().astype(np.int64)
        price = graph[BUYS].price[:n].numpy().astype(np.float64)
        channel = graph[BUYS].channel[:n].numpy()
        online = (channel == 2).astype(np.float64)
        self.n_customers, self.n_articles = graph[CUSTOMER].num_nodes, graph[ARTICLE].num_nodes
        nc, na = self.n_customers, self.n_articles
        ago = (cutoff - day).astype(np.float64)
        weight = np.exp(-ago / RECENCY_DAYS)

        # The pairs bought before the cutoff: counts, recency weights, last day; sorted keys.
        keys = customer.astype(np.int64) * na + article
        order = np.argsort(keys, kind="stable")  # within a pair, by day (the edges are)
        keys_sorted = keys[order]
        first = np.r_[True, keys_sorted[1:] != keys_sorted[:-1]] if len(keys) else np.zeros(0, bool)
        group = np.cumsum(first) - 1
        self.pair_keys = keys_sorted[first]
        self.pair_count = np.bincount(group, minlength=len(self.pair_keys)).astype(np.float32)
        self.pair_weight = np.bincount(group, weights=weight[order], minlength=len(self.pair_keys))
        last = np.r_[np.flatnonzero(first)[1:], len(keys_sorted)] - 1
        self.pair_last = day[order][last] if len(keys) else np.zeros(0, np.int64)
        pair_rows = self.pair_keys // na
        indptr = np.searchsorted(pair_rows, np.arange(nc + 1))
        self.profile = sparse.csr_matrix(
            (self.pair_weight.astype(np.float32), (self.pair_keys % na).astype(np.int32), indptr), (nc, na)
        )

        # Customers.
        bought = np.bincount(customer, minlength=nc).astype(np.float64)
        has = bought > 0
        x, names = graph[CUSTOMER].x, graph.info["customer_features"]
        age = x[:, names.index("age")].numpy() * 100
        age = np.where(x[:, names.index("age_missing")].numpy() > 0, np.nan, age)
        self.age_band = np.where(np.isnan(age), len(AGE_BANDS) + 1, np.searchsorted(AGE_BANDS, age))
        online_share = np.bincount(customer, online, nc) / np.maximum(bought, 1)
        self.channel = np.where(has, np.where(online_share >= 0.5, 2, 1), 0)
        last_day = np.full(nc, np.nan)
        if has.any():
            last_day[has] = np.maximum.reduceat(self.pair_last, indptr[:-1][has])
        self.customer = {
            "customer_age": age,
            "customer_purchases_all": bought,
            "customer_purchases_28d": np.bincount(customer[ago <= MONTH], minlength=nc).astype(np.float64),
            "customer_days_since_last": cutoff - last_day,
            "customer_price": np.where(has, np.bincount(customer, price, nc) / np.maximum(bought, 1), np.nan),
            "customer_online_share": np.where(has, online_share, np.nan),
            "customer_distinct_articles": np.diff(indptr).astype(np.float64),
        }

        # Articles.
        week = ago <= WEEK
        sales_7 = np.bincount(article[week], minlength=na).astype(np.float64)
        sales_28 = np.bincount(article[ago <= MONTH], minlength=na).astype(np.float64)
        sales_all = np.bincount(article, minlength=na).astype(np.float64)
        first_sale = np.full(na, np.nan)
        sold, at = np.unique(article, return_index=True)  # the edges are in day order
        first_sale[sold] = day[at]
        recent = ago <= MONTH
        price_28 = np.bincount(article[recent], price[recent], na) / np.maximum(sales_28, 1)
        price_all = np.bincount(article, price, na) / np.maximum(sales_all, 1)
        ax, anames = graph[ARTICLE].x, graph.info["article_features"]
        self.article = {
            "article_sales_7d": sales_7,
            "article_sales_28d": sales_28,
            "article_sales_all": sales_all,
            "article_days_since_first_sale": cutoff - first_sale,
            "article_price": np.where(sales_28 > 0, price_28, np.where(sales_all > 0, price_all, np.nan)),
            "article_product_type": graph[ARTICLE].product_type.numpy().astype(np.float64),
            "article_index_group": block_codes(ax, anames, "index_group_name").astype(np.float64),
        }
        popularity = sales_7 + sales_28 / (sales_28.max(initial=0) + 1)  # ties: the month's sales
        self.popular = _segment_top(popularity[None, :], config.popularity)[0]
        bands = len(AGE_BANDS) + 2
        self.band_sales = (
            np.bincount(self.age_band[customer[week]] * na + article[week], minlength=bands * na)
            .reshape(bands, na)
            .astype(np.float64)
        )
        self.band_top = _segment_top(
            self.band_sales + popularity / (popularity.max(initial=0) + 1), config.popularity_age
        )
        channel_sales = np.zeros((3, na))
        for code in (1, 2):
            chosen = week & (channel == code)
            channel_sales[code] = np.bincount(article[chosen], minlength=na)
        channel_sales[0] = sales_7  # no history: everyone's
        self.channel_sales = channel_sales
        self.channel_top = _segment_top(
            channel_sales + popularity / (popularity.max(initial=0) + 1), config.popularity_channel
        )
        self.popularity = popularity

        # Each attribute of ingest's (product type, colour, ...): the article's value code and
        # its one-hot matrix (articles, values).
        self.attributes: dict[str, tuple[np.ndarray, sparse.csr_matrix]] = {}
        for name in ARTICLE_FEATURES:
            code = block_codes(ax, anames, name)
            valued = np.flatnonzero(code >= 0)
            if len(valued):
                onehot = sparse.csr_matrix(
                    (np.ones(len(valued), np.float32), (valued, code[valued])), (na, int(code.max()) + 1)
                )
                self.attributes[name] = code, onehot

        # Item to item: of an article's buyers in the last four weeks, the share who bought another.
        recent_pairs = np.unique(keys[ago <= MONTH])
        together = sparse.csr_matrix(
            (np.ones(len(recent_pairs), np.float32), (recent_pairs // na, recent_pairs % na)), (nc, na)
        )
        buyers = np.asarray(together.sum(0)).ravel()
        co = (together.T @ together).tocsr()
        co.setdiag(0)
        co.eliminate_zeros()
        row, col, value, _ = _top_per_row(co, config.neighbours)
        share = value / np.maximum(buyers[row], 1)
        self.neighbours = sparse.csr_matrix((share.astype(np.float32), (row, col)), (na, na))

        # Colour variants: the other articles of the same product.
        product = graph[ARTICLE].product.numpy()
        order = np.argsort(product, kind="stable")
        start = np.searchsorted(product[order], product[order])
        end = np.searchsorted(product[order], product[order], side="right")
        size = end - start
        left = np.repeat(order, size)
        right = order[
            np.repeat(start, size) + (np.arange(size.sum()) - np.repeat(np.cumsum(size) - size, size))
        ]
        other = left != right
        self.siblings = sparse.csr_matrix(
            (np.ones(int(other.sum()), np.float32), (left[other], right[other])), (na, na)
        )

    def _pair(self, customers: np.ndarray, articles: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        keys = customers.astype(np.int64) * self.n_articles + articles
        at = np.searchsorted(self.pair_keys, keys).clip(max=max(len(self.pair_keys) - 1, 0))
        found = self.pair_keys[at] == keys if len(self.pair_keys) else np.zeros(len(keys), bool)
        count = np.where(found, self.pair_count[at] if len(self.pair_keys) else 0, 0.0)
        recency = np.where(found, self.pair_weight[at] if len(self.pair_keys) else 0, 0.0)
        since = np.where(found, self.cutoff - (self.pair_last[at] if len(self.pair_keys) else 0), np.nan)
        return count, recency, since

    def _generate(
        self, customers: np.ndarray, profile: sparse.csr_matrix
    ) -> Iterator[tuple[str, np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
        """(generator, row, article, score, rank) of each generator's proposals; ``profile``:
        the customers' rows of ``self.profile``."""
        c = self.config
        yield "repurchase", *_top_per_row(profile, c.repurchase)
        yield "co_purchase", *_top_per_row(profile @ self.neighbours, c.co_purchase)
        yield "same_product", *_top_per_row(profile @ self.siblings, c.same_product)
        rows = np.arange(len(customers))
        for name, tops, segment, values in (
            (
                "popularity",
                self.popular[None, :],
                np.zeros(len(customers), np.int64),
                self.popularity[None, :],
            ),
            ("popularity_age", self.band_top, self.age_band[customers], self.band_sales),
            ("popularity_channel", self.channel_top, self.channel[customers], self.channel_sales),
        ):
            chosen = tops[segment]
            width = chosen.shape[1]
            yield (
                name,
                np.repeat(rows, width),
                chosen.ravel(),
                values[np.repeat(segment, width), chosen.ravel()],
                np.tile(np.arange(width), len(customers)),
            )

    def block(self, customers: np.ndarray) -> CandidateBlock:
        """The candidates of ``customers`` (codes) and their features."""
        na = self.n_articles
        profile = self.profile[customers]
        proposals = list(self._generate(customers, profile))
        sage_rows = None
        if self.sage is not None:
            scores = self.sage.scores(torch.from_numpy(customers))
            top = torch.topk(scores, min(self.config.hm_sage, scores.shape[1]), dim=1)  # sorted
            sage_rows, width = scores, top.indices.shape[1]
            proposals.append(
                (
                    "hm_sage",
                    np.repeat(np.arange(len(customers)), width),
                    top.indices.cpu().numpy().ravel(),
                    top.values.cpu().numpy().ravel(),
                    np.tile(np.arange(width), len(customers)),
                )
            )
        keys = np.unique(
            np.concatenate([row.astype(np.int64) * na + article for _, row, article, _, _ in proposals])
        )
        rows, articles = keys // na, keys % na
        features = np.full((len(keys), len(FEATURES)), np.nan, np.float32)
        for name, row, article, score, rank in proposals:
            at = np.searchsorted(keys, row.astype(np.int64) * na + article)
            features[at, FEATURES.index(f"{name}_rank")] = rank + 1
            features[at, FEATURES.index(f"{name}_score")] = score
        column = FEATURES.index
        if sage_rows is not None:
            at = [torch.from_numpy(i).to(sage_rows.device) for i in (rows, articles)]
            features[:, column("sage_score")] = sage_rows[at[0], at[1]].cpu().numpy()
        who = customers[rows]
        count, recency, since = self._pair(who, articles)
        features[:, column("pair_purchases")] = count
        features[:, column("pair_recency")] = recency
        features[:, column("pair_days_since")] = since
        for name, values in self.article.items():
            features[:, column(name)] = values[articles]
        for name, values in self.customer.items():
            features[:, column(name)] = values[who]
        features[:, column("article_sales_7d_age_band")] = self.band_sales[self.age_band[who], articles]
        features[:, column("article_sales_7d_channel")] = self.channel_sales[self.channel[who], articles]
        features[:, column("price_ratio")] = (
            features[:, column("article_price")] / features[:, column("customer_price")]
        )
        # Affinity: the recency-weighted share of the customer's purchases that have the
        # article's value of an attribute, a taste no generator ranks by.
        total = np.asarray(profile.sum(1)).ravel()[rows]
        for name, (code, onehot) in self.attributes.items():
            share = (profile @ onehot).toarray()
            value = code[articles]
            found = np.where(value >= 0, share[rows, value.clip(min=0)], 0.0)
            features[:, column(f"affinity_{name}")] = np.where(
                total > 0, found / np.maximum(total, 1e-30), np.nan
            )
        return CandidateBlock(rows, articles, features)


class CandidateRecall:
    """The share of a window's distinct purchases (customer, article codes) that each
    generator's candidates and their union hold, and the candidates per customer, counted
    block by block as the candidates are built: the ceiling of any ranker over them."""

    def __init__(self, n_articles: int, bought: tuple[np.ndarray, np.ndarray]) -> None:
        self.n_articles = n_articles
        self.wanted = np.unique(bought[0].astype(np.int64) * n_articles + bought[1])
        self.hits = dict.fromkeys((*GENERATORS, "union"), 0)
        self.candidates = self.customers = 0

    def add(self, customers: np.ndarray, block: CandidateBlock) -> None:
        keys = customers[block.rows].astype(np.int64) * self.n_articles + block.articles
        found = np.isin(keys, self.wanted)
        self.hits["union"] += int(found.sum())
        for generator in GENERATORS:
            self.hits[generator] += int((found & block.generated_by(generator)).sum())
        self.candidates += len(keys)
        self.customers += len(customers)

    def result(self) -> dict[str, float]:
        recall = {f"recall_{name}": n / max(len(self.wanted), 1) for name, n in self.hits.items()}
        return recall | {"candidates_per_customer": self.candidates / max(self.customers, 1)}
