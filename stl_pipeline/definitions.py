"""Wires assets, checks, jobs and resources; the environment is read in settings.py."""

import dagster as dg

from stl_pipeline.catalogue import store_dir
from stl_pipeline.champion import assets as champion_assets
from stl_pipeline.evaluation import assets as evaluation_assets
from stl_pipeline.executor import step_executor
from stl_pipeline.features import assets as feature_assets
from stl_pipeline.graph import assets as graph_assets
from stl_pipeline.guards import blocking_checks
from stl_pipeline.images import assets as image_assets
from stl_pipeline.ingest import assets as ingest_assets
from stl_pipeline.io_managers import (
    EmbeddingIOManager,
    GraphIOManager,
    IndexIOManager,
    ModelIOManager,
    ParquetIOManager,
)
from stl_pipeline.orchestration import (
    hm_personalized,
    hm_retrain_schedule,
    retrain_schedule,
    stl_embed,
    stl_full_pipeline,
    stl_ingest,
    stl_raw_files_sensor,
    stl_retrain,
)
from stl_pipeline.personalized.assets import MODULES as PERSONALIZED_MODULES
from stl_pipeline.resources import (
    BackboneResource,
    HmFiles,
    ImageSource,
    MlflowTracker,
    QualityGate,
    StlFiles,
    TorchDevice,
)
from stl_pipeline.serving import assets as serving_assets
from stl_pipeline.settings import Settings, load_settings
from stl_pipeline.training import assets as training_assets

IO_MANAGERS = {
    manager.key: manager
    for manager in (ParquetIOManager, EmbeddingIOManager, GraphIOManager, ModelIOManager, IndexIOManager)
}
MODULES = [
    ingest_assets,
    image_assets,
    feature_assets,
    graph_assets,
    training_assets,
    evaluation_assets,
    champion_assets,
    serving_assets,
    *PERSONALIZED_MODULES,
]


def build_definitions(settings: Settings) -> dg.Definitions:
    assets, checks = dg.load_assets_from_modules(MODULES), dg.load_asset_checks_from_modules(MODULES)
    blocking = blocking_checks([*assets, *checks])
    return dg.Definitions(
        executor=step_executor(settings.executor),
        assets=assets,
        asset_checks=checks,
        jobs=[stl_full_pipeline, stl_ingest, stl_embed, stl_retrain, hm_personalized],
        schedules=[retrain_schedule(settings.retrain_cron), hm_retrain_schedule(settings.hm_retrain_cron)],
        sensors=[stl_raw_files_sensor],
        resources={
            "stl_files": StlFiles(
                data_dir=str(settings.data_dir),
                pairs_path=str(settings.pairs_path),
                categories_path=str(settings.categories_path),
                demo=settings.demo,
            ),
            "image_source": ImageSource(
                url_template=settings.image_url_template, allowed_hosts=list(settings.allowed_hosts)
            ),
            "torch_device": TorchDevice(device=settings.device, precision=settings.precision),
            "backbone": BackboneResource(
                model=settings.backbone,
                weights=settings.backbone_weights,  # type: ignore[arg-type]
                checkpoint=settings.backbone_checkpoint,
                image_size=settings.image_size,
            ),
            **{
                key: manager(base_dir=str(store_dir(settings.data_dir, key)), blocking_checks=blocking)
                for key, manager in IO_MANAGERS.items()
            },
            "hm_files": HmFiles(
                data_dir=str(settings.data_dir),
                transactions_path=str(settings.hm_paths[0]),
                articles_path=str(settings.hm_paths[1]),
                customers_path=str(settings.hm_paths[2]),
                demo=settings.hm_demo,
            ),
            "quality_gate": QualityGate(),
            "mlflow": MlflowTracker(
                tracking_uri=settings.mlflow_tracking_uri,
                artifact_root=settings.mlflow_artifact_root,
            ),
        },
    )


defs = build_definitions(load_settings())
