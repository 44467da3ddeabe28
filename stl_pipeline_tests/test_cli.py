import json
import os
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pandas as pd
import pytest

from stl_pipeline.features.assets import ALL_PARTITIONS
from stl_pipeline.features.partitions import PARTITIONS

BIN = Path(sys.executable).parent
IN_PROCESS = '{"execution": {"config": {"in_process": {}}}}'


def test_dagster_command_line_materializes_the_lineage(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / "dagster_home"
    home.mkdir()
    env = {**os.environ, "STL_DATA_DIR": str(tmp_path / "data"), "DAGSTER_HOME": str(home)}
    env = {k: v for k, v in env.items() if not k.startswith("STL_") or k == "STL_DATA_DIR"}
    env["STL_BACKBONE_IMAGE_SIZE"] = "64"  # the demo backbone, on smaller inputs: faster
    module = ["-m", "stl_pipeline.definitions"]

    validate = subprocess.run(
        [BIN / "dagster", "definitions", "validate", *module], env=env, capture_output=True, text=True
    )
    assert validate.returncode == 0, validate.stderr

    config = tmp_path / "in_process.yaml"
    config.write_text(IN_PROCESS)
    # Up to the graph (the demo test runs training), in one process: even forked from a loaded
    # code location, a process per asset and check costs about a second each. stl_ingest's runs
    # do every embedding partition in one step without being told; the graph then reads them all.
    ingest = [BIN / "dagster", "job", "execute", *module, "-j", "stl_ingest", "-c", config]
    graph = [
        BIN / "dagster",
        "asset",
        "materialize",
        *module,
        "--select",
        "stl_graph",
        "--config-json",
        IN_PROCESS,
    ]
    # A job of partitioned assets without partition tags, as Dagster's docs teach the command:
    # stl_embed's runs name their partitions (a backfill), and the error says how.
    embed = [BIN / "dagster", "job", "execute", *module, "-j", "stl_embed", "-c", config]
    for command in (ingest, embed, graph):
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
        if command is embed:
            assert done.returncode != 0 and "names no partition" in done.stderr, done.stderr[-3000:]
            assert json.dumps(ALL_PARTITIONS) in done.stderr
            continue
        assert done.returncode == 0, done.stderr[-3000:]
        assert "RUN_SUCCESS" in done.stderr

    manifest = pd.read_parquet(tmp_path / "data" / "tables" / "scene_images.parquet")
    assert len(manifest) > 0 and (manifest["status"] == "downloaded").all()
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    with dg.DagsterInstance.get() as instance:
        records = instance.get_run_records()
        statuses = [r.dagster_run.status for r in records]
        assert statuses == [
            dg.DagsterRunStatus.SUCCESS,
            dg.DagsterRunStatus.FAILURE,
            dg.DagsterRunStatus.SUCCESS,
        ]
        assert instance.get_latest_materialization_event(dg.AssetKey("stl_graph")) is not None
        ingested = instance.get_materialized_partitions(dg.AssetKey("product_embeddings"))
        assert ingested == set(PARTITIONS)

    # In a notebook: a partitioned asset without a partition key is all of its partitions.
    monkeypatch.setenv("STL_DATA_DIR", str(tmp_path / "data"))
    from stl_pipeline.definitions import build_definitions
    from stl_pipeline.settings import load_settings

    defs = build_definitions(load_settings())
    products = pd.read_parquet(tmp_path / "data" / "tables" / "product_images.parquet")
    vectors = defs.load_asset_value("product_embeddings")
    assert len(vectors) == len(set(vectors.keys)) == products["signature"].nunique()
    assert set(vectors.keys) == set(products["signature"])
    first = defs.load_asset_value("product_embeddings", partition_key=PARTITIONS[0])
    assert 0 < len(first) < len(vectors)


def test_stl_demo_records_its_run_for_the_ui(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """`make demo`'s command: the full job on the instance that `make ui` opens."""
    home = tmp_path / "dagster_home"
    home.mkdir()
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    monkeypatch.setenv("STL_DATA_DIR", str(tmp_path / "data"))
    from stl_pipeline import definitions
    from stl_pipeline.demo import main

    monkeypatch.setattr(definitions, "defs", definitions.build_definitions(definitions.load_settings()))
    assert main() == 0
    out = capsys.readouterr().out
    assert "of stl_full_pipeline: succeeded" in out and "of hm_personalized: succeeded" in out
    assert out.count("  pass  ") == 45 + 14 and "FAIL" not in out  # the quality gates hold on the demo
    assert "stl_champion: promoted" in out and "hm_champion: promoted" in out  # a fresh store
    assert "Retrieval report, held-out test scenes" in out and "| gat " in out
    assert "Personalized report, test window" in out and "| hm_sage " in out and "| oracle " in out
    # The STL run ends with the gallery and one sample list of each kind.
    tail = out[out.index("\nGallery: ") : out.index("\nRun ", out.index("\nGallery: "))]
    assert Path(tail.split()[1]).is_file()
    for kind in ("Similar to product", "Complementary to product", "Complete test scene"):
        assert kind in tail
    with dg.DagsterInstance.get() as instance:
        jobs = {record.dagster_run.job_name for record in instance.get_run_records()}
        assert jobs == {"stl_full_pipeline", "hm_personalized"}
    # The personalized run ends with a customer to ask about; the stored list answers.
    customer = out.split("stl-recommend customer ")[-1].split()[0]
    from stl_pipeline.serving.cli import main as recommend

    assert recommend(["customer", customer, "-k", "5", "--json"]) == 0
    answer = json.loads(capsys.readouterr().out)
    assert answer["personalized"] and [a["rank"] for a in answer["articles"]] == [1, 2, 3, 4, 5]
    assert recommend(["customer", "0" * 64, "-k", "3"]) == 0  # unknown: the best sellers
    assert "no recent purchase: last week's best sellers" in capsys.readouterr().out
    assert recommend(["customer", "../../etc/passwd"]) == 2
