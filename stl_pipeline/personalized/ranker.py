"""The ranker's second stage: LightGBM over each customer's candidates (candidates.py).

It learns on the ``train_weeks`` weeks before validation: for a week from day ``t``, the
candidates and their features come from the purchases before ``t`` and the labels from the
week's own purchases, so a feature never sees the week it predicts. Customers whose
candidates hold none of their purchases teach a ranker nothing and are left out. Boosting
stops when validation MAP@12 (the validation week, from its own snapshot) stops improving.

The GraphSAGE model (hm_sage_model) is a generator and a feature: its record travels inside
the ranker's, so a served ranker scores with exactly the GNN it was trained with.
"""

import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd
import torch
from torch_geometric.data import HeteroData

from stl_pipeline.personalized.candidates import CATEGORICAL, FEATURES, CandidateRecall, Candidates
from stl_pipeline.personalized.config import RankerConfig
from stl_pipeline.personalized.evaluate import FilledScorer, K, SageScorer, Scorer, evaluate
from stl_pipeline.personalized.graph import Snapshot, snapshot, window_purchases
from stl_pipeline.personalized.model import load_model
from stl_pipeline.personalized.windows import make_window

CHUNK = 2048  # customers whose candidates are built at once


def _threads() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def candidates_at(
    graph: HeteroData,
    record: dict,
    cutoff: int,
    config: RankerConfig,
    device: torch.device,
    snap: Snapshot | None = None,
) -> Candidates:
    """The candidates of day ``cutoff``, the GNN of the hm_sage ``record`` among the generators;
    ``snap``: the snapshot at ``cutoff`` where the caller has it (at the release's size one is
    gigabytes)."""
    model = load_model(record, graph).to(device)
    snap = snapshot(graph, cutoff) if snap is None else snap
    return Candidates(graph, cutoff, config, SageScorer(model, snap.to(device)))


@dataclass
class Rows:
    """A week's labelled candidates, grouped by customer in order."""

    features: np.ndarray
    labels: np.ndarray
    groups: np.ndarray  # candidates per customer

    @staticmethod
    def join(parts: list["Rows"]) -> "Rows":
        return Rows(
            *(np.concatenate([getattr(p, k) for p in parts]) for k in ("features", "labels", "groups"))
        )


def week_rows(
    graph: HeteroData, candidates: Candidates, start: int, days: int, limit: int, rng: np.random.Generator
) -> Rows:
    """The candidates of (a sample of ``limit``) customers who bought in the week from day
    ``start``, labelled with the week's purchases; customers without a labelled one dropped."""
    bought_c, bought_a = window_purchases(graph, start, days)
    na = candidates.n_articles
    wanted = bought_c.astype(np.int64) * na + bought_a
    buyers = np.unique(bought_c)
    if len(buyers) > limit:
        buyers = np.sort(rng.choice(buyers, limit, replace=False))
    parts = []
    for lo in range(0, len(buyers), CHUNK):
        part = buyers[lo : lo + CHUNK]
        block = candidates.block(part)
        label = np.isin(part[block.rows].astype(np.int64) * na + block.articles, wanted)
        keep = np.isin(block.rows, block.rows[label])
        parts.append(
            Rows(block.features[keep], label[keep], np.unique(block.rows[keep], return_counts=True)[1])
        )
    return (
        Rows.join(parts)
        if parts
        else Rows(np.empty((0, len(FEATURES)), np.float32), np.empty(0), np.empty(0))
    )


def _dataset(rows: Rows, reference=None):
    import lightgbm as lgb

    return lgb.Dataset(
        rows.features,
        rows.labels.astype(np.float32),
        group=rows.groups,
        feature_name=list(FEATURES),
        categorical_feature=list(CATEGORICAL),
        reference=reference,
        free_raw_data=True,
    )


@dataclass
class RankerResult:
    booster: str  # LightGBM's text model
    best_iteration: int
    best_val_map: float
    history: list[dict[str, float]]
    importance: dict[str, float]  # total gain per feature, as shares
    training_rows: int
    seconds: float


def train_ranker(
    graph: HeteroData,
    sage_record: dict,
    config: RankerConfig,
    device: torch.device,
    on_round: Callable[[int, dict[str, float]], None] | None = None,
) -> RankerResult:
    import lightgbm as lgb

    began = time.perf_counter()
    info, days = graph.info, graph.info["window_days"]
    val_start = info["val_start_day"]
    starts = [val_start - days * (i + 1) for i in range(config.train_weeks) if val_start - days * (i + 1) > 0]
    if not starts:
        raise ValueError(
            f"no training week before the validation window (day {val_start}); need a longer history"
        )
    rng = np.random.default_rng(config.seed)
    weeks = [
        week_rows(
            graph, candidates_at(graph, sage_record, s, config, device), s, days, config.max_customers, rng
        )
        for s in starts
    ]
    train = Rows.join(weeks)
    if not len(train.labels):
        raise ValueError("no training customer has a purchase among the candidates: nothing to learn from")
    validation_candidates = candidates_at(graph, sage_record, val_start, config, device)
    validation = week_rows(graph, validation_candidates, val_start, days, config.max_customers, rng)
    params = {
        "objective": config.objective,
        "metric": "map",
        "eval_at": [K],
        "learning_rate": config.learning_rate,
        "num_leaves": config.num_leaves,
        "min_data_in_leaf": config.min_data_in_leaf,
        "feature_fraction": config.feature_fraction,
        "bagging_fraction": 0.8,
        "bagging_freq": 1,
        "seed": config.seed,
        "deterministic": True,
        "force_row_wise": True,
        "num_threads": _threads(),
        "verbose": -1,
    }
    train_set = _dataset(train)
    valid_set = _dataset(validation, train_set)
    history: list[dict[str, float]] = []

    def record(env) -> None:
        value = {"epoch": env.iteration + 1} | {
            f"{name}_map@{K}": score for name, _, score, _ in env.evaluation_result_list
        }
        history.append(value)
        if on_round is not None:
            on_round(env.iteration + 1, value)

    booster = lgb.train(
        params,
        train_set,
        num_boost_round=config.rounds,
        valid_sets=[train_set, valid_set],
        valid_names=["train", "val"],
        callbacks=[lgb.early_stopping(config.patience, first_metric_only=True, verbose=False), record],
    )
    text = booster.model_to_string(num_iteration=booster.best_iteration)
    gain = booster.feature_importance("gain", iteration=booster.best_iteration)
    scorer = RankerScorer(lgb.Booster(model_str=text), validation_candidates)
    window = make_window(graph, val_start, days, torch.device("cpu"))
    return RankerResult(
        booster=text,
        best_iteration=int(booster.best_iteration),
        best_val_map=evaluate(scorer, window).metrics[f"MAP@{K}"],
        history=history,
        importance={name: float(g / max(gain.sum(), 1e-12)) for name, g in zip(FEATURES, gain, strict=True)},
        training_rows=len(train.labels),
        seconds=time.perf_counter() - began,
    )


class RankerScorer(FilledScorer):
    """The ranker's scores over each customer's candidates, above last week's best sellers,
    which fill a list that has fewer than ``K`` candidates (and score every other article).
    With ``recall`` set, it counts the candidates' recall as it builds them."""

    def __init__(self, booster, candidates: Candidates) -> None:
        popularity = candidates.popularity.astype(np.float32)
        self.fill = popularity / (popularity.max() + 1)
        self.booster, self.candidates = booster, candidates
        self.recall: CandidateRecall | None = None

    def entries(self, customers: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        block = self.candidates.block(customers)
        if self.recall is not None:
            self.recall.add(customers, block)
        if not len(block.rows):
            return super().entries(customers)
        raw = self.booster.predict(block.features, num_threads=_threads())
        return (
            block.rows.astype(np.int64),
            block.articles.astype(np.int64),
            (raw - raw.min() + 2).astype(np.float32),
        )


def ranker_record(
    result: RankerResult, graph: HeteroData, config: RankerConfig, sage: dict, run_id: str
) -> dict:
    """What ``hm_ranker_model`` stores: the booster as text, the GNN's record, the config and the
    graph it fits; loadable weights-only."""
    return {
        "kind": "hm_ranker",
        "booster": result.booster,
        "sage": sage,
        "config": asdict(config),
        "features": list(FEATURES),
        "graph": dict(sage["graph"]),
        "best_epoch": result.best_iteration,
        "best_val_map": result.best_val_map,
        "importance": result.importance,
        "mlflow_run_id": run_id,
    }


def scorer_for(
    record: dict, graph: HeteroData, cutoff: int, device: torch.device, snap: Snapshot | None = None
) -> Scorer:
    """The scorer of a group's model record (``hm_sage`` or ``hm_ranker``) at day ``cutoff``
    (``snap``: the snapshot at that day, where the caller has it)."""
    if record.get("kind") == "hm_ranker":
        import lightgbm as lgb

        if record["features"] != list(FEATURES):
            raise ValueError("hm_ranker_model was trained on other features; rematerialize hm_ranker_model")
        config = RankerConfig(**record["config"])
        return RankerScorer(
            lgb.Booster(model_str=record["booster"]),
            candidates_at(graph, record["sage"], cutoff, config, device, snap),
        )
    snap = snapshot(graph, cutoff) if snap is None else snap
    return SageScorer(load_model(record, graph).to(device), snap.to(device))


def importance_table(importance: dict[str, float], top: int = 15) -> pd.DataFrame:
    frame = pd.DataFrame({"feature": list(importance), "gain_share": list(importance.values())})
    return frame.sort_values("gain_share", ascending=False).head(top).reset_index(drop=True)
