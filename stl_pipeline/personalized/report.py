"""``hm_report``'s table: every method on the validation and test windows."""

from datetime import date
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch_geometric.data import HeteroData

from stl_pipeline.personalized.evaluate import COLUMNS, evaluate, scorers
from stl_pipeline.personalized.files import TRUTH_DIR
from stl_pipeline.personalized.generate import load_truth
from stl_pipeline.personalized.model import load_model
from stl_pipeline.personalized.windows import make_window


def report_table(
    graph: HeteroData,
    record: dict,
    customers: pd.DataFrame,
    articles: pd.DataFrame,
    truth_dir: Path | None,
    device: torch.device,
    seed: int = 0,
) -> pd.DataFrame:
    """Every method on the validation and test windows: one row per (window, method)."""
    model = load_model(record, graph).to(device)
    truth = load_truth(truth_dir) if truth_dir is not None and (truth_dir / TRUTH_DIR).is_dir() else None
    start = date.fromisoformat(graph.info["start"])
    rows = []
    for name, key in (("val", "val_start_day"), ("test", "test_start_day")):
        window = make_window(graph, graph.info[key], graph.info["window_days"], torch.device("cpu"))
        methods = scorers(
            window,
            model,
            device,
            truth,
            pd.Index(customers["customer_id"]),
            pd.Index(articles["article_id"]),
            start,
        )
        for method, scorer in methods.items():
            metrics = evaluate(scorer, window, pairs=True, seed=seed).metrics
            rows.append({"window": name, "method": method, **{c: metrics.get(c, np.nan) for c in COLUMNS}})
    return pd.DataFrame(rows)
