"""Jobs, the retraining schedule and the sensor that starts ingestion on new raw files.

Data and models refresh at different rhythms: new raw files are ingested,
downloaded and embedded as soon as their contents change (caches make that
incremental), while the graph and the models are rebuilt on a schedule.
"""

from pathlib import Path

import dagster as dg

from stl_pipeline.features.assets import ALL_PARTITIONS
from stl_pipeline.lineage import RAW_DIGEST
from stl_pipeline.resources import StlFiles
from stl_pipeline.storage import files_digest

STL_PAIRS = dg.AssetKey("stl_pairs")

PERSONALIZED = "personalized"
# The two jobs that embed every partition in one step say so on each of their runs, so that
# `dagster job execute -j stl_full_pipeline` works as Dagster's docs teach it. stl_embed has no
# such tags: its backfill is one run per partition.
stl_full_pipeline = dg.define_asset_job(
    "stl_full_pipeline",
    selection=dg.AssetSelection.all() - dg.AssetSelection.groups(PERSONALIZED),
    description="Every Shop-the-Look asset, from the raw files to the trained models and their reports.",
    run_tags=ALL_PARTITIONS,
)
hm_personalized = dg.define_asset_job(
    "hm_personalized",
    selection=dg.AssetSelection.groups(PERSONALIZED),
    description="Purchases to personalized top-12 lists: the H&M-format tables, the graph, "
    "hm_sage_model, hm_ranker_model, their report against the heuristics, hm_champion (promotion), and "
    "hm_recommendations.",
)
stl_ingest = dg.define_asset_job(
    "stl_ingest",
    selection=dg.AssetSelection.groups("ingest", "images", "features"),
    description="Raw files to validated tables, verified images and embeddings: what retraining reads.",
    run_tags=ALL_PARTITIONS,
)
stl_embed = dg.define_asset_job(
    "stl_embed",
    selection=dg.AssetSelection.groups("features"),
    description="The embeddings, by partition (leading hex digit of the image signature): a backfill "
    "of all sixteen fans out into one run per partition.",
)
stl_retrain = dg.define_asset_job(
    "stl_retrain",
    selection=dg.AssetSelection.assets("stl_graph").downstream(),
    description="The graph, the models, the reports, stl_champion (promotion) and what is served, "
    "from the current tables and embeddings.",
)


def _schedule(name: str, job_name: str, cron: str, what: str) -> dg.ScheduleDefinition:
    """Off until an operator switches it on (UI, or `dagster schedule start`)."""
    return dg.ScheduleDefinition(
        name=name,
        job_name=job_name,
        cron_schedule=cron,
        execution_timezone="UTC",
        default_status=dg.DefaultScheduleStatus.STOPPED,
        description=f"{what} on `{cron}` (UTC).",
    )


def retrain_schedule(cron: str) -> dg.ScheduleDefinition:
    return _schedule(
        "stl_retrain_schedule", stl_retrain.name, cron, "Retrain, re-evaluate and promote (STL_RETRAIN_CRON)"
    )


def hm_retrain_schedule(cron: str) -> dg.ScheduleDefinition:
    """The personalized group retrains on its own rhythm."""
    return _schedule(
        "hm_retrain_schedule",
        hm_personalized.name,
        cron,
        "Re-ingest purchases, retrain and promote (HM_RETRAIN_CRON)",
    )


def _ingested_digest(instance: dg.DagsterInstance) -> str | None:
    event = instance.get_latest_materialization_event(STL_PAIRS)
    if event is None or event.asset_materialization is None:
        return None
    value = event.asset_materialization.metadata.get(RAW_DIGEST)
    return None if value is None else str(value.value)


def _parse_cursor(cursor: str) -> tuple[int, str]:
    """``<changes>:<digest>``; a bare digest is a cursor written before changes were counted."""
    count, _, digest = cursor.rpartition(":")
    return (int(count) if count.isdigit() else 0), digest


@dg.sensor(
    name="stl_raw_files_sensor",
    job=stl_ingest,
    minimum_interval_seconds=60,
    default_status=dg.DefaultSensorStatus.STOPPED,
    description="Starts stl_ingest when the contents of the raw pairs or categories file change.",
)
def stl_raw_files_sensor(
    context: dg.SensorEvaluationContext, stl_files: StlFiles
) -> dg.RunRequest | dg.SkipReason:
    paths = [Path(stl_files.pairs_path), Path(stl_files.categories_path)]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        return dg.SkipReason(
            f"no raw file at {', '.join(missing)}: point STL_PAIRS_PATH and STL_CATEGORIES_PATH at the "
            "STL release (the demo generates its files on its first run)"
        )
    digest = files_digest(paths)
    # The first tick compares with what was last ingested, so switching the sensor on
    # does not re-ingest unchanged files.
    if context.cursor:
        changes, seen = _parse_cursor(context.cursor)
    else:  # a new or reset cursor counts on from this sensor's earlier runs, so keys stay new
        started = dg.RunsFilter(tags={"dagster/sensor_name": "stl_raw_files_sensor"})
        changes, seen = context.instance.get_runs_count(started), _ingested_digest(context.instance)
    if digest == seen:
        return dg.SkipReason(f"raw files unchanged (sha256 {digest[:12]})")
    # Dagster starts one run per run key ever, so the key counts changes: files that go back
    # to earlier contents (A -> B -> A) are a change too, and are ingested again.
    cursor = f"{changes + 1}:{digest}"
    context.update_cursor(cursor)
    return dg.RunRequest(run_key=cursor, tags={"stl/raw_sha256": digest})  # the job adds every partition
