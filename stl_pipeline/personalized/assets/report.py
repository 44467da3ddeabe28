"""hm_report: every method on the validation and test weeks, against the best heuristic."""

import time

import dagster as dg
import pandas as pd
from pydantic import Field

from stl_pipeline.artifacts import HeteroData
from stl_pipeline.personalized.config import GROUP
from stl_pipeline.reporting import markdown
from stl_pipeline.resources import HmFiles, MlflowTracker, TorchDevice


class HmReportConfig(dg.Config):
    seed: int = Field(default=0, description="Seeds the sampled non-purchases of AUC, AP, accuracy and F1.")


@dg.asset(group_name=GROUP)
def hm_report(
    context: dg.AssetExecutionContext,
    config: HmReportConfig,
    hm_graph: HeteroData,
    hm_sage_model: dict,
    hm_ranker_model: dict,
    hm_articles: pd.DataFrame,
    hm_customers: pd.DataFrame,
    torch_device: TorchDevice,
    mlflow: MlflowTracker,
    hm_files: HmFiles,
) -> dg.Output[pd.DataFrame]:
    """Validation and test windows: MAP@12 (RelBench's: each customer's sum of precisions over
    min(purchases, 12), averaged over the customers who bought), Recall@12, HR@12, NDCG@12,
    the paired MAP@12 gain over the window's best heuristic with its 95% interval, and AUC, AP,
    accuracy and F1 of the purchases against as many sampled non-purchases; for both models,
    the heuristics (and the oracle on generated data). The candidates' recall goes beside it."""
    from stl_pipeline.personalized.report import report_table

    began = time.perf_counter()
    models = {"hm_sage": hm_sage_model, "hm_ranker": hm_ranker_model}
    table, recall = report_table(
        hm_graph,
        models,
        hm_customers,
        hm_articles,
        hm_files.truth_dir,
        torch_device.torch_device(),
        config.seed,
    )
    test = table[table["window"] == "test"].drop(columns="window")
    tracker = mlflow.tracker()
    for method, record in models.items():
        run = tracker.existing(record["mlflow_run_id"])
        run.log_metrics(
            {
                f"{row['window']}_{metric}": float(row[metric])
                for _, row in table[table["method"] == method].iterrows()
                for metric in table.columns[2:]
                if pd.notna(row[metric])
            }
        )
        run.log_text(table.to_csv(index=False), "reports/hm_report.csv")
    tracker.existing(hm_ranker_model["mlflow_run_id"]).log_text(
        recall.to_csv(index=False), "reports/candidate_recall.csv"
    )
    by_method = test.set_index("method")["MAP@12"]
    context.log.info(
        "hm_report, test MAP@12: " + ", ".join(f"{method} {value:.4f}" for method, value in by_method.items())
    )
    return dg.Output(
        table,
        metadata={
            "test": dg.MetadataValue.md(markdown(test.round(4), max_rows=20)),
            "validation": dg.MetadataValue.md(
                markdown(table[table["window"] == "val"].drop(columns="window").round(4), max_rows=20)
            ),
            "candidate_recall": dg.MetadataValue.md(markdown(recall.round(4))),
            "test_customers": int(test["customers"].iloc[0]),
            "mlflow_run_ids": ", ".join(r["mlflow_run_id"] for r in models.values()),
            "seconds": round(time.perf_counter() - began, 2),
        },
    )


@dg.asset_check(
    asset="hm_report",
    blocking=True,
    description="Both windows rank every method over the same customers, with finite metrics.",
)
def hm_report_complete(hm_report: pd.DataFrame) -> dg.AssetCheckResult:
    from stl_pipeline.personalized.evaluate import HEURISTICS, MODELS, RANKING

    problems = []
    for window in ("val", "test"):
        rows = hm_report[hm_report["window"] == window]
        missing = {*MODELS, *HEURISTICS} - set(rows["method"])
        if missing:
            problems.append(f"{window}: no {', '.join(sorted(missing))}")
        if rows["customers"].nunique() > 1 or not (rows["customers"] > 0).all():
            problems.append(f"{window}: methods ranked different or no customers")
        if not rows[list(RANKING)].notna().all().all():
            problems.append(f"{window}: a ranking metric is missing")
    return dg.AssetCheckResult(passed=not problems, description="; ".join(problems) or None)
