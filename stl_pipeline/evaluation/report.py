"""The retrieval report: every method on every task, candidate pool and metric.

Methods score (queries x products); the ranking protocol is the same for all:
random, popularity within category, the frozen backbone's cosine kNN, the
trained models (cosine plus their fitted popularity prior), and, when the
generator's ground truth is at hand, an oracle that ranks by the true latent
style (the ceiling).
"""

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from torch_geometric.data import HeteroData

from stl_pipeline.evaluation.retrieval import POOLS, RetrievalTask, per_query, sample_auc_negatives, summary
from stl_pipeline.lineage import require_trained_on
from stl_pipeline.metrics import bootstrap
from stl_pipeline.models.queries import Queries
from stl_pipeline.models.recommender import TASKS
from stl_pipeline.models.record import load_model, require_context
from stl_pipeline.vectors import Embeddings

# (task, queries, the pairs they come from) -> (Q, P) scores
Scorer = Callable[[str, Queries, pd.DataFrame], torch.Tensor]
OF_ORACLE = "of_oracle_HR@10"
# The share of the room between popularity and the oracle a method recovers on HR@10.
RECOVERED = "recovered_HR@10"
# What a model must beat to have earned its graph: the methods that rank without one.
NO_GRAPH = ("popularity", "frozen_knn", "triplet_head", "two_tower")
# HR@10's lead over the method without a graph that it leads least surely, paired per query.
MARGIN = "margin_HR@10"
MARGIN_COLUMNS = (MARGIN, f"{MARGIN}_low", f"{MARGIN}_high")
QueryFn = Callable[[str, Queries], torch.Tensor]


def random_scorer(products: int, seed: int = 0) -> Scorer:
    def score(task: str, queries: Queries, rows: pd.DataFrame) -> torch.Tensor:
        generator = torch.Generator().manual_seed(seed)
        return torch.rand(len(queries.product), products, generator=generator)

    return score


def popularity_scorer(popularity: torch.Tensor, seed: int = 0) -> Scorer:
    """Train popularity; ties are broken at random, never in the true product's favour by index."""

    def score(task: str, queries: Queries, rows: pd.DataFrame) -> torch.Tensor:
        generator = torch.Generator().manual_seed(seed)
        noise = torch.rand(len(queries.product), len(popularity), generator=generator) * 1e-3
        return popularity.float()[None, :] + noise

    return score


@dataclass
class VectorMethod:
    """Product vectors, the query projection, and per task the popularity bias each product's
    score gets (zeros for the frozen backbone and for models without a prior)."""

    products: torch.Tensor  # (P, d)
    queries: QueryFn
    bias: dict[str, torch.Tensor]  # task -> (P,)

    def scores(self, task: str, queries: Queries) -> torch.Tensor:
        """(Q, P) what the method ranks the catalogue by for ``queries`` of ``task``."""
        with torch.no_grad():
            return self.queries(task, queries) @ self.products.T + self.bias[task]


def vector_scorer(method: VectorMethod) -> Scorer:
    def score(task: str, queries: Queries, rows: pd.DataFrame) -> torch.Tensor:
        return method.scores(task, queries)

    return score


def oracle_scorer(
    product_style: torch.Tensor, scene_style: dict[str, int], popularity: torch.Tensor
) -> Scorer:
    """1 for products of the scene's true style, plus popularity (under 0.5) to order them."""
    tiebreak = popularity.float() / (popularity.max().float() + 1) * 0.5

    def score(task: str, queries: Queries, rows: pd.DataFrame) -> torch.Tensor:
        style = torch.tensor([scene_style.get(s, -1) for s in rows["scene"]])
        return (product_style[None, :] == style[:, None]).float() + tiebreak[None, :]

    return score


def vector_methods(
    graph: HeteroData,
    visual_dim: int,
    records: dict[str, dict],
    context: Embeddings,
    check_graph: bool = True,
) -> dict[str, VectorMethod]:
    """Frozen kNN and each trained model, as vectors and popularity biases; refuses a model
    whose CTL queries attended over other context tokens than ``context``, and, unless
    ``check_graph`` is off (the champion's comparison, which leaves out what it trained on),
    one trained on another graph."""
    frozen = graph["product"].x[:, :visual_dim]
    none = {task: torch.zeros(len(frozen)) for task in TASKS}
    methods = {"frozen_knn": VectorMethod(frozen, lambda task, queries: queries.x, none)}
    for method, record in records.items():
        if check_graph:
            require_trained_on(method, record, getattr(graph, "info", {}))
        require_context(method, record, context)
        model = load_model(record)
        with torch.no_grad():
            products = model.products(graph)
            bias = {task: model.popularity_bias(graph, task) for task in TASKS}
        methods[method] = VectorMethod(
            products,
            lambda task, queries, model=model, products=products: model.encode(
                queries, task, products, graph
            ),
            bias,
        )
    return methods


def retrieval_task(
    graph: HeteroData, all_pairs: pd.DataFrame, rows: pd.DataFrame, queries: Queries, seed: int = 0
) -> RetrievalTask:
    """The AUC negatives of each query: same-category products absent from its scene."""
    position = {p: i for i, p in enumerate(graph["product"].ids)}
    scenes = all_pairs[all_pairs["scene"].isin(set(rows["scene"]))]
    members = scenes.groupby("scene")["product"].agg(lambda s: {position[p] for p in s if p in position})
    category = graph["product"].category.cpu()
    negatives = sample_auc_negatives(
        queries.product.cpu(), category, [members[s] for s in rows["scene"]], seed=seed
    )
    return RetrievalTask(queries.product.cpu(), category, negatives)


def query_contexts(task: str, rows: pd.DataFrame, all_pairs: pd.DataFrame) -> dict[str, np.ndarray]:
    """The queries each report row is over: ``all``; for Complete the Look also those whose
    scene has other annotated garments (``annotated``) and those with only the image around
    the box to go on (``image_only``, Kang et al.'s setting and most of the release's)."""
    everything = np.ones(len(rows), dtype=bool)
    if task != "ctl":
        return {"all": everything}
    annotated = rows["scene"].map(all_pairs.groupby("scene").size()).fillna(1).to_numpy() > 1
    subsets = {"all": everything, "annotated": annotated, "image_only": ~annotated}
    return {name: mask for name, mask in subsets.items() if mask.any()}


def _subset(task: RetrievalTask, mask: np.ndarray) -> RetrievalTask:
    keep = torch.from_numpy(mask)
    return RetrievalTask(task.truth[keep], task.category, task.auc_negatives[keep])


def report(
    methods: dict[str, Scorer],
    graph: HeteroData,
    all_pairs: pd.DataFrame,
    split_queries: dict[str, dict[str, Queries]],
    split_rows: dict[str, dict[str, pd.DataFrame]],
) -> pd.DataFrame:
    """One row per (split, method, task, context, pool) with every metric; ``context`` is
    ``all`` but for the Complete-the-Look rows of ``query_contexts``."""
    rows, hits = [], {}
    for split, by_task in split_queries.items():
        for task, queries in by_task.items():
            pairs = split_rows[split][task]
            evaluation = retrieval_task(graph, all_pairs, pairs, queries)
            contexts = query_contexts(task, pairs, all_pairs)
            for method, scorer in methods.items():
                scores = scorer(task, queries, pairs).cpu().float()
                for context, mask in contexts.items():
                    subset = evaluation if context == "all" else _subset(evaluation, mask)
                    chosen = scores if context == "all" else scores[torch.from_numpy(mask)]
                    key = {"split": split, "method": method, "task": task, "context": context}
                    for pool in POOLS:
                        values = per_query(chosen, subset, pool)
                        hits.setdefault((split, task, context, pool), {})[method] = values["HR@10"]
                        rows.append(key | {"pool": pool, "queries": int(mask.sum())} | summary(values))
    margins = _margins(hits)
    table = pd.DataFrame([row | margins.get(_key(row), {}) for row in rows])
    if "oracle" in methods:
        group = ["split", "task", "context", "pool"]
        index = pd.MultiIndex.from_frame(table[group])

        def of(method: str) -> np.ndarray:
            return table[table["method"] == method].set_index(group)["HR@10"].reindex(index).to_numpy()

        ceiling = of("oracle")
        table[OF_ORACLE] = table["HR@10"] / ceiling
        if "popularity" in methods:
            floor = of("popularity")
            table[RECOVERED] = (table["HR@10"] - floor) / (ceiling - floor)
    return table


def _key(row: dict) -> tuple:
    return row["split"], row["task"], row["context"], row["pool"], row["method"]


def _margins(hits: dict[tuple, dict[str, np.ndarray]]) -> dict[tuple, dict]:
    """Per report row, HR@10's lead over the method without a graph whose lead is least sure
    (the lowest lower bound), with its 95% interval and that method's name. The difference is
    taken per query before resampling: both methods ranked the same queries, so which scenes
    were held out (the luck that two separate intervals each carry) cancels, and a real lead
    shows where separate intervals would still overlap."""
    found = {}
    for group, by_method in hits.items():
        for method, mine in by_method.items():
            leads = []
            for other in NO_GRAPH:
                if other != method and other in by_method:
                    difference = mine - by_method[other]
                    leads.append((*bootstrap(difference), float(difference.mean()), other))
            if leads:
                low, high, lead, other = min(leads)
                found[(*group, method)] = {
                    MARGIN: lead,
                    f"{MARGIN}_low": low,
                    f"{MARGIN}_high": high,
                    "margin_over": other,
                }
    return found


def lead_text(rows: pd.DataFrame) -> list[str]:
    """Each row's paired lead as people read it: the lead, its interval, over which method."""
    return [
        f"{v:+.3f} ({lo:+.3f} to {hi:+.3f}) over {other}" if isinstance(other, str) else ""
        for v, lo, hi, other in zip(*(rows[c] for c in MARGIN_COLUMNS), rows["margin_over"], strict=True)
    ]


def overall(table: pd.DataFrame) -> pd.DataFrame:
    """The report's rows over all of a task's queries (``context`` ``all``): what gates,
    galleries and comparisons read."""
    return table[table["context"] == "all"]


def shown(table: pd.DataFrame, split: str = "test", pool: str = "same_category") -> pd.DataFrame:
    """The rows people read first: HR@10 and MRR with their 95% intervals, AUC, the share of
    the oracle."""
    rows = table[(table["split"] == split) & (table["pool"] == pool)]
    out = rows[["method", "task", "context", "queries"]].copy()
    for metric in ("HR@10", "MRR"):
        low, high = rows[f"{metric}_low"], rows[f"{metric}_high"]
        out[f"{metric} (95% CI)"] = [
            f"{v:.3f} ({lo:.3f}-{hi:.3f})" for v, lo, hi in zip(rows[metric], low, high, strict=True)
        ]
    out["AUC"] = rows["AUC"].round(3)
    if MARGIN in rows:
        out["lead over no graph (95% CI)"] = lead_text(rows)
    for column in (OF_ORACLE, RECOVERED):
        if column in rows:
            out[column] = rows[column].round(3)
    return out.reset_index(drop=True)
