"""Assets ``stl_pairs`` and ``stl_products`` and the checks that guard them."""

import time
from collections.abc import Iterator

import dagster as dg
import pandas as pd
from pydantic import Field

from stl_pipeline.guards import not_shrunk
from stl_pipeline.ingest.parse import reason_kinds
from stl_pipeline.ingest.tables import (
    check_quarantine,
    ingest,
    invalid_bboxes,
    invalid_ids,
    scenes_in_several_splits,
)
from stl_pipeline.lineage import RAW_DIGEST
from stl_pipeline.plots import bbox_coverage, category_distribution, cooccurrence_heatmap
from stl_pipeline.reporting import counts, markdown
from stl_pipeline.resources import StlFiles
from stl_pipeline.storage import atomic_write_with, files_digest


class IngestConfig(dg.Config):
    max_quarantine_share: float = 0.01
    split_seed: int = 0
    val_fraction: float = 0.1
    test_fraction: float | None = Field(
        default=None,
        description="Share of scenes held out for test; empty: 0.1, or 0.3 on the generated demo "
        "(StlFiles.demo_test_fraction), so that its report has enough queries to rank methods.",
    )


@dg.multi_asset(
    outs={
        "stl_pairs": dg.AssetOut(description="Validated pairs: scene, product, bbox, split by scene."),
        "stl_products": dg.AssetOut(description="Products: category path, leaf, pairs, train popularity."),
    },
    group_name="ingest",
)
def stl_tables(
    context: dg.AssetExecutionContext, config: IngestConfig, stl_files: StlFiles
) -> Iterator[dg.Output[pd.DataFrame]]:
    """Stream and validate the raw files; quarantine what is malformed."""
    start = time.perf_counter()
    pairs_path, categories_path = stl_files.ensure(context.log)
    raw_sha256 = files_digest([pairs_path, categories_path])
    test_fraction = stl_files.test_fraction(config.test_fraction)
    result = ingest(pairs_path, categories_path, config.split_seed, config.val_fraction, test_fraction)
    quarantine_path = stl_files.path("quarantine", "stl_pairs.parquet")
    atomic_write_with(quarantine_path, lambda tmp: result.quarantine.to_parquet(tmp, index=False))
    check_quarantine(result, config.max_quarantine_share, quarantine_path)

    pairs, products = result.pairs, result.products
    shares = result.quarantined_shares()
    plots = {}
    if len(pairs):
        plots |= stl_files.save_plot("category_distribution", category_distribution(products, pairs))
        plots |= stl_files.save_plot("bbox_coverage", bbox_coverage(pairs))
        plots |= stl_files.save_plot("category_cooccurrence", cooccurrence_heatmap(pairs))
    seconds = time.perf_counter() - start
    yield dg.Output(
        pairs,
        output_name="stl_pairs",
        metadata={
            "source": dg.MetadataValue.path(str(pairs_path)),
            RAW_DIGEST: raw_sha256,
            "lines": result.records[str(pairs_path)],
            "pairs": len(pairs),
            "scenes": pairs["scene"].nunique(),
            "duplicates_dropped": result.duplicates,
            "quarantined": len(result.quarantine),
            "pairs_quarantined_share": shares[str(pairs_path)],
            "categories_quarantined_share": shares[str(categories_path)],
            "quarantine_path": dg.MetadataValue.path(str(quarantine_path)),
            "quarantine_reasons": dg.MetadataValue.md(
                counts(reason_kinds(result.quarantine["reason"]), "reason")
                if len(result.quarantine)
                else "none"
            ),
            "pairs_per_split": dg.MetadataValue.md(counts(pairs["split"], "split")),
            "scenes_per_split": dg.MetadataValue.md(counts(pairs.drop_duplicates("scene")["split"], "split")),
            "pairs_per_category": dg.MetadataValue.md(counts(pairs["category"], "category")),
            "preview": dg.MetadataValue.md(markdown(pairs, max_rows=5)),
            "seconds": round(seconds, 2),
            **plots,
        },
    )
    yield dg.Output(
        products,
        output_name="stl_products",
        metadata={
            "source": dg.MetadataValue.path(str(categories_path)),
            "products": len(products),
            "products_without_pairs": int((products["pairs"] == 0).sum()),
            "products_per_category": dg.MetadataValue.md(counts(products["category"], "category")),
            "max_popularity": int(products["popularity"].max()) if len(products) else 0,
            "preview": dg.MetadataValue.md(
                markdown(products.sort_values("popularity", ascending=False), max_rows=5)
            ),
        },
    )


def _result(
    failures: pd.DataFrame | pd.Series, what: str, columns: list[str] | None = None
) -> dg.AssetCheckResult:
    metadata: dict = {"failures": len(failures)}
    if len(failures):
        sample = failures.reset_index() if isinstance(failures, pd.Series) else failures
        metadata["sample"] = dg.MetadataValue.md(
            markdown(sample[columns] if columns else sample, max_rows=10)
        )
    return dg.AssetCheckResult(
        passed=len(failures) == 0,
        metadata=metadata,
        description=f"{len(failures)} {what}" if len(failures) else None,
    )


@dg.asset_check(asset="stl_pairs", blocking=True, description="Scene and product ids are 32-hex signatures.")
def stl_pairs_ids_valid(stl_pairs: pd.DataFrame) -> dg.AssetCheckResult:
    bad = pd.concat([invalid_ids(stl_pairs, "scene"), invalid_ids(stl_pairs, "product")]).drop_duplicates(
        "pair_id"
    )
    return _result(bad, "pairs with an invalid id", ["line", "scene", "product"])


@dg.asset_check(
    asset="stl_pairs", blocking=True, description="Boxes are finite, in [0, 1], left < right, top < bottom."
)
def stl_pairs_bboxes_valid(stl_pairs: pd.DataFrame) -> dg.AssetCheckResult:
    return _result(
        invalid_bboxes(stl_pairs), "pairs with an invalid bbox", ["line", "left", "top", "right", "bottom"]
    )


@dg.asset_check(
    asset="stl_pairs",
    blocking=True,
    additional_ins={"stl_products": dg.AssetIn()},
    description="Every pair's product is in the product table.",
)
def stl_pairs_products_have_category(
    stl_pairs: pd.DataFrame, stl_products: pd.DataFrame
) -> dg.AssetCheckResult:
    missing = stl_pairs[~stl_pairs["product"].isin(stl_products["product"])]
    return _result(missing, "pairs whose product has no category", ["line", "product"])


@dg.asset_check(asset="stl_pairs", blocking=True, description="No scene has pairs in two splits.")
def stl_pairs_splits_disjoint(stl_pairs: pd.DataFrame) -> dg.AssetCheckResult:
    return _result(scenes_in_several_splits(stl_pairs), "scenes in more than one split")


@dg.asset_check(asset="stl_products", blocking=True, description="Product ids are 32-hex signatures.")
def stl_products_ids_valid(stl_products: pd.DataFrame) -> dg.AssetCheckResult:
    return _result(invalid_ids(stl_products, "product"), "products with an invalid id", ["product"])


stl_pairs_not_shrunk = not_shrunk("stl_pairs", ("pairs", "scenes"))
stl_products_not_shrunk = not_shrunk("stl_products", ("products",))
