"""Assets of the ``personalized`` group: H&M-format purchases to top-12 lists, and their checks."""

import time
from collections.abc import Iterator

import dagster as dg
import pandas as pd
from pydantic import Field

from stl_pipeline.artifacts import HeteroData
from stl_pipeline.executor import GPU_POOL, GPU_STEP_TAGS
from stl_pipeline.guards import not_shrunk, weights_finite
from stl_pipeline.ingest.parse import reason_kinds
from stl_pipeline.lineage import RAW_DIGEST
from stl_pipeline.personalized.config import REGISTERED, HmTrainConfig
from stl_pipeline.reporting import counts, markdown
from stl_pipeline.resources import HmFiles, MlflowTracker, TorchDevice
from stl_pipeline.run_config import config_class, to_dataclass
from stl_pipeline.storage import atomic_write_with, files_digest

GROUP = "personalized"


class HmIngestConfig(dg.Config):
    max_quarantine_share: float = 0.01
    window_days: int = Field(
        default=7, description="Days in the test window, and in the validation one before it."
    )


@dg.multi_asset(
    outs={
        "hm_transactions": dg.AssetOut(
            description="Valid purchases: day, customer and article (categoricals over the other two tables' "
            "ids), price, sales channel, and window (train, val, test)."
        ),
        "hm_articles": dg.AssetOut(description="Valid articles and their attributes."),
        "hm_customers": dg.AssetOut(description="Valid customers: flags, club and news status, age."),
    },
    group_name=GROUP,
)
def hm_tables(
    context: dg.AssetExecutionContext, config: HmIngestConfig, hm_files: HmFiles
) -> Iterator[dg.Output[pd.DataFrame]]:
    """Stream and validate the three CSVs; quarantine what is malformed; split time."""
    from stl_pipeline.personalized.ingest import check_quarantine, read_hm, split_windows

    began = time.perf_counter()
    paths = hm_files.ensure(context.log)
    tables = read_hm(*paths)
    quarantine_path = hm_files.path("quarantine", "hm.parquet")
    # Written first: a refused file's rejected lines are what the operator needs to see.
    atomic_write_with(quarantine_path, lambda tmp: tables.quarantine.to_parquet(tmp, index=False))
    check_quarantine(tables, config.max_quarantine_share, quarantine_path)
    split_windows(tables, paths[0], config.window_days)
    purchases = tables.transactions
    shares = tables.quarantined_shares()
    by_window = purchases.groupby("window", observed=False)
    yield dg.Output(
        purchases,
        output_name="hm_transactions",
        metadata={
            "source": dg.MetadataValue.path(str(paths[0])),
            RAW_DIGEST: files_digest(list(paths)),
            "lines": tables.records[str(paths[0])],
            "purchases": len(purchases),
            "quarantined": len(tables.quarantine),
            "purchases_quarantined_share": shares[str(paths[0])],
            "quarantine_path": dg.MetadataValue.path(str(quarantine_path)),
            "quarantine_reasons": dg.MetadataValue.md(
                counts(reason_kinds(tables.quarantine["reason"]), "reason")
                if len(tables.quarantine)
                else "none"
            ),
            "first_day": str(purchases["t_dat"].min().date()),
            **tables.windows.as_dict(),
            "purchases_per_window": dg.MetadataValue.md(counts(purchases["window"], "window")),
            "customers_per_window": dg.MetadataValue.md(
                markdown(by_window["customer_id"].nunique().rename("customers").reset_index())
            ),
            "seconds": round(time.perf_counter() - began, 2),
        },
    )
    yield dg.Output(
        tables.articles,
        output_name="hm_articles",
        metadata={
            "articles": len(tables.articles),
            "quarantined_share": shares[str(paths[1])],
            "articles_per_group": dg.MetadataValue.md(counts(tables.articles["product_group_name"], "group")),
        },
    )
    yield dg.Output(
        tables.customers,
        output_name="hm_customers",
        metadata={
            "customers": len(tables.customers),
            "quarantined_share": shares[str(paths[2])],
            "customers_with_purchases": int(purchases["customer_id"].nunique()),
        },
    )


def _failures(frame: pd.DataFrame, what: str) -> dg.AssetCheckResult:
    metadata: dict = {"failures": len(frame)}
    if len(frame):
        metadata["sample"] = dg.MetadataValue.md(markdown(frame, max_rows=10))
    return dg.AssetCheckResult(
        passed=not len(frame), metadata=metadata, description=f"{len(frame)} {what}" if len(frame) else None
    )


@dg.asset_check(
    asset="hm_transactions",
    blocking=True,
    additional_ins={"hm_articles": dg.AssetIn(), "hm_customers": dg.AssetIn()},
    description="Every purchase's customer and article are in hm_customers and hm_articles, in their order.",
)
def hm_transactions_ids_known(
    hm_transactions: pd.DataFrame, hm_articles: pd.DataFrame, hm_customers: pd.DataFrame
) -> dg.AssetCheckResult:
    problems = []
    for column, table in (("customer_id", hm_customers), ("article_id", hm_articles)):
        categories = hm_transactions[column].cat.categories
        if len(categories) != len(table) or not (categories == pd.Index(table[column])).all():
            problems.append({"column": column, "problem": "categories differ from the table's ids"})
        missing = int(hm_transactions[column].isna().sum())
        if missing:
            problems.append({"column": column, "problem": f"{missing} purchases without one"})
    return _failures(pd.DataFrame(problems), "id problems")


@dg.asset_check(
    asset="hm_transactions",
    blocking=True,
    description="Windows are in time order (train < val < test) and none is empty.",
)
def hm_transactions_windows_ordered(hm_transactions: pd.DataFrame) -> dg.AssetCheckResult:
    spans = hm_transactions.groupby("window", observed=False)["t_dat"].agg(["min", "max", "count"])
    problems = [f"window {w} is empty" for w, row in spans.iterrows() if row["count"] == 0]
    for earlier, later in (("train", "val"), ("val", "test")):
        if not problems and spans.loc[earlier, "max"] >= spans.loc[later, "min"]:
            problems.append(f"{earlier} ends {spans.loc[earlier, 'max'].date()} after {later} begins")
    return dg.AssetCheckResult(
        passed=not problems,
        metadata={"windows": dg.MetadataValue.md(markdown(spans.reset_index().astype(str)))},
        description="; ".join(problems) or None,
    )


@dg.asset_check(asset="hm_articles", blocking=True, description="Article ids are 10 digits and distinct.")
def hm_articles_ids_valid(hm_articles: pd.DataFrame) -> dg.AssetCheckResult:
    ids = hm_articles["article_id"].astype("string")
    bad = hm_articles[~ids.str.fullmatch(r"[0-9]{10}").fillna(False) | ids.duplicated()]
    return _failures(bad[["article_id"]], "invalid or repeated article ids")


@dg.asset_check(
    asset="hm_customers", blocking=True, description="Customer ids are 64 hex digits and distinct."
)
def hm_customers_ids_valid(hm_customers: pd.DataFrame) -> dg.AssetCheckResult:
    ids = hm_customers["customer_id"].astype("string")
    bad = hm_customers[~ids.str.fullmatch(r"[0-9a-f]{64}").fillna(False) | ids.duplicated()]
    return _failures(bad[["customer_id"]], "invalid or repeated customer ids")


hm_transactions_not_shrunk = not_shrunk("hm_transactions", ("purchases",))
hm_articles_not_shrunk = not_shrunk("hm_articles", ("articles",))
hm_customers_not_shrunk = not_shrunk("hm_customers", ("customers",))


class HmGraphConfig(dg.Config):
    window_days: int = Field(default=7, description="Must match hm_tables' window_days.")


@dg.asset(group_name=GROUP, io_manager_key="graph_io_manager")
def hm_graph(
    config: HmGraphConfig,
    hm_transactions: pd.DataFrame,
    hm_articles: pd.DataFrame,
    hm_customers: pd.DataFrame,
) -> dg.Output[HeteroData]:
    """Customers and articles with their attribute features; every purchase as a ``buys`` edge
    (day, price) and its reverse, sorted by day so a window's snapshot is a prefix."""
    from stl_pipeline.personalized.graph import ARTICLE, BUYS, CUSTOMER, build_hm_graph
    from stl_pipeline.personalized.split import check_windows

    began = time.perf_counter()
    windows = check_windows(hm_transactions, config.window_days)
    graph = build_hm_graph(hm_transactions, hm_articles, hm_customers, windows)
    return dg.Output(
        graph,
        metadata={
            "nodes_customer": graph[CUSTOMER].num_nodes,
            "nodes_article": graph[ARTICLE].num_nodes,
            "edges_buys": int(graph[BUYS].edge_index.shape[1]),
            "customer_features": len(graph.info["customer_features"]),
            "article_features": len(graph.info["article_features"]),
            "val_start_day": graph.info["val_start_day"],
            "test_start_day": graph.info["test_start_day"],
            "seconds": round(time.perf_counter() - began, 2),
        },
    )


@dg.asset_check(
    asset="hm_graph",
    blocking=True,
    additional_ins={"hm_transactions": dg.AssetIn()},
    description="No purchase of a window or a later one reaches the snapshot, the features or the negatives "
    "of that window (test, validation and twelve training weeks, recounted from hm_transactions).",
)
def hm_graph_temporal_split(hm_graph: HeteroData, hm_transactions: pd.DataFrame) -> dg.AssetCheckResult:
    from stl_pipeline.personalized.windows import temporal_violations

    problems = temporal_violations(hm_graph, hm_transactions)
    return dg.AssetCheckResult(
        passed=not problems,
        metadata={"violations": len(problems)},
        description="; ".join(problems[:5]) or None,
    )


HmSageConfig = config_class(
    "HmSageConfig", HmTrainConfig, dg.Config, __name__, "How hm_sage_model trains (personalized/model.py)."
)


@dg.asset(group_name=GROUP, pool=GPU_POOL, op_tags=GPU_STEP_TAGS, io_manager_key="model_io_manager")
def hm_sage_model(
    context: dg.AssetExecutionContext,
    config: HmSageConfig,  # type: ignore[valid-type]
    hm_graph: HeteroData,
    torch_device: TorchDevice,
    mlflow: MlflowTracker,
    hm_files: HmFiles,
) -> dg.Output[dict]:
    """Heterogeneous GraphSAGE link prediction, trained week by week on snapshots, early-stopped
    on validation MAP@12, tracked and registered in MLflow as ``hm-sage``."""
    import hashlib
    import json
    from dataclasses import asdict

    from stl_pipeline.device import describe
    from stl_pipeline.personalized.graph import BUYS
    from stl_pipeline.personalized.model import model_record, train_hm
    from stl_pipeline.plots import training_curves
    from stl_pipeline.tracking import publish

    train_config = to_dataclass(HmTrainConfig, config.model_dump())
    params = asdict(train_config)
    device = torch_device.torch_device()
    # A retry of an interrupted run on the same graph resumes; new data or knobs start afresh.
    fingerprint = {k: hm_graph.info[k] for k in ("customers_sha256", "articles_sha256", "end_day")}
    fingerprint |= {"purchases": int(hm_graph[BUYS].edge_index.shape[1]), **params}
    digest = hashlib.blake2b(json.dumps(fingerprint, sort_keys=True).encode(), digest_size=8).hexdigest()
    folder = hm_files.path("checkpoints", "hm_sage_model", digest)
    with mlflow.training_run(context, "hm_sage", {**params, "device": describe(device)}) as run:
        result = train_hm(
            hm_graph,
            train_config,
            device,
            folder,
            on_epoch=lambda epoch, metrics: run.log_metrics(metrics, step=epoch),
        )
        record = model_record(result, hm_graph, train_config, run.run_id) | {"registered": REGISTERED}
        curves = training_curves(
            result.history, result.best_epoch, "hm_sage_model", "val_MAP@12", "validation MAP@12"
        )
        version = publish(
            run,
            folder,
            record,
            params,
            curves,
            {
                "best_epoch": result.best_epoch,
                "best_val_MAP@12": result.best_val_map,
                "popularity_val_MAP@12": result.popularity_val_map,
            },
            REGISTERED,
            {"asset": "hm_sage_model", "dagster_run_id": context.run.run_id},
        )
    record["version"] = version
    return dg.Output(
        record,
        metadata={
            "mlflow_run_id": run.run_id,
            "mlflow_model": f"{REGISTERED} version {version}",
            "best_epoch": result.best_epoch,
            "best_val_MAP@12": round(result.best_val_map, 4),
            "popularity_val_MAP@12": round(result.popularity_val_map, 4),
            "epochs_run": result.epochs_run,
            "stopped_early": result.stopped_early,
            "seconds": round(result.seconds, 2),
            "device": describe(device),
            "checkpoints": dg.MetadataValue.path(str(folder)),
        },
    )


hm_sage_model_weights_finite = weights_finite("hm_sage_model", "state")


class HmReportConfig(dg.Config):
    seed: int = Field(default=0, description="Seeds the sampled non-purchases of AUC, AP, accuracy and F1.")


@dg.asset(group_name=GROUP)
def hm_report(
    context: dg.AssetExecutionContext,
    config: HmReportConfig,
    hm_graph: HeteroData,
    hm_sage_model: dict,
    hm_articles: pd.DataFrame,
    hm_customers: pd.DataFrame,
    torch_device: TorchDevice,
    mlflow: MlflowTracker,
    hm_files: HmFiles,
) -> dg.Output[pd.DataFrame]:
    """Validation and test windows: MAP@12, Recall@12, HR@12, NDCG@12 over every customer who
    bought in the window, and AUC, AP, accuracy and F1 of its purchases against as many sampled
    non-purchases; for the model and the baselines (and the oracle on generated data)."""
    from stl_pipeline.personalized.report import report_table

    began = time.perf_counter()
    table = report_table(
        hm_graph,
        hm_sage_model,
        hm_customers,
        hm_articles,
        hm_files.truth_dir,
        torch_device.torch_device(),
        config.seed,
    )
    test = table[table["window"] == "test"].drop(columns="window")
    run = mlflow.tracker().existing(hm_sage_model["mlflow_run_id"])
    own = table[table["method"] == "hm_sage"]
    run.log_metrics(
        {
            f"{row['window']}_{metric}": float(row[metric])
            for _, row in own.iterrows()
            for metric in table.columns[2:]
            if pd.notna(row[metric])
        }
    )
    run.log_text(table.to_csv(index=False), "reports/hm_report.csv")
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
            "test_customers": int(test["customers"].iloc[0]),
            "mlflow_run_id": hm_sage_model["mlflow_run_id"],
            "seconds": round(time.perf_counter() - began, 2),
        },
    )


@dg.asset_check(
    asset="hm_report",
    blocking=True,
    description="Both windows rank every method over the same customers, with finite metrics.",
)
def hm_report_complete(hm_report: pd.DataFrame) -> dg.AssetCheckResult:
    from stl_pipeline.personalized.evaluate import RANKING

    problems = []
    for window in ("val", "test"):
        rows = hm_report[hm_report["window"] == window]
        missing = {"hm_sage", "popularity", "repurchase", "co_purchase"} - set(rows["method"])
        if missing:
            problems.append(f"{window}: no {', '.join(sorted(missing))}")
        if rows["customers"].nunique() > 1 or not (rows["customers"] > 0).all():
            problems.append(f"{window}: methods ranked different or no customers")
        if not rows[list(RANKING)].notna().all().all():
            problems.append(f"{window}: a ranking metric is missing")
    return dg.AssetCheckResult(passed=not problems, description="; ".join(problems) or None)


class HmRecommendationsConfig(dg.Config):
    k: int = Field(default=12, ge=1, le=100, description="Articles per customer.")
    active_days: int = Field(
        default=90, ge=1, description="Customers with a purchase in these last days get a list."
    )


@dg.asset(group_name=GROUP)
def hm_recommendations(
    config: HmRecommendationsConfig,
    hm_champion: dict,
    torch_device: TorchDevice,
    hm_files: HmFiles,
) -> dg.Output[pd.DataFrame]:
    """Top-k articles for every active customer, from the champion and the graph it was
    trained on (its snapshot), from the snapshot after the last purchase; best sellers for
    everyone else (``serving/hm_popular.parquet``, read by stl-recommend)."""
    from pathlib import Path

    from stl_pipeline.champion.store import served
    from stl_pipeline.personalized.model import load_model
    from stl_pipeline.personalized.recommend import POPULAR_FILE, recommend

    began = time.perf_counter()
    serving, record, graph = served(hm_champion, "personalized")
    folder = Path(serving["folder"])
    device = torch_device.torch_device()
    model = load_model(record, graph).to(device)
    lists, popular = recommend(
        graph,
        model,
        pd.Index(pd.read_parquet(folder / "customers.parquet", columns=["customer_id"])["customer_id"]),
        pd.Index(pd.read_parquet(folder / "articles.parquet", columns=["article_id"])["article_id"]),
        config.active_days,
        device,
        config.k,
    )
    popular_path = hm_files.path("serving", POPULAR_FILE)
    atomic_write_with(popular_path, lambda tmp: popular.to_parquet(tmp, index=False))
    return dg.Output(
        lists,
        metadata={
            "model": f"{serving['registered']} version {serving['version']}",
            "customers": int(lists["customer_id"].nunique()),
            "rows": len(lists),
            "distinct_articles": int(lists["article_id"].nunique()),
            "popular_path": dg.MetadataValue.path(str(popular_path)),
            "preview": dg.MetadataValue.md(markdown(lists.head(12))),
            "seconds": round(time.perf_counter() - began, 2),
        },
    )


@dg.asset_check(
    asset="hm_recommendations", blocking=True, description="Not empty; each list has k distinct articles."
)
def hm_recommendations_complete(hm_recommendations: pd.DataFrame) -> dg.AssetCheckResult:
    sizes = hm_recommendations.groupby("customer_id", observed=True)["article_id"].nunique()
    short = sizes[sizes < sizes.max()] if len(sizes) else sizes
    passed = len(sizes) > 0 and short.empty
    return dg.AssetCheckResult(
        passed=passed,
        metadata={"customers": len(sizes), "short_lists": len(short)},
        description=None
        if passed
        else ("no recommendations" if not len(sizes) else f"{len(short)} short lists"),
    )


hm_recommendations_not_shrunk = not_shrunk("hm_recommendations", ("customers",))
