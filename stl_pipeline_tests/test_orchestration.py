import shutil
from datetime import UTC, datetime
from pathlib import Path

import dagster as dg
import pytest

from stl_pipeline.definitions import MODULES, build_definitions
from stl_pipeline.orchestration import stl_raw_files_sensor
from stl_pipeline.resources import StlFiles
from stl_pipeline.settings import WEEKLY, load_settings
from stl_pipeline.storage import files_digest


def raw_copy(small_dataset: Path, tmp_path: Path) -> dict[str, str]:
    raw = tmp_path / "raw"
    raw.mkdir()
    for name in ("fashion.json", "fashion-cat.json"):
        shutil.copy(small_dataset / name, raw / name)
    return {
        "STL_DATA_DIR": str(tmp_path / "data"),
        "STL_PAIRS_PATH": str(raw / "fashion.json"),
        "STL_CATEGORIES_PATH": str(raw / "fashion-cat.json"),
        "STL_IMAGE_URL_TEMPLATE": (small_dataset / "images").as_uri() + "/{signature}.jpg",
    }


def tick(instance: dg.DagsterInstance, environ: dict[str, str], cursor: str | None = None):
    resources = build_definitions(load_settings(environ)).resources
    context = dg.build_sensor_context(instance=instance, cursor=cursor, resources=resources)
    return stl_raw_files_sensor.evaluate_tick(context)


def test_jobs_select_their_part_of_the_lineage() -> None:
    defs = build_definitions(load_settings({}))
    retrain = defs.resolve_job_def("stl_retrain").asset_layer.executable_asset_keys
    ingest = defs.resolve_job_def("stl_ingest").asset_layer.executable_asset_keys
    names = {k.to_user_string() for k in retrain}
    assert {"stl_graph", "gat_model", "sage_model", "triplet_head", "retrieval_report"} <= names
    assert {"embedding_report"} <= names and "stl_pairs" not in names
    assert {k.to_user_string() for k in ingest} >= {"stl_pairs", "product_images", "ctl_scene_embeddings"}
    assert not names & {k.to_user_string() for k in ingest}


def test_retraining_schedule_is_weekly_and_off_until_switched_on() -> None:
    defs = build_definitions(load_settings({}))
    schedule = defs.resolve_schedule_def("stl_retrain_schedule")
    assert schedule.cron_schedule == WEEKLY and schedule.job_name == "stl_retrain"
    assert schedule.default_status == dg.DefaultScheduleStatus.STOPPED
    context = dg.build_schedule_context(scheduled_execution_time=datetime(2026, 11, 23, 3, tzinfo=UTC))
    (request,) = schedule.evaluate_tick(context).run_requests
    # One run of the schedule's own job (no job name), with the job's defaults, tagged with
    # the schedule so the UI can tell a scheduled retrain from a manual one.
    assert request.job_name is None and request.run_config == {}
    assert request.tags == {"dagster/schedule_name": "stl_retrain_schedule"}

    daily = build_definitions(load_settings({"STL_RETRAIN_CRON": "30 1 * * *"}))
    assert daily.resolve_schedule_def("stl_retrain_schedule").cron_schedule == "30 1 * * *"
    with pytest.raises(ValueError, match="STL_RETRAIN_CRON"):
        load_settings({"STL_RETRAIN_CRON": "weekly"})


def test_sensor_starts_ingestion_only_when_contents_change(small_dataset: Path, tmp_path: Path) -> None:
    environ = raw_copy(small_dataset, tmp_path)
    pairs = Path(environ["STL_PAIRS_PATH"])
    with dg.DagsterInstance.ephemeral() as instance:
        first = tick(instance, environ)
        (request,) = first.run_requests
        original = pairs.read_text()
        digest = files_digest([pairs, Path(environ["STL_CATEGORIES_PATH"])])
        assert request.run_key == first.cursor == f"1:{digest}"
        assert request.tags["stl/raw_sha256"] == digest

        pairs.touch()  # a new mtime, the same bytes
        unchanged = tick(instance, environ, cursor=first.cursor)
        assert not unchanged.run_requests and "unchanged" in unchanged.skip_message

        lines = pairs.read_text().splitlines()
        pairs.write_text("\n".join(lines[:-1]) + "\n")  # one pair fewer
        changed = tick(instance, environ, cursor=first.cursor)
        (request,) = changed.run_requests
        assert request.run_key == changed.cursor and changed.cursor.startswith("2:")

        pairs.write_text(original)  # back to the first contents: A -> B -> A is a change too
        reverted = tick(instance, environ, cursor=changed.cursor)
        (request,) = reverted.run_requests
        assert request.run_key == reverted.cursor == f"3:{digest}" != first.cursor
        assert not tick(instance, environ, cursor=reverted.cursor).run_requests

        # A cursor from before changes were counted is read as the digest it is.
        assert not tick(instance, environ, cursor=digest).run_requests


def test_sensor_skips_files_already_ingested(small_dataset: Path, tmp_path: Path) -> None:
    environ = raw_copy(small_dataset, tmp_path)
    settings = load_settings(environ)
    assets = [a for a in dg.load_assets_from_modules(MODULES) if dg.AssetKey("stl_pairs") in a.keys]
    with dg.DagsterInstance.ephemeral() as instance:
        result = dg.materialize(assets, resources=build_definitions(settings).resources, instance=instance)
        assert result.success
        # Switched on for the first time (no cursor): what the last ingestion read is not new.
        evaluation = tick(instance, environ)
        assert not evaluation.run_requests and "unchanged" in evaluation.skip_message


def test_sensor_names_missing_raw_files(tmp_path: Path) -> None:
    files = StlFiles(
        data_dir=str(tmp_path), pairs_path=str(tmp_path / "p.json"), categories_path="/c.json", demo=False
    )
    with dg.DagsterInstance.ephemeral() as instance:
        context = dg.build_sensor_context(instance=instance, resources={"stl_files": files})
        evaluation = stl_raw_files_sensor.evaluate_tick(context)
    assert not evaluation.run_requests
    assert str(tmp_path / "p.json") in evaluation.skip_message and "STL_PAIRS_PATH" in evaluation.skip_message
