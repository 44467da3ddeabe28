from pathlib import Path

import dagster as dg
import pandas as pd

from stl_pipeline.definitions import MODULES, build_definitions
from stl_pipeline.images.download import DOWNLOADED, FAILED
from stl_pipeline.resources import StlFiles
from stl_pipeline.settings import load_settings
from stl_pipeline_tests.http_server import ImageServer

ASSETS = dg.load_assets_from_modules(MODULES)
CHECKS = dg.load_asset_checks_from_modules(MODULES)


def run(environ: dict, **stl_files: object) -> tuple[dg.ExecuteInProcessResult, Path]:
    settings = load_settings(environ)
    resources = dict(build_definitions(settings).resources)
    if stl_files:
        resources["stl_files"] = StlFiles(
            data_dir=str(settings.data_dir),
            pairs_path=str(settings.pairs_path),
            categories_path=str(settings.categories_path),
            demo=settings.demo,
            **stl_files,
        )
    result = dg.materialize([*ASSETS, *CHECKS], resources=resources, raise_on_error=False)
    return result, settings.data_dir


def metadata(result: dg.ExecuteInProcessResult, asset: str) -> dict:
    (event,) = [e for e in result.get_asset_materialization_events() if e.asset_key.to_user_string() == asset]
    return {k: v.value for k, v in event.step_materialization_data.materialization.metadata.items()}


def checks(result: dg.ExecuteInProcessResult) -> dict[str, bool]:
    return {e.check_name: e.passed for e in result.get_asset_check_evaluations()}


def test_demo_lineage_over_http_then_resumed(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    with ImageServer(static_dir=data_dir / "demo" / "images") as server:
        environ = {"STL_DATA_DIR": str(data_dir), "STL_IMAGE_URL_TEMPLATE": server.url()}
        result, _ = run(environ, demo_products=120, demo_scenes=60)
        assert result.success
        assert all(checks(result).values()) and len(checks(result)) == 7

        pairs = pd.read_parquet(data_dir / "tables" / "stl_pairs.parquet")
        products = pd.read_parquet(data_dir / "tables" / "stl_products.parquet")
        assert len(pairs) == metadata(result, "stl_pairs")["pairs"]
        assert pairs["scene"].nunique() == 60 and len(products) == 120
        assert set(pairs["split"]) == {"train", "val", "test"}
        manifest = pd.read_parquet(data_dir / "tables" / "product_images.parquet")
        assert (manifest["status"] == DOWNLOADED).all()
        assert metadata(result, "scene_images")["success_rate"] == 1.0
        assert sum(server.hits.values()) == 180

        again, _ = run(environ, demo_products=120, demo_scenes=60)
        assert again.success
        assert metadata(again, "product_images")["cached"] == 120
        assert sum(server.hits.values()) == 180  # nothing fetched twice


def test_malformed_input_fails_with_the_quarantine_named(tmp_path: Path, small_dataset: Path) -> None:
    lines = (small_dataset / "fashion.json").read_text().splitlines()
    lines[3] = lines[3].replace('"bbox": [', '"bbox": [2.5, ')
    for i in (7, 8, 9):
        lines[i] = "{truncated"  # 4 of ~200 lines: over the default limit of 1%
    broken = tmp_path / "fashion.json"
    broken.write_text("\n".join(lines) + "\n")
    environ = {
        "STL_DATA_DIR": str(tmp_path / "data"),
        "STL_PAIRS_PATH": str(broken),
        "STL_CATEGORIES_PATH": str(small_dataset / "fashion-cat.json"),
    }
    result, data_dir = run(environ)
    assert not result.success
    (failure,) = [e for e in result.all_events if e.event_type == dg.DagsterEventType.STEP_FAILURE]
    message = failure.step_failure_data.error.cause.message if failure.step_failure_data.error.cause else ""
    message += failure.step_failure_data.error.message
    quarantine_path = data_dir / "quarantine" / "stl_pairs.parquet"
    assert str(quarantine_path) in message and f"{broken}:4:" in message
    quarantine = pd.read_parquet(quarantine_path)
    assert sorted(quarantine["line"]) == [4, 8, 9, 10]
    assert not (data_dir / "tables" / "stl_pairs.parquet").exists()


def test_dead_image_source_blocks_on_the_success_check(tmp_path: Path, small_dataset: Path) -> None:
    with ImageServer() as server:  # every image is a 404
        environ = {
            "STL_DATA_DIR": str(tmp_path / "data"),
            "STL_PAIRS_PATH": str(small_dataset / "fashion.json"),
            "STL_CATEGORIES_PATH": str(small_dataset / "fashion-cat.json"),
            "STL_IMAGE_URL_TEMPLATE": server.url(),
        }
        result, data_dir = run(environ)
    assert not result.success
    assert checks(result)["product_images_success_rate"] is False
    assert checks(result)["stl_pairs_bboxes_valid"] is True
    manifest = pd.read_parquet(data_dir / "tables" / "product_images.parquet")
    assert (manifest["status"] == FAILED).all() and (manifest["http_status"] == 404).all()


def test_quarantine_table_is_written_even_when_clean(tmp_path: Path, small_dataset: Path) -> None:
    settings = load_settings(
        {
            "STL_DATA_DIR": str(tmp_path / "data"),
            "STL_PAIRS_PATH": str(small_dataset / "fashion.json"),
            "STL_CATEGORIES_PATH": str(small_dataset / "fashion-cat.json"),
        }
    )
    ingest_only = [a for a in ASSETS if dg.AssetKey("stl_pairs") in a.keys]
    result = dg.materialize(ingest_only, resources=build_definitions(settings).resources)
    assert result.success
    assert pd.read_parquet(settings.data_dir / "quarantine" / "stl_pairs.parquet").empty
    assert metadata(result, "stl_pairs")["quarantined"] == 0
