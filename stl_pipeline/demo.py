"""``stl-demo``: run the full pipeline job on the persistent Dagster instance and summarize it.

The run is recorded under ``DAGSTER_HOME``, so ``make ui`` shows the same runs,
materializations and check results afterwards.
"""

import time
from collections.abc import Callable

import dagster as dg
import pandas as pd

from stl_pipeline.catalogue import asset_path
from stl_pipeline.settings import load_settings

STL_FULL_PIPELINE = "stl_full_pipeline"
HM_PERSONALIZED = "hm_personalized"


def _failed(severity: dg.AssetCheckSeverity) -> str:
    return "WARN" if severity == dg.AssetCheckSeverity.WARN else "FAIL"


def _samples(table: pd.DataFrame, shown: int = 3) -> list[str]:
    """The first product's similar and complementary lists, and the first held-out scene's
    complete-the-look list for the first category it lacks."""
    product = table.loc[table["kind"] == "similar", "query"].iloc[0]
    look = table[table["kind"] == "complete_the_look"].iloc[0]
    lists = [
        ("similar", product, None, f"Similar to product {product[:8]}"),
        ("complementary", product, None, f"Complementary to product {product[:8]}"),
        (
            "complete_the_look",
            look["query"],
            look["category"],
            f"Complete test scene {look['query'][:8]} with {look['category']}",
        ),
    ]
    lines = []
    for kind, query, category, title in lists:
        rows = table[(table["kind"] == kind) & (table["query"] == query)]
        if category is not None:
            rows = rows[rows["category"] == category]
        items = ", ".join(
            f"{r.product[:8]} ({r.category}, {r.score:.2f})" for r in rows.head(shown).itertuples()
        )
        lines.append(f"  {title}: {items}")
    return lines


def champion_lines(result: dg.JobExecutionResult, asset: str) -> list[str]:
    """The champion asset's decision, its reason and both test scores, as the demo prints them."""
    for event in result.get_asset_materialization_events():
        if event.asset_key.path[-1] == asset:
            meta = {k: v.value for k, v in event.step_materialization_data.materialization.metadata.items()}
            scores = [f"    {k.removeprefix('test_')}: {v}" for k, v in meta.items() if k.startswith("test_")]
            return [
                f"\n{asset}: {meta['decision']}: {meta['reason']}",
                f"  challenger {meta['challenger']}; serving {meta['serving']}; gate {meta['gate']}",
                *scores,
            ]
    return [f"\n{asset}: not materialized (an upstream step failed)"]


def full_pipeline() -> dg.JobDefinition:
    from stl_pipeline.definitions import defs

    return defs.resolve_job_def(STL_FULL_PIPELINE)


def personalized() -> dg.JobDefinition:
    from stl_pipeline.definitions import defs

    return defs.resolve_job_def(HM_PERSONALIZED)


def execute_in_this_process(
    run_config: dict, instance: dg.DagsterInstance, job: Callable[[], dg.JobDefinition] = full_pipeline
) -> dg.JobExecutionResult:
    """Every step of a job in this process. ``JobDefinition.execute_in_process`` would keep
    every step's output in memory until the run ends (the release's embeddings, graph and
    models at once); ``execute_job`` keeps none, so the peak is the largest step's."""
    in_process = {"execution": {"config": {"in_process": {}}}}
    return dg.execute_job(
        dg.reconstructable(job),
        instance,
        run_config=run_config | in_process,
        raise_on_error=False,
    )


def main() -> int:
    start = time.perf_counter()
    instance = dg.DagsterInstance.get()
    run_config = {"loggers": {"console": {"config": {"log_level": "INFO"}}}}
    with execute_in_this_process(run_config, instance) as result:
        code = _summarize(result, instance, time.perf_counter() - start)
    start = time.perf_counter()
    with execute_in_this_process(run_config, instance, personalized) as result:
        return max(code, _summarize_personalized(result, time.perf_counter() - start))


def _summarize_personalized(result: dg.JobExecutionResult, seconds: float) -> int:
    print(f"\nRun {result.run_id} of {HM_PERSONALIZED}: {'succeeded' if result.success else 'FAILED'}")
    for event in result.get_asset_materialization_events():
        materialization = event.step_materialization_data.materialization
        if materialization.asset_key.path[-1] == "hm_report":
            print("\nPersonalized report, test window (the last 7 days), every customer who bought in it:\n")
            print(materialization.metadata["test"].value)
    print("\n".join(champion_lines(result, "hm_champion")))
    print("\nChecks:")
    for evaluation in result.get_asset_check_evaluations():
        verdict = "pass" if evaluation.passed else _failed(evaluation.severity)
        print(f"  {verdict}  {evaluation.asset_key.to_user_string()}:{evaluation.check_name}")
    if result.success:
        table = pd.read_parquet(asset_path(load_settings().data_dir, "hm_recommendations"))
        customer = table["customer_id"].iloc[0]
        print(f"\n{seconds:.1f}s. A customer's list: stl-recommend customer {customer}")
    return 0 if result.success else 1


def _summarize(result: dg.JobExecutionResult, instance: dg.DagsterInstance, seconds: float) -> int:

    print(f"\nRun {result.run_id} of {STL_FULL_PIPELINE}: {'succeeded' if result.success else 'FAILED'}")
    print("\nAssets:")
    by_asset: dict[str, list[dict]] = {}
    for event in result.get_asset_materialization_events():
        materialization = event.step_materialization_data.materialization
        values = {k: v.value for k, v in materialization.metadata.items()}
        by_asset.setdefault(materialization.asset_key.to_user_string(), []).append(values)
    for name, events in by_asset.items():
        meta = events[0]
        if len(events) > 1:  # a partitioned asset: one line, its partitions' counts summed
            meta = meta | {"partitions": len(events), "count": sum(e.get("count", 0) for e in events)}
        keys = [k for k in meta if k.startswith(("nodes_", "edges_"))]
        shown = ", ".join(
            f"{k}={meta[k]:.3g}" if isinstance(meta[k], float) else f"{k}={meta[k]}"
            for k in (
                *keys,
                "rows",
                "pairs",
                "scenes",
                "products",
                "quarantined",
                "downloaded",
                "cached",
                "failed",
                "success_rate",
                "partitions",
                "count",
                "computed",
                "images_per_second",
                "best_epoch",
                "best_val_mrr",
                "device",
                "decision",
            )
            if k in meta
        )
        print(f"  {name:<21} {shown}")
    reports = {
        e.asset_key.path[-1]: e.step_materialization_data.materialization.metadata
        for e in result.get_asset_materialization_events()
        if e.asset_key.path[-1] in ("retrieval_report", "embedding_report")
    }
    if "retrieval_report" in reports:
        meta = reports["retrieval_report"]
        print("\nRetrieval report, held-out test scenes, same-category candidates:\n")
        print(meta["test_same_category"].value)
        print(f"\nMLflow runs: {meta['mlflow_runs'].value}")
    print("\n".join(champion_lines(result, "stl_champion")))
    if "embedding_report" in reports:
        print("\nEmbedding report (product embeddings; top-10 lists of test queries):\n")
        print(reports["embedding_report"]["embeddings"].value)
    print("\nChecks:")
    for evaluation in result.get_asset_check_evaluations():
        verdict = "pass" if evaluation.passed else _failed(evaluation.severity)
        print(f"  {verdict}  {evaluation.asset_key.to_user_string()}:{evaluation.check_name}")
    print(f"\n{seconds:.1f}s. Open the UI with `make ui` (DAGSTER_HOME={instance.root_directory}).")
    gallery = [
        e.step_materialization_data.materialization.metadata
        for e in result.get_asset_materialization_events()
        if e.asset_key.path[-1] == "recommendation_gallery"
    ]
    if gallery:
        print(f"\nGallery: {gallery[0]['gallery'].value}")
        table = pd.read_parquet(asset_path(load_settings().data_dir, "recommendations"))
        print("\nSample recommendations (product id, category, score: the cosine, plus the popularity prior")
        print("for complete the look):")
        print("\n".join(_samples(table)))
        product = table["query"].iloc[0]
        print(f"\nMore: stl-recommend product {product}, or stl-recommend scene IMAGE --bbox l,t,r,b")
    return 0 if result.success else 1


if __name__ == "__main__":
    raise SystemExit(main())
