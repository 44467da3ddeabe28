from pathlib import Path

import dagster as dg
import numpy as np
import pandas as pd
import pytest
import torch
from mlflow import MlflowClient

from stl_pipeline.catalogue import read_embeddings
from stl_pipeline.definitions import MODULES, build_definitions
from stl_pipeline.device import effective_precision
from stl_pipeline.evaluation.report import overall
from stl_pipeline.features.assets import ALL_PARTITIONS
from stl_pipeline.features.partitions import PARTITIONS
from stl_pipeline.graph.schema import CONTAINS
from stl_pipeline.graph.store import load_graph
from stl_pipeline.images.download import DOWNLOADED, FAILED
from stl_pipeline.models.config import TrainConfig
from stl_pipeline.registry import MODEL_ASSETS, MODELS
from stl_pipeline.resources import StlFiles
from stl_pipeline.serving.index import load_index
from stl_pipeline.settings import load_settings
from stl_pipeline_tests.http_server import ImageServer
from stl_pipeline_tests.lineage import generated_environ

ASSETS = dg.load_assets_from_modules(MODULES)
CHECKS = dg.load_asset_checks_from_modules(MODULES)


def run(
    environ: dict,
    groups: tuple[str, ...] = ("ingest", "images"),
    instance: dg.DagsterInstance | None = None,
    **stl_files: object,
) -> tuple[dg.ExecuteInProcessResult, Path]:
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
    result = dg.materialize(
        [*ASSETS, *CHECKS],
        selection=dg.AssetSelection.groups(*groups),
        resources=resources,
        tags=ALL_PARTITIONS,
        raise_on_error=False,
        instance=instance,
    )
    return result, settings.data_dir


def retrain_job() -> dg.JobDefinition:
    """The retraining job, from the definitions the environment gives now. Its own
    reconstructable target: Dagster caches a target's job in the process."""
    from stl_pipeline.orchestration import stl_retrain

    return build_definitions(load_settings()).resolve_job_def(stl_retrain.name)


def metadata(result: dg.ExecuteInProcessResult | dg.JobExecutionResult, asset: str) -> dict:
    """An asset's materialization metadata; for a partitioned asset, the run's values with the
    partitions' counts summed."""
    found = [
        {k: v.value for k, v in e.step_materialization_data.materialization.metadata.items()}
        for e in result.get_asset_materialization_events()
        if e.asset_key.to_user_string() == asset
    ]
    if len(found) > 1:
        return found[0] | {"count": sum(m["count"] for m in found), "partitions": len(found)}
    (only,) = found
    return only


def checks(result: dg.ExecuteInProcessResult | dg.JobExecutionResult) -> dict[str, bool]:
    return {e.check_name: e.passed for e in result.get_asset_check_evaluations()}


def test_demo_lineage_over_http_then_resumed(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    with ImageServer(static_dir=data_dir / "demo" / "images") as server:
        environ = {"STL_DATA_DIR": str(data_dir), "STL_IMAGE_URL_TEMPLATE": server.url()}
        result, _ = run(environ, demo_products=120, demo_scenes=60)
        assert result.success
        assert all(checks(result).values()) and len(checks(result)) == 11

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


def test_features_and_graph_materialize_on_generated_data(tmp_path: Path, small_dataset: Path) -> None:
    environ = generated_environ(tmp_path, small_dataset)
    groups = ("ingest", "images", "features", "graph")
    instance = dg.DagsterInstance.ephemeral()
    result, data_dir = run(environ, groups=groups, instance=instance)
    assert result.success
    evaluated = checks(result)
    assert len(evaluated) == 35 and all(evaluated.values()), evaluated

    pairs = pd.read_parquet(data_dir / "tables" / "stl_pairs.parquet")
    products = read_embeddings(data_dir, "product_embeddings")
    crops = read_embeddings(data_dir, "stl_crop_embeddings")
    assert products.dim == 1280 and len(products) == 120
    assert set(crops.keys) == set(pairs["pair_id"])
    assert products.info["model"] == "tf_efficientnet_lite0" and "packaged" in products.info["weights"]
    meta = metadata(result, "product_embeddings")
    assert meta["computed"] == 120 and meta["images_per_second"] > 0
    assert meta["partitions"] == 16 and meta["count"] == meta["embedded"] == 120
    # The default precision, auto, is what this CPU runs fast: nothing to warn about.
    assert meta["precision"] == effective_precision(torch.device("cpu"), "auto")
    assert not [e for e in instance.all_logs(result.run_id) if "autocast" in e.user_message]
    assert sorted(p.stem for p in (data_dir / "embeddings" / "product_embeddings").iterdir()) == list(
        PARTITIONS
    )
    assert (data_dir / "plots" / "product_embedding_map.png").stat().st_size > 1000
    assert {"category_distribution", "bbox_coverage", "category_cooccurrence"} <= set(
        metadata(result, "stl_pairs")
    )

    graph, info = load_graph(data_dir / "graph" / "stl_graph.safetensors")
    graph_meta = metadata(result, "stl_graph")
    assert graph["product"].num_nodes == graph_meta["nodes_product"] == 120
    assert graph[CONTAINS].edge_index.shape[1] == (pairs["split"] == "train").sum()
    assert info["backbone"]["model"] == "tf_efficientnet_lite0"

    # A crop ranks its own product far above chance (median rank len/2): the embeddings carry signal.
    positions = products.positions()
    sims = crops.vectors @ products.vectors.T
    truth = np.array([positions[p] for p in pairs.set_index("pair_id").loc[crops.keys, "product"]])
    rank = (sims > sims[np.arange(len(truth)), truth][:, None]).sum(axis=1)
    assert np.median(rank) < len(products) / 5

    context = read_embeddings(data_dir, "ctl_scene_context")
    regions = read_embeddings(data_dir, "ctl_scene_embeddings")
    assert context.info["source"] == "masked+items" and context.info["grid"] == "1"
    # The masked scene's token first, then one per other garment of the scene (the generator
    # puts each in its own place).
    others = pairs.groupby("scene")["pair_id"].transform("size") - 1
    expected = {f"{pair}/{t}" for pair, n in zip(pairs["pair_id"], others, strict=True) for t in range(1 + n)}
    assert set(context.keys) == expected and len(expected) > len(regions)

    again, _ = run(environ, groups=("features",))
    assert again.success and metadata(again, "scene_embeddings")["computed"] == 0
    assert metadata(again, "ctl_scene_context")["computed"] == 0


def test_training_and_report_materialize_and_track_runs_in_mlflow(
    tmp_path: Path, small_dataset: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The retraining job through Dagster's multiprocess executor on an instance without pool
    limits, so the four training steps start together on a fresh MLflow store. What it reads
    is materialized in process first: a spawned step starts a Python of its own, and the
    upstream steps would only add start-ups."""
    environ = generated_environ(tmp_path, small_dataset)
    for name, value in environ.items():  # the step processes load the definitions from these
        monkeypatch.setenv(name, value)
    settings = load_settings(environ)
    few = {"epochs": 6, "hidden": 32, "checkpoint_every": 2}
    run_config = {
        "ops": {
            "gat_model": {"config": few},
            "sage_model": {"config": {**few, "lr": 0.01}},
            "triplet_head": {"config": {**few, "hidden": 64}},
            "two_tower": {"config": {**few, "hidden": 64}},
        },
        # a smoke test: the gate is tested elsewhere
        "resources": {"quality_gate": {"config": {"ctl_hr10_margin": -1.0}}},
        # spawn: steps forked from this process's forkserver would have the environment of the
        # test that started it
        "execution": {"config": {"multiprocess": {"max_concurrent": 4, "start_method": {"spawn": {}}}}},
    }
    upstream, _ = run(environ, groups=("ingest", "images", "features"))
    assert upstream.success
    with dg.instance_for_test() as instance:
        result = dg.execute_job(
            dg.reconstructable(retrain_job),
            instance,
            run_config=run_config,
            tags=ALL_PARTITIONS,
            raise_on_error=False,
        )
        assert result.success
        steps = [e for e in instance.all_logs(result.run_id) if e.dagster_event and e.step_key]
    training = {spec.asset for spec in MODELS}
    started = {e.step_key: e.timestamp for e in steps if e.dagster_event.is_step_start}
    ended = {e.step_key: e.timestamp for e in steps if e.dagster_event.is_step_success}
    started, ended = ({k: v for k, v in d.items() if k in training} for d in (started, ended))
    assert set(started) == set(ended) == training
    running_together = [s for s in training if started[s] < min(ended.values())]
    assert len(running_together) >= 3, (started, ended)

    evaluated = checks(upstream) | checks(result)
    # Six epochs leave the learned embeddings bunched together: the warning may fire here.
    blocking = {k: v for k, v in evaluated.items() if k != "embedding_report_not_collapsed"}
    assert len(evaluated) == 45 and all(blocking.values()), evaluated

    report = pd.read_parquet(settings.data_dir / "tables" / "retrieval_report.parquet")
    methods = {"random", "popularity", "frozen_knn", "triplet_head", "two_tower", "gat", "sage", "oracle"}
    assert set(report["method"]) == methods and set(report["task"]) == {"stl", "ctl"}
    # Dense scenes: every CTL query has other annotated garments, so its context rows are
    # all and annotated, the same queries with the same figures; none is image-only.
    contexts = set(report[["task", "context"]].itertuples(index=False, name=None))
    assert contexts == {("stl", "all"), ("ctl", "all"), ("ctl", "annotated")}
    assert len(report) == len(methods) * 2 * 3 * 2  # splits x (task, context) x pools
    ctl = report[report["task"] == "ctl"].set_index(["split", "method", "pool", "context"])["HR@10"]
    assert (ctl.xs("all", level="context") == ctl.xs("annotated", level="context")).all()
    report = overall(report)
    catalogue = report[(report["pool"] == "catalogue")].set_index(["split", "task", "method"])["MRR"]
    for split in ("val", "test"):
        for task in ("stl", "ctl"):
            assert catalogue[split, task, "oracle"] > catalogue[split, task, "random"]
    for metric in ("HR@10", "MRR", "AUC"):  # each with its 95% bootstrap interval
        low, high = report[f"{metric}_low"], report[f"{metric}_high"]
        assert ((low <= report[metric]) & (report[metric] <= high)).all(), metric
    assert (report.loc[report["method"] == "oracle", "of_oracle_HR@10"] == 1).all()
    # Each row's HR@10 lead over the method without a graph it leads least surely, paired.
    lead = report[["margin_HR@10_low", "margin_HR@10", "margin_HR@10_high"]]
    assert (lead.diff(axis=1).iloc[:, 1:] >= 0).all().all() and lead.notna().all().all()
    assert set(report["margin_over"]) <= {"popularity", "frozen_knn", "triplet_head", "two_tower"}
    assert (report["margin_over"] != report["method"]).all()

    client = MlflowClient(tracking_uri=settings.mlflow_tracking_uri)
    experiment = client.get_experiment_by_name("stl-pipeline")
    runs = client.search_runs([experiment.experiment_id])
    assert {r.data.tags["asset"] for r in runs} == {"gat_model", "sage_model", "triplet_head", "two_tower"}
    test_rows = report[report["split"] == "test"].set_index(["method", "task", "pool"])
    for tracked in runs:
        assert tracked.data.tags["dagster_run_id"] == result.run_id and tracked.info.status == "FINISHED"
        assert tracked.data.params["epochs"] == "6" and "val_mrr" in tracked.data.metrics
        assert len(client.get_metric_history(tracked.info.run_id, "loss")) == 6
        assert {a.path for a in client.list_artifacts(tracked.info.run_id, "checkpoint")} == {
            "checkpoint/record.pt",
            "checkpoint/config.json",
        }
        assert {a.path for a in client.list_artifacts(tracked.info.run_id, "reports")} == {
            f"reports/{name}.{ext}"
            for name in ("retrieval_report", "embedding_report")
            for ext in ("csv", "md")
        }
        assert "training_curves.png" in {a.path for a in client.list_artifacts(tracked.info.run_id)}
        method = {spec.asset: spec.method for spec in MODELS}[tracked.data.tags["asset"]]
        logged = tracked.data.metrics["test_ctl_same_category_hr_at_10"]
        assert logged == pytest.approx(test_rows.loc[(method, "ctl", "same_category"), "HR@10"])
        lead = tracked.data.metrics["test_ctl_same_category_margin_hr_at_10_low"]
        assert lead == pytest.approx(test_rows.loc[(method, "ctl", "same_category"), "margin_HR@10_low"])
        assert "embedding_mean_pairwise_cosine" in tracked.data.metrics
    # Each run logs the learning rate it trained with: the registry's, or the run config's.
    expected = {spec.asset: str(spec.defaults.get("lr", TrainConfig().lr)) for spec in MODELS}
    assert {r.data.tags["asset"]: r.data.params["lr"] for r in runs} == expected | {"sage_model": "0.01"}
    assert metadata(result, "gat_model")["gat_model_training_curves"].startswith("![")
    assert (settings.data_dir / "plots" / "triplet_head_training_curves.png").stat().st_size > 1000

    index = load_index(settings.data_dir / "serving" / "product_index.safetensors")
    assert index.ids == list(
        load_graph(settings.data_dir / "graph" / "stl_graph.safetensors")[0]["product"].ids
    )
    # What is served is the champion: on a fresh store, the challenger that passed its gate.
    champion = metadata(result, "stl_champion")
    method = champion["serving"].split()[0]
    assert champion["decision"] == "promoted" and champion["challenger"] == champion["serving"]
    assert (
        index.info["model"] == method
        and index.info["mlflow_run_id"] == metadata(result, MODEL_ASSETS[method])["mlflow_run_id"]
    )

    embedding = pd.read_parquet(settings.data_dir / "tables" / "embedding_report.parquet")
    assert list(embedding["embedding"]) == ["frozen_knn", "triplet_head", "two_tower", "gat", "sage"]
    figures = embedding.drop(columns=["embedding", "graph_density"])
    assert figures.notna().all().all()
    graph = load_graph(settings.data_dir / "graph" / "stl_graph.safetensors")[0]
    frozen = torch.nn.functional.normalize(graph["product"].x[:, :1280].double(), dim=1)
    gram = frozen @ frozen.T  # every pair, the slow way
    expected = float((gram.sum() - gram.diagonal().sum()) / (len(gram) * (len(gram) - 1)))
    cosine = embedding.set_index("embedding")["mean_pairwise_cosine"]
    assert cosine["frozen_knn"] == pytest.approx(expected, abs=1e-6)
    assert embedding.set_index("embedding")["graph_density"].notna().to_dict() == {
        "frozen_knn": False,
        "triplet_head": False,
        "two_tower": False,
        "gat": True,
        "sage": True,
    }
    assert ((embedding["ctl_coverage@10"] > 0) & (embedding["ctl_coverage@10"] <= 1)).all()
    assert embedding.set_index("embedding")["dim"].to_dict() == {
        "frozen_knn": 1280,
        "triplet_head": 128,
        "two_tower": 128,
        "gat": 128,
        "sage": 128,
    }
    recommended = pd.read_parquet(settings.data_dir / "tables" / "recommendations.parquet")
    assert set(recommended["kind"]) == {"similar", "complementary", "complete_the_look"}
    assert (recommended.groupby(["kind", "query"]).size().loc["similar"] <= 10).all()
    rec_meta = metadata(result, "recommendations")
    assert rec_meta["model"] == method and 0 < rec_meta["coverage_similar"] <= 1
    # A fraction of the test pairs (the quality test checks that it beats the product vectors').
    assert rec_meta["complementary_test_pairs"] > 0
    assert 0 <= rec_meta["complementary_test_hit_rate@10"] <= 1
    gallery = metadata(result, "recommendation_gallery")
    page = Path(gallery["gallery"]).read_text()
    shown = pd.read_parquet(settings.data_dir / "tables" / "recommendation_gallery.parquet")
    labels = {"popularity", "frozen kNN", "triplet head", "two-tower", "GAT", "GraphSAGE"}
    assert set(shown["method"]) == labels
    assert all(pair[:12] in page for pair in shown["pair_id"])
    assert (settings.data_dir / "plots" / "recommendation_gallery_preview.png").stat().st_size > 1000
    (version,) = client.search_model_versions("name = 'stl-gat'")
    assert version.run_id == metadata(result, "gat_model")["mlflow_run_id"]
