"""Each query's (customer's) score of a challenger and of the champion, paired, on the
current held-out test split.

The champion is scored with its own weights on the current graph. When that graph was
rebuilt from other pairs, test scenes that the champion trained on are left out of both
scores, so the champion is not credited for remembering them; a champion whose layers do
not fit the current graph, or that has no snapshot here, cannot be scored, and the
decision says so.
"""

from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch_geometric.data import HeteroData

from stl_pipeline.champion.store import snapshot_record
from stl_pipeline.lineage import PAIRS_DIGEST, MismatchedInputError
from stl_pipeline.vectors import Embeddings

Paired = tuple[np.ndarray, np.ndarray | None, str]


def _snapshot(folder: Path | None) -> dict | str:
    """The champion's record, or why there is none to score."""
    if folder is None:
        return "no champion yet"
    if not (folder / "complete.json").is_file():
        return f"the champion (MLflow run {folder.name}) has no snapshot at {folder}"
    return snapshot_record(folder)


def stl_scores(
    task: str,
    metric: str,
    record: dict,
    champion: Path | None,
    graph: HeteroData,
    pairs: pd.DataFrame,
    queries: dict[str, Embeddings],
    context: Embeddings,
) -> Paired:
    """Per test query of ``task``, ``metric`` over the same-category pool."""
    from stl_pipeline.evaluation.report import vector_methods
    from stl_pipeline.evaluation.retrieval import RetrievalTask, per_query
    from stl_pipeline.graph.store import load_graph
    from stl_pipeline.models.splits import split_queries

    split_q, split_rows = split_queries(graph, pairs, queries, "test", context)
    test, rows = split_q[task], split_rows[task]
    no_auc = torch.empty((len(test.product), 0), dtype=torch.long)
    truth = RetrievalTask(test.product, graph["product"].category, no_auc)

    def values(model: dict, same_graph: bool) -> np.ndarray:
        methods = vector_methods(graph, model["query_dim"], {"model": model}, context, check_graph=same_graph)
        return per_query(methods["model"].scores(task, test), truth, "same_category")[metric]

    ours = values(record, True)
    found = _snapshot(champion)
    if isinstance(found, str):
        return ours, None, found
    same = found.get(PAIRS_DIGEST) == getattr(graph, "info", {}).get(PAIRS_DIGEST)
    keep = np.ones(len(rows), dtype=bool)
    if not same:
        old, _ = load_graph(Path(champion) / "graph.safetensors")
        trained = {s for s, t in zip(old["scene"].ids, old["scene"].train_mask.tolist(), strict=True) if t}
        keep = ~rows["scene"].isin(trained).to_numpy()
    try:
        theirs = values(found, same)
    except (RuntimeError, KeyError, ValueError) as error:  # layers of another shape, other tokens
        return ours, None, f"the champion cannot be scored on the current graph ({str(error)[:200]})"
    return ours[keep], theirs[keep], ""


def hm_scores(record: dict, champion: Path | None, graph: HeteroData) -> Paired:
    """Per customer who bought in the test week, MAP@12 of the top-12 list."""
    from stl_pipeline.personalized.evaluate import evaluate
    from stl_pipeline.personalized.ranker import scorer_for
    from stl_pipeline.personalized.windows import make_window

    window = make_window(graph, graph.info["test_start_day"], graph.info["window_days"], torch.device("cpu"))

    def values(model: dict) -> np.ndarray:
        scorer = scorer_for(model, graph, window.start, torch.device("cpu"))
        return evaluate(scorer, window).per_customer["MAP@12"]

    ours = values(record)
    found = _snapshot(champion)
    if isinstance(found, str):
        return ours, None, found
    try:
        return ours, values(found), ""
    except (MismatchedInputError, RuntimeError, KeyError, ValueError) as error:  # other customers, features
        return ours, None, f"the champion cannot be scored on the current hm_graph ({str(error)[:200]})"


def product_vectors(record: dict, graph: HeteroData) -> np.ndarray:
    """(P, d) a model's product vectors over the graph it was trained on, as served."""
    from stl_pipeline.device import deterministic
    from stl_pipeline.models.record import load_model

    with torch.no_grad(), deterministic():
        return load_model(record).products(graph).numpy()
