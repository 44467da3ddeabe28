"""``hm_report``'s tables: every method on the validation and test windows, each against the
window's best heuristic, and what the ranker's candidates could reach."""

from datetime import date
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch_geometric.data import HeteroData

from stl_pipeline.personalized.candidates import CandidateRecall
from stl_pipeline.personalized.evaluate import (
    COLUMNS,
    GAIN,
    HEURISTICS,
    MODELS,
    K,
    baselines,
    evaluate,
    paired_gain,
)
from stl_pipeline.personalized.files import TRUTH_DIR
from stl_pipeline.personalized.generate import load_truth
from stl_pipeline.personalized.graph import ARTICLE
from stl_pipeline.personalized.ranker import RankerScorer, scorer_for
from stl_pipeline.personalized.windows import make_window

Z95 = 1.96


def report_table(
    graph: HeteroData,
    records: dict[str, dict],
    customers: pd.DataFrame,
    articles: pd.DataFrame,
    truth_dir: Path | None,
    device: torch.device,
    seed: int = 0,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """One row per (window, method) of the models in ``records`` (method -> record), the
    heuristics and the oracle where the truth is known; and the candidate recall per window."""
    truth = load_truth(truth_dir) if truth_dir is not None and (truth_dir / TRUTH_DIR).is_dir() else None
    start = date.fromisoformat(graph.info["start"])
    rows, recall = [], []
    for name, key in (("val", "val_start_day"), ("test", "test_start_day")):
        # One snapshot for every method, and one model's scorer alive at a time: at the
        # release's size each is gigabytes.
        window = make_window(graph, graph.info[key], graph.info["window_days"], torch.device("cpu"))
        bought = (window.customers.numpy(), window.articles.numpy())
        results = {}
        for method in (m for m in MODELS if m in records):
            scorer = scorer_for(records[method], graph, window.start, device, window.snap)
            if isinstance(scorer, RankerScorer):
                scorer.recall = CandidateRecall(int(graph[ARTICLE].num_nodes), bought)
            results[method] = evaluate(scorer, window, pairs=True, seed=seed)
            if isinstance(scorer, RankerScorer):
                recall.append({"window": name, **scorer.recall.result()})
            del scorer
        heuristics = baselines(
            window, truth, pd.Index(customers["customer_id"]), pd.Index(articles["article_id"]), start
        )
        results |= {m: evaluate(scorer, window, pairs=True, seed=seed) for m, scorer in heuristics.items()}
        best = max(HEURISTICS, key=lambda m: results[m].metrics[f"MAP@{K}"])
        for method, result in results.items():
            gain, error = paired_gain(result.per_customer[f"MAP@{K}"], results[best].per_customer[f"MAP@{K}"])
            metrics = result.metrics | dict(
                zip(GAIN, (gain, gain - Z95 * error, gain + Z95 * error), strict=True)
            )
            rows.append({"window": name, "method": method, **{c: metrics.get(c, np.nan) for c in COLUMNS}})
    return pd.DataFrame(rows), pd.DataFrame(recall)
