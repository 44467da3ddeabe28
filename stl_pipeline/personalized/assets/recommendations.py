"""hm_recommendations: the champion's top-k for every active customer, and the cold-start list."""

import time

import dagster as dg
import pandas as pd
from pydantic import Field

from stl_pipeline.guards import not_shrunk
from stl_pipeline.personalized.config import GROUP
from stl_pipeline.reporting import markdown
from stl_pipeline.resources import HmFiles, TorchDevice
from stl_pipeline.storage import atomic_write_with


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
    from stl_pipeline.personalized.recommend import POPULAR_FILE, recommend

    began = time.perf_counter()
    serving, record, graph = served(hm_champion, "personalized")
    folder = Path(serving["folder"])
    lists, popular = recommend(
        graph,
        record,
        pd.Index(pd.read_parquet(folder / "customers.parquet", columns=["customer_id"])["customer_id"]),
        pd.Index(pd.read_parquet(folder / "articles.parquet", columns=["article_id"])["article_id"]),
        config.active_days,
        torch_device.torch_device(),
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
