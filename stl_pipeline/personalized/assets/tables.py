"""hm_tables: the three H&M-format CSVs streamed, validated and split in time; and their checks."""

import time
from collections.abc import Iterator

import dagster as dg
import pandas as pd
from pydantic import Field

from stl_pipeline.guards import not_shrunk
from stl_pipeline.ingest.parse import reason_kinds
from stl_pipeline.lineage import RAW_DIGEST
from stl_pipeline.personalized.config import GROUP
from stl_pipeline.reporting import counts, markdown
from stl_pipeline.resources import HmFiles
from stl_pipeline.storage import atomic_write_with, files_digest


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
