"""Assets ``retrieval_report`` and ``embedding_report`` (group ``evaluation``), and the quality
gates on them and on the models."""

import json
from pathlib import Path

import dagster as dg
import pandas as pd

from stl_pipeline.artifacts import HeteroData
from stl_pipeline.asset_inputs import MODEL_INS
from stl_pipeline.generate import STYLES_FILE
from stl_pipeline.guards import weights_finite
from stl_pipeline.registry import MODEL_ASSETS, MODELS, by_method
from stl_pipeline.reporting import markdown
from stl_pipeline.resources import MlflowTracker, QualityGate, StlFiles
from stl_pipeline.vectors import Embeddings

GRAPH_METHODS = {spec.method for spec in MODELS if spec.passes_messages}
BASELINES = ("random", "popularity", "frozen_knn")


def _queries(
    graph: HeteroData,
    pairs: pd.DataFrame,
    stl: Embeddings,
    ctl: Embeddings,
    context: Embeddings,
    splits: tuple[str, ...],
) -> tuple[dict, dict]:
    from stl_pipeline.models.splits import split_queries

    split_q, split_rows = {}, {}
    for split in splits:
        split_q[split], split_rows[split] = split_queries(
            graph, pairs, {"stl": stl, "ctl": ctl}, split, context
        )
    return split_q, split_rows


def _oracle(stl_files: StlFiles, graph: HeteroData, popularity):
    """The generator's ground truth, when the raw files came from it."""
    import torch

    from stl_pipeline.evaluation.report import oracle_scorer

    path = Path(stl_files.pairs_path).parent / STYLES_FILE
    if not path.is_file():
        return None
    truth = json.loads(path.read_text())
    product_style = torch.tensor([truth["products"].get(p, -2) for p in graph["product"].ids])
    return oracle_scorer(product_style, truth["scenes"], popularity)


def _mlflow_name(*parts: str) -> str:
    """MLflow allows no '@' in metric names: (test, ctl, HR@10) -> test_ctl_hr_at_10."""
    return "_".join(parts).lower().replace("@", "_at_")


def _context(row: pd.Series) -> list[str]:
    """A row's context in its metric names, unless it is over all queries (as all STL rows)."""
    return [] if row["context"] == "all" else [row["context"]]


def _test_metrics(table: pd.DataFrame, method: str) -> dict[str, float]:
    """Every test metric of ``method``, and its paired lead over the methods without a graph."""
    from stl_pipeline.evaluation.report import MARGIN_COLUMNS
    from stl_pipeline.evaluation.retrieval import METRICS

    own = table[(table["method"] == method) & (table["split"] == "test")]
    return {
        _mlflow_name(row["split"], row["task"], *_context(row), row["pool"], metric): float(row[metric])
        for _, row in own.iterrows()
        for metric in (*METRICS, *MARGIN_COLUMNS)
        if pd.notna(row.get(metric))
    }


def _log_to_model_runs(
    tracker: MlflowTracker,
    records: dict[str, dict],
    table: pd.DataFrame,
    name: str,
    metrics: dict[str, dict[str, float]],
) -> None:
    """Each model's own figures, and the whole table, into the MLflow run that trained it."""
    client = tracker.tracker()
    for method, record in records.items():
        run = client.existing(record["mlflow_run_id"])
        run.log_metrics(metrics.get(method, {}))
        run.log_text(table.to_csv(index=False), f"reports/{name}.csv")
        run.log_text(markdown(table.round(4), max_rows=len(table)), f"reports/{name}.md")


@dg.asset(group_name="evaluation", ins=MODEL_INS)
def retrieval_report(
    context: dg.AssetExecutionContext,
    stl_graph: HeteroData,
    stl_pairs: pd.DataFrame,
    stl_products: pd.DataFrame,
    stl_crop_embeddings: Embeddings,
    ctl_scene_embeddings: Embeddings,
    ctl_scene_context: Embeddings,
    stl_files: StlFiles,
    mlflow: MlflowTracker,
    **models: dict,
) -> dg.Output[pd.DataFrame]:
    """Method x task (STL, CTL) x candidate pool x metric, on validation and held-out test scenes."""
    import torch

    from stl_pipeline.evaluation.report import (
        popularity_scorer,
        random_scorer,
        report,
        shown,
        vector_methods,
        vector_scorer,
    )

    split_q, split_rows = _queries(
        stl_graph, stl_pairs, stl_crop_embeddings, ctl_scene_embeddings, ctl_scene_context, ("val", "test")
    )
    ids = stl_graph["product"].ids
    popularity = torch.tensor(stl_products.set_index("product").loc[ids, "popularity"].to_numpy())
    records = by_method(models)
    vectors = vector_methods(stl_graph, stl_crop_embeddings.dim, records, ctl_scene_context)
    methods = {"random": random_scorer(len(ids)), "popularity": popularity_scorer(popularity)}
    methods |= {name: vector_scorer(method) for name, method in vectors.items()}
    oracle = _oracle(stl_files, stl_graph, popularity)
    if oracle is not None:
        methods["oracle"] = oracle
    table = report(methods, stl_graph, stl_pairs, split_q, split_rows)
    metrics = {method: _test_metrics(table, method) for method in records}
    _log_to_model_runs(mlflow, records, table, "retrieval_report", metrics)
    test = table[(table["split"] == "test") & (table["pool"] == "same_category")]
    counts = test[test["method"] == "random"][["task", "context", "queries"]]
    queries = {f"test_{t}_{c}_queries": int(n) for t, c, n in counts.itertuples(index=False)}
    summary = shown(table)
    context.log.info(f"retrieval_report, test scenes, same-category pool:\n{summary.to_string(index=False)}")
    return dg.Output(
        table,
        metadata={
            "test_same_category": dg.MetadataValue.md(markdown(summary, max_rows=40)),
            "test_catalogue": dg.MetadataValue.md(markdown(shown(table, pool="catalogue"), max_rows=40)),
            **queries,
            "mlflow_runs": ", ".join(f"{m}: {r['mlflow_run_id']}" for m, r in records.items()),
        },
    )


@dg.asset(group_name="evaluation", ins=MODEL_INS)
def embedding_report(
    context: dg.AssetExecutionContext,
    stl_graph: HeteroData,
    stl_pairs: pd.DataFrame,
    stl_crop_embeddings: Embeddings,
    ctl_scene_embeddings: Embeddings,
    ctl_scene_context: Embeddings,
    mlflow: MlflowTracker,
    **models: dict,
) -> dg.Output[pd.DataFrame]:
    """Per product embedding: cluster quality, over-smoothing, and coverage and category
    diversity of the top-10 lists of test queries over the whole catalogue."""

    from stl_pipeline.evaluation.embedding import embedding_quality, graph_density, list_quality
    from stl_pipeline.evaluation.report import vector_methods

    split_q, _ = _queries(
        stl_graph, stl_pairs, stl_crop_embeddings, ctl_scene_embeddings, ctl_scene_context, ("test",)
    )
    records = by_method(models)
    category = stl_graph["product"].category
    density = graph_density(stl_graph)
    rows = []
    vectors = vector_methods(stl_graph, stl_crop_embeddings.dim, records, ctl_scene_context)
    for name, method in vectors.items():
        row = {"embedding": name, "dim": int(method.products.shape[1])}
        row |= embedding_quality(method.products, category)
        row["graph_density"] = density if name in GRAPH_METHODS else float("nan")
        for task, queries in split_q["test"].items():
            scores = method.scores(task, queries)
            row |= {f"{task}_{k}": v for k, v in list_quality(scores, category).items()}
        rows.append(row)
    table = pd.DataFrame(rows)
    figures = table.set_index("embedding").drop(columns=["dim"])
    metrics = {
        method: {_mlflow_name("embedding", k): float(v) for k, v in row.items() if pd.notna(v)}
        for method, row in figures.loc[list(records)].iterrows()
    }
    _log_to_model_runs(mlflow, records, table, "embedding_report", metrics)
    shown = table.round(3)
    context.log.info(f"embedding_report:\n{shown.to_string(index=False)}")
    return dg.Output(
        table,
        metadata={
            "embeddings": dg.MetadataValue.md(markdown(shown, max_rows=20)),
            "graph_density": density,
            "max_mean_pairwise_cosine": float(table["mean_pairwise_cosine"].max()),
        },
    )


@dg.asset_check(
    asset=retrieval_report, blocking=True, description="Every split, method, task and pool has a row."
)
def retrieval_report_complete(retrieval_report: pd.DataFrame) -> dg.AssetCheckResult:
    from stl_pipeline.evaluation.retrieval import METRICS, POOLS

    expected = {
        (s, m, t, p)
        for s in ("val", "test")
        for m in (*BASELINES, *MODEL_ASSETS)
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


model_checks = [weights_finite(asset, "state_dict") for asset in MODEL_ASSETS.values()]


@dg.asset_check(
    asset=embedding_report,
    description="No product embedding has collapsed onto one direction (over-smoothing).",
)
def embedding_report_not_collapsed(
    embedding_report: pd.DataFrame, quality_gate: QualityGate
) -> dg.AssetCheckResult:
    cosine = embedding_report.set_index("embedding")["mean_pairwise_cosine"]
    limit = quality_gate.max_mean_pairwise_cosine
    collapsed = cosine[cosine >= limit]
    return dg.AssetCheckResult(
        passed=collapsed.empty,
        severity=dg.AssetCheckSeverity.WARN,
        metadata={"limit": limit, **{f"{k}_mean_pairwise_cosine": float(v) for k, v in cosine.items()}},
        description=None if collapsed.empty else f"collapsed: {', '.join(collapsed.index)}",
    )
