"""The weeks a model learns from and is scored on: a window's snapshot, its purchases and the
negatives drawn for it, and the checks that no later purchase reaches an earlier window's
snapshot or the ranker's features."""

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import torch
from torch_geometric.data import HeteroData

from stl_pipeline.personalized.graph import (
    ARTICLE,
    ARTICLE_DYNAMIC,
    BUYS,
    CUSTOMER,
    CUSTOMER_DYNAMIC,
    RECENT_DAYS,
    Snapshot,
    snapshot,
    window_purchases,
)

if TYPE_CHECKING:
    from stl_pipeline.personalized.config import RankerConfig


class NegativeSampler:
    """Negatives for the week from day ``start``: uniform over articles on sale by the week's
    end (first sold before it, or launched in it), and hard ones of a positive's product type
    among the articles that sold in the ``live_days`` before ``start`` (what a customer was
    choosing between). No article first sold after the week is ever drawn."""

    def __init__(self, graph: HeteroData, start: int, days: int, live_days: int) -> None:
        time, article = graph[BUYS].time, graph[BUYS].edge_index[1]

        def bought(since: int, until: int) -> torch.Tensor:
            lo, hi = (
                int(torch.searchsorted(time, torch.tensor(d, dtype=time.dtype))) for d in (since, until)
            )
            return torch.unique(article[lo:hi])

        self.eligible = bought(0, start + days)
        live = bought(start - live_days, start) if live_days else self.eligible
        types = graph[ARTICLE].product_type[live]
        order = torch.argsort(types, stable=True)
        self.live, self.types = live[order], types[order]
        n_types = int(graph[ARTICLE].product_type.max()) + 1
        self.start = torch.searchsorted(self.types, torch.arange(n_types))
        self.end = torch.searchsorted(self.types, torch.arange(n_types), right=True)

    def uniform(self, count: int, generator: torch.Generator) -> torch.Tensor:
        return self.eligible[torch.randint(len(self.eligible), (count,), generator=generator)]

    def distinct(self, count: int, generator: torch.Generator) -> torch.Tensor:
        """``count`` different articles on sale (all of them when fewer are)."""
        return self.eligible[torch.randperm(len(self.eligible), generator=generator)[:count]]

    def same_type(
        self, articles: torch.Tensor, product_type: torch.Tensor, generator: torch.Generator
    ) -> torch.Tensor:
        kind = product_type[articles]
        lo, hi = self.start[kind], self.end[kind]
        size = (hi - lo).clamp(min=1)
        pick = (lo + (torch.rand(len(articles), generator=generator) * size).long()).clamp(
            max=len(self.live) - 1
        )
        if not len(self.live):
            return self.uniform(len(articles), generator)
        return torch.where(hi > lo, self.live[pick], self.uniform(len(articles), generator))


@dataclass
class Window:
    """A week to learn from or score: its snapshot, its purchases, its negative sampler."""

    start: int
    days: int
    snap: Snapshot
    customers: torch.Tensor  # distinct (customer, article) purchases in the week
    articles: torch.Tensor
    negatives: NegativeSampler


def make_window(
    graph: HeteroData, start: int, days: int, device: torch.device, live_days: int = 28
) -> Window:
    customers, articles = window_purchases(graph, start, days)
    return Window(
        start,
        days,
        snapshot(graph, start).to(device),
        torch.from_numpy(customers).to(device),
        torch.from_numpy(articles).to(device),
        NegativeSampler(graph, start, days, live_days),
    )


def temporal_violations(graph: HeteroData, transactions: pd.DataFrame, weeks: int = 12) -> list[str]:
    """What a window could see of its own or later purchases: for the test and validation
    windows and up to ``weeks`` training weeks before them, the snapshot's edges must all
    precede the window, its sales and purchase counts must equal those recounted from the
    table's earlier rows, and its negatives must be on sale by the window's end."""
    problems = []
    info = graph.info
    time = graph[BUYS].time
    if len(time) != len(transactions):
        problems.append(f"the graph has {len(time)} purchases, hm_transactions {len(transactions)}")
    if len(time) and bool((time[1:] < time[:-1]).any()):
        problems.append("purchase edges are not sorted by day: a snapshot would not be a prefix")
    start = pd.Timestamp(info["start"])
    day = ((transactions["t_dat"] - start) // pd.Timedelta(days=1)).to_numpy()
    customers = transactions["customer_id"].cat.codes.to_numpy()
    articles = transactions["article_id"].cat.codes.to_numpy()
    test, val, days = info["test_start_day"], info["val_start_day"], info["window_days"]
    for cutoff in [test, val, *(val - days * i for i in range(1, weeks + 1) if val - days * i > 0)]:
        snap = snapshot(graph, cutoff, adjacency=False)
        if snap.edges and int(snap.time.max()) >= cutoff:
            problems.append(f"the snapshot for day {cutoff} holds a purchase of day {int(snap.time.max())}")
        before = day < cutoff
        sales = np.log1p(np.bincount(articles[before], minlength=snap.articles)).astype(np.float32)
        bought = np.log1p(np.bincount(customers[before], minlength=snap.x[CUSTOMER].shape[0])).astype(
            np.float32
        )
        dynamic_article = snap.x[ARTICLE][:, -len(ARTICLE_DYNAMIC) :]
        dynamic_customer = snap.x[CUSTOMER][:, -len(CUSTOMER_DYNAMIC) :]
        sales_all, purchases_all = ARTICLE_DYNAMIC.index("sales_all"), CUSTOMER_DYNAMIC.index("purchases_all")
        if not np.allclose(dynamic_article[:, sales_all].numpy(), sales, atol=1e-5):
            problems.append(f"article sales features for day {cutoff} count purchases not before it")
        if not np.allclose(dynamic_customer[:, purchases_all].numpy(), bought, atol=1e-5):
            problems.append(f"customer purchase counts for day {cutoff} count purchases not before it")
        on_sale = np.unique(articles[day < cutoff + days])
        sampler = NegativeSampler(graph, cutoff, days, RECENT_DAYS[1])
        drawn = torch.cat([sampler.eligible, sampler.live]).numpy()
        if not np.isin(drawn, on_sale).all():
            problems.append(f"negatives for the week from day {cutoff} include articles first sold after it")
    return problems


def feature_violations(
    graph: HeteroData, transactions: pd.DataFrame, config: "RankerConfig", sample: int = 2_000
) -> list[str]:
    """What the ranker's candidates could see of their own week: for its earliest training week
    and for validation, a sample of the week's customers' candidates must carry the pair,
    customer and article counts and the customer's product-type affinity recounted from the
    table's rows before the week."""
    from stl_pipeline.personalized.candidates import FEATURES, RECENCY_DAYS, WEEK, Candidates, block_codes

    info, days = graph.info, graph.info["window_days"]
    day = ((transactions["t_dat"] - pd.Timestamp(info["start"])) // pd.Timedelta(days=1)).to_numpy()
    customers = transactions["customer_id"].cat.codes.to_numpy()
    articles = transactions["article_id"].cat.codes.to_numpy()
    rng = np.random.default_rng(0)
    problems = []
    earliest = info["val_start_day"] - days * config.train_weeks
    for cutoff in [c for c in (earliest, info["val_start_day"]) if c > 0]:
        buyers = np.unique(customers[(day >= cutoff) & (day < cutoff + days)])
        chosen = np.sort(rng.choice(buyers, min(sample, len(buyers)), replace=False))
        block = Candidates(graph, cutoff, config).block(chosen)  # the GNN's score is no count
        who, what = chosen[block.rows], block.articles
        before = pd.DataFrame({"c": customers, "a": articles, "d": day})[day < cutoff]
        pair = (
            before.groupby(["c", "a"])["d"]
            .agg(["size", "max"])
            .reindex(pd.MultiIndex.from_arrays([who, what]))
        )
        customer = before.groupby("c")["d"].agg(["size", "max"]).reindex(who)
        article = before.groupby("a")["d"].agg(["size", "min"]).reindex(what)
        week = before[before["d"] >= cutoff - WEEK].groupby("a").size().reindex(what)
        kind = block_codes(graph[ARTICLE].x, info["article_features"], "product_type_name")
        weighted = before.assign(w=np.exp(-(cutoff - before["d"]) / RECENCY_DAYS), v=kind[before["a"]])
        kind_weight = weighted.groupby(["c", "v"])["w"].sum()
        kind_weight = kind_weight.reindex(pd.MultiIndex.from_arrays([who, kind[what]])).fillna(0)
        customer_weight = weighted.groupby("c")["w"].sum().reindex(who)
        expected = {
            "pair_purchases": pair["size"].fillna(0),
            "pair_days_since": cutoff - pair["max"],
            "customer_purchases_all": customer["size"].fillna(0),
            "customer_days_since_last": cutoff - customer["max"],
            "article_sales_all": article["size"].fillna(0),
            "article_sales_7d": week.fillna(0),
            "article_days_since_first_sale": cutoff - article["min"],
            "affinity_product_type_name": kind_weight.to_numpy() / customer_weight.to_numpy(),
        }
        for name, values in expected.items():
            found = block.features[:, FEATURES.index(name)].astype(np.float64)
            if not np.allclose(found, np.asarray(values, np.float64), rtol=1e-4, equal_nan=True):
                problems.append(
                    f"the ranker's {name} for the week from day {cutoff} counts purchases not before it"
                )
    return problems
