import json
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest

from stl_pipeline.catalogue import ASSET_STORES, STORES, asset_path
from stl_pipeline.definitions import IO_MANAGERS, build_definitions, defs
from stl_pipeline.executor import _forkserver_steps
from stl_pipeline.settings import load_settings

ASSETS = {
    "stl_pairs": "ingest",
    "stl_products": "ingest",
    "product_images": "images",
    "scene_images": "images",
    "product_embeddings": "features",
    "scene_embeddings": "features",
    "stl_crop_embeddings": "features",
    "ctl_scene_embeddings": "features",
    "ctl_scene_context": "features",
    "stl_graph": "graph",
    "gat_model": "training",
    "sage_model": "training",
    "triplet_head": "training",
    "two_tower": "training",
    "retrieval_report": "evaluation",
    "embedding_report": "evaluation",
    "stl_champion": "champion",
    "product_index": "serving",
    "recommendations": "serving",
    "recommendation_gallery": "serving",
    **dict.fromkeys(
        (
            "hm_transactions",
            "hm_articles",
            "hm_customers",
            "hm_graph",
            "hm_sage_model",
            "hm_ranker_model",
            "hm_report",
            "hm_champion",
            "hm_recommendations",
        ),
        "personalized",
    ),
}
WARNS_ONLY = {"embedding_report_not_collapsed"}  # a collapsed embedding is news, not a stop


def test_definitions_load_with_the_interface_names() -> None:
    graph = defs.resolve_asset_graph()
    groups = {key.to_user_string(): graph.get(key).group_name for key in graph.get_all_asset_keys()}
    assert groups == ASSETS
    downstream = {"training", "evaluation", "champion", "serving"}
    expected = {
        "stl_full_pipeline": {a for a, g in ASSETS.items() if g != "personalized"},
        "hm_personalized": {a for a, g in ASSETS.items() if g == "personalized"},
        "stl_ingest": {a for a, g in ASSETS.items() if g in ("ingest", "images", "features")},
        "stl_retrain": {a for a, g in ASSETS.items() if g in ("graph", *downstream)},
    }
    for job, assets in expected.items():
        selected = defs.resolve_job_def(job).asset_layer.executable_asset_keys
        assert {key.to_user_string() for key in selected} == assets, job
    assert defs.resolve_schedule_def("stl_retrain_schedule").job_name == "stl_retrain"
    assert defs.resolve_schedule_def("hm_retrain_schedule").job_name == "hm_personalized"
    assert defs.resolve_sensor_def("stl_raw_files_sensor")


def test_every_asset_is_guarded_by_blocking_checks() -> None:
    graph = defs.resolve_asset_graph()
    checks = {key: graph.get_check_spec(key) for key in graph.asset_check_keys}
    guarded = {key.asset_key.to_user_string() for key in checks}
    assert guarded == set(ASSETS)
    assert all(spec.blocking for key, spec in checks.items() if key.name not in WARNS_ONLY)
    assert not any(spec.blocking for key, spec in checks.items() if key.name in WARNS_ONLY)
    names = {key.name for key in checks}
    assert {
        "stl_pairs_ids_valid",
        "stl_pairs_bboxes_valid",
        "stl_pairs_products_have_category",
        "stl_pairs_splits_disjoint",
        "product_images_success_rate",
        "scene_images_success_rate",
        "stl_graph_no_leakage",
        "stl_graph_edge_indices_valid",
        "stl_graph_scenes_connected",
        "gat_model_weights_finite",
        "sage_model_weights_finite",
        "triplet_head_weights_finite",
        "retrieval_report_complete",
        "challenger_passes_quality_gate",
        "product_index_finds_every_product",
        "recommendations_well_formed",
        "recommendation_gallery_complete",
        "hm_transactions_ids_known",
        "hm_transactions_windows_ordered",
        "hm_graph_temporal_split",
        "hm_ranker_model_features_before_the_week",
        "hm_report_complete",
        "hm_recommendations_complete",
    } <= names
    for asset in ("product_embeddings", "scene_embeddings", "stl_crop_embeddings", "ctl_scene_embeddings"):
        assert {f"{asset}_finite", f"{asset}_unit_norm", f"{asset}_complete"} <= names


def test_gpu_bound_assets_share_the_gpu_pool() -> None:
    graph = defs.resolve_asset_graph()
    pools = {key.to_user_string(): graph.get(key).pools for key in graph.get_all_asset_keys()}
    gpu = {name for name, assigned in pools.items() if assigned and "gpu" in assigned}
    assert gpu == {name for name, group in ASSETS.items() if group in ("features", "training")} | {
        "hm_sage_model",
        "hm_ranker_model",
    }
    # and, as Kubernetes jobs (STL_EXECUTOR=k8s), a card each
    for node in defs.resolve_job_def("stl_full_pipeline").graph.node_dict.values():
        k8s = json.loads(node.tags.get("dagster-k8s/config", "{}"))
        limits = k8s.get("container_config", {}).get("resources", {}).get("limits", {})
        assert (limits.get("nvidia.com/gpu") == "1") == (node.name in gpu), node.name


def test_the_executor_is_chosen_by_the_environment() -> None:
    from dagster_k8s import k8s_job_executor

    from stl_pipeline.executor import STEP_EXECUTOR

    assert build_definitions(load_settings({})).executor is STEP_EXECUTOR
    kubernetes = build_definitions(load_settings({"STL_EXECUTOR": "k8s"}))
    assert kubernetes.executor is k8s_job_executor
    with pytest.raises(ValueError, match="STL_EXECUTOR='celery'"):
        load_settings({"STL_EXECUTOR": "celery"})


def test_resources_show_the_environment_contract() -> None:
    resources = defs.resources
    assert resources["stl_files"].demo
    assert "{signature}" in resources["image_source"].url_template
    assert isinstance(resources["io_manager"], dg.ConfigurableIOManager)


HEAVY = ("torch", "torch_geometric", "timm", "mlflow", "sklearn", "scipy", "matplotlib", "faiss")


def test_the_code_location_loads_without_the_heavy_libraries() -> None:
    """The webserver, the daemon and every step process load the definitions; only the steps
    that compute should pay for torch and its company."""
    probe = f"import sys, stl_pipeline.definitions; print([m for m in {HEAVY!r} if m in sys.modules])"
    loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert loaded.stdout.strip() == "[]", loaded.stdout


def test_steps_fork_from_a_loaded_code_location_and_runs_may_still_choose() -> None:
    assert _forkserver_steps({"multiprocess": {}}) == {"multiprocess": {"start_method": {"forkserver": {}}}}
    spawn = {"multiprocess": {"start_method": {"spawn": {}}, "max_concurrent": 2}}
    assert _forkserver_steps(spawn) == spawn
    job = defs.resolve_job_def("stl_full_pipeline")
    for choice in ({"in_process": {}}, {"multiprocess": {"max_concurrent": 2}}):
        assert dg.validate_run_config(job, {"execution": {"config": choice}})
    with pytest.raises(dg.DagsterInvalidConfigError):
        dg.validate_run_config(job, {"execution": {"config": {"threads": {}}}})


def test_the_catalogue_names_each_assets_own_store() -> None:
    """Cold start and the benchmarks find files through catalogue.py; the assets declare
    their IO managers themselves: the two must agree."""
    graph = defs.resolve_asset_graph()
    for asset, store in ASSET_STORES.items():
        key = dg.AssetKey(asset)
        assert graph.get(key).io_manager_key == store, asset
        assert asset_path(Path("/data"), asset).parent == Path("/data") / STORES[store][0]
    assert set(IO_MANAGERS) == set(STORES)
