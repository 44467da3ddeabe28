"""Asset ``retrieval_report`` (group ``evaluation``) and the quality gates on it and on the models."""

import json
from pathlib import Path

import dagster as dg
import pandas as pd
import torch
from torch_geometric.data import HeteroData

from stl_pipeline.evaluation.report import (
    METRICS,
    cosine_scorer,
    oracle_scorer,
    popularity_scorer,
    random_scorer,
    report,
)
from stl_pipeline.evaluation.retrieval import POOLS
from stl_pipeline.generate import STYLES_FILE
from stl_pipeline.reporting import markdown
from stl_pipeline.resources import QualityGate, StlFiles
from stl_pipeline.training.data import split_queries
from stl_pipeline.training.models import load_model
from stl_pipeline.vectors import Embeddings

MODELS = {"gat": "gat_model", "sage": "sage_model"}
BASELINES = ("random", "popularity", "frozen_knn")


def _gnn_scorer(record: dict, graph: HeteroData):
    model = load_model(record)
    with torch.no_grad():
        products = model.products(graph)
    return cosine_scorer(products, lambda task, x: model.queries(x, task))


def _oracle(stl_files: StlFiles, graph: HeteroData, popularity: torch.Tensor):
    """The generator's ground truth, when the raw files came from it."""
    path = Path(stl_files.pairs_path).parent / STYLES_FILE
    if not path.is_file():
        return None
    truth = json.loads(path.read_text())
    product_style = torch.tensor([truth["products"].get(p, -2) for p in graph["product"].ids])
    return oracle_scorer(product_style, truth["scenes"], popularity)


@dg.asset(group_name="evaluation")
def retrieval_report(
    context: dg.AssetExecutionContext,
    stl_graph: HeteroData,
    stl_pairs: pd.DataFrame,
    stl_products: pd.DataFrame,
    stl_crop_embeddings: Embeddings,
    ctl_scene_embeddings: Embeddings,
    gat_model: dict,
    sage_model: dict,
    stl_files: StlFiles,
) -> dg.Output[pd.DataFrame]:
    """Method x task (STL, CTL) x candidate pool x metric, on validation and held-out test scenes."""
    queries = {"stl": stl_crop_embeddings, "ctl": ctl_scene_embeddings}
    split_q, split_rows = {}, {}
    for split in ("val", "test"):
        split_q[split], split_rows[split] = split_queries(stl_graph, stl_pairs, queries, split)
    ids = stl_graph["product"].ids
    popularity = torch.tensor(stl_products.set_index("product").loc[ids, "popularity"].to_numpy())
    visual = stl_graph["product"].x[:, : stl_crop_embeddings.dim]
    methods = {
        "random": random_scorer(len(ids)),
        "popularity": popularity_scorer(popularity),
        "frozen_knn": cosine_scorer(visual, lambda task, x: x),
        "gat": _gnn_scorer(gat_model, stl_graph),
        "sage": _gnn_scorer(sage_model, stl_graph),
    }
    oracle = _oracle(stl_files, stl_graph, popularity)
    if oracle is not None:
        methods["oracle"] = oracle
    table = report(methods, stl_graph, stl_pairs, split_q, split_rows)
    test = table[(table["split"] == "test") & (table["pool"] == "same_category")]
    shown = test.drop(columns=["split", "pool"]).round(3)
    context.log.info(f"retrieval_report, test scenes, same-category pool:\n{shown.to_string(index=False)}")
    return dg.Output(
        table,
        metadata={
            "test_same_category": dg.MetadataValue.md(markdown(shown, max_rows=40)),
            "test_catalogue": dg.MetadataValue.md(
                markdown(
                    table[(table["split"] == "test") & (table["pool"] == "catalogue")]
                    .drop(columns=["split", "pool"])
                    .round(3),
                    max_rows=40,
                )
            ),
            "test_queries": int(test["queries"].iloc[0]) if len(test) else 0,
            "mlflow_runs": ", ".join(
                f"{m}: {r['mlflow_run_id']}" for m, r in (("gat", gat_model), ("sage", sage_model))
            ),
        },
    )


@dg.asset_check(
    asset=retrieval_report, blocking=True, description="Every split, method, task and pool has a row."
)
def retrieval_report_complete(retrieval_report: pd.DataFrame) -> dg.AssetCheckResult:
    expected = {
        (s, m, t, p)
        for s in ("val", "test")
        for m in (*BASELINES, *MODELS)
        for t in ("stl", "ctl")
        for p in POOLS
    }
    present = set(retrieval_report[["split", "method", "task", "pool"]].itertuples(index=False, name=None))
    missing = expected - present
    nan = int(retrieval_report[[m for m in METRICS if m != "AUC"]].isna().any(axis=1).sum())
    return dg.AssetCheckResult(
        passed=not missing and not nan,
        metadata={
            "missing_rows": len(missing),
            "rows_with_missing_metrics": nan,
            "sample": str(sorted(missing)[:3]),
        },
    )


@dg.asset_check(
    asset=retrieval_report,
    blocking=True,
    description="GAT beats popularity and frozen kNN on validation HR@10 for Complete the Look.",
)
def retrieval_report_gat_beats_baselines(
    retrieval_report: pd.DataFrame, quality_gate: QualityGate
) -> dg.AssetCheckResult:
    rows = retrieval_report[
        (retrieval_report["split"] == "val")
        & (retrieval_report["task"] == "ctl")
        & (retrieval_report["pool"] == "same_category")
    ].set_index("method")["HR@10"]
    best_baseline = max(rows.get("popularity", float("inf")), rows.get("frozen_knn", float("inf")))
    gat = rows.get("gat", float("-inf"))
    margin = quality_gate.ctl_hr10_margin
    passed = gat >= best_baseline + margin
    return dg.AssetCheckResult(
        passed=bool(passed),
        metadata={"gat_hr10": float(gat), "best_baseline_hr10": float(best_baseline), "margin": margin},
        description=None
        if passed
        else f"GAT's CTL HR@10 {gat:.3f} < baselines' {best_baseline:.3f} + {margin}",
    )


def _finite_check(asset: str) -> dg.AssetChecksDefinition:
    @dg.asset_check(
        asset=asset, name=f"{asset}_weights_finite", blocking=True, description="Every weight is finite."
    )
    def weights_finite(record: dict) -> dg.AssetCheckResult:
        bad = [
            name for name, tensor in record["state_dict"].items() if not torch.isfinite(tensor.float()).all()
        ]
        return dg.AssetCheckResult(
            passed=not bad, metadata={"non_finite_tensors": len(bad), "sample": ", ".join(bad[:5]) or "none"}
        )

    return weights_finite


model_checks = [_finite_check(asset) for asset in MODELS.values()]
