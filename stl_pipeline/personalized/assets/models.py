"""hm_sage_model (GraphSAGE) and hm_ranker_model (LightGBM over candidates): trained, tracked, registered."""

import dagster as dg
import pandas as pd

from stl_pipeline.artifacts import HeteroData
from stl_pipeline.executor import GPU_POOL, GPU_STEP_TAGS
from stl_pipeline.guards import weights_finite
from stl_pipeline.personalized.config import GROUP, RANKER_REGISTERED, REGISTERED, HmTrainConfig, RankerConfig
from stl_pipeline.resources import HmFiles, MlflowTracker, TorchDevice
from stl_pipeline.run_config import config_class, to_dataclass

HmSageConfig = config_class(
    "HmSageConfig", HmTrainConfig, dg.Config, __name__, "How hm_sage_model trains (personalized/model.py)."
)


@dg.asset(group_name=GROUP, pool=GPU_POOL, op_tags=GPU_STEP_TAGS, io_manager_key="model_io_manager")
def hm_sage_model(
    context: dg.AssetExecutionContext,
    config: HmSageConfig,  # type: ignore[valid-type]
    hm_graph: HeteroData,
    torch_device: TorchDevice,
    mlflow: MlflowTracker,
    hm_files: HmFiles,
) -> dg.Output[dict]:
    """Heterogeneous GraphSAGE link prediction, trained week by week on snapshots, early-stopped
    on validation MAP@12, tracked and registered in MLflow as ``hm-sage``."""
    import hashlib
    import json
    from dataclasses import asdict

    from stl_pipeline.device import describe
    from stl_pipeline.personalized.graph import BUYS
    from stl_pipeline.personalized.model import model_record, train_hm
    from stl_pipeline.plots import training_curves
    from stl_pipeline.tracking import publish

    train_config = to_dataclass(HmTrainConfig, config.model_dump())
    params = asdict(train_config)
    device = torch_device.torch_device()
    # A retry of an interrupted run on the same graph resumes; new data or knobs start afresh.
    fingerprint = {k: hm_graph.info[k] for k in ("customers_sha256", "articles_sha256", "end_day")}
    fingerprint |= {"purchases": int(hm_graph[BUYS].edge_index.shape[1]), **params}
    digest = hashlib.blake2b(json.dumps(fingerprint, sort_keys=True).encode(), digest_size=8).hexdigest()
    folder = hm_files.path("checkpoints", "hm_sage_model", digest)
    with mlflow.training_run(context, "hm_sage", {**params, "device": describe(device)}) as run:
        result = train_hm(
            hm_graph,
            train_config,
            device,
            folder,
            on_epoch=lambda epoch, metrics: run.log_metrics(metrics, step=epoch),
        )
        record = model_record(result, hm_graph, train_config, run.run_id) | {"registered": REGISTERED}
        curves = training_curves(
            result.history, result.best_epoch, "hm_sage_model", "val_MAP@12", "validation MAP@12"
        )
        version = publish(
            run,
            folder,
            record,
            params,
            curves,
            {
                "best_epoch": result.best_epoch,
                "best_val_MAP@12": result.best_val_map,
                "popularity_val_MAP@12": result.popularity_val_map,
            },
            REGISTERED,
            {"asset": "hm_sage_model", "dagster_run_id": context.run.run_id},
        )
    record["version"] = version
    return dg.Output(
        record,
        metadata={
            "mlflow_run_id": run.run_id,
            "mlflow_model": f"{REGISTERED} version {version}",
            "best_epoch": result.best_epoch,
            "best_val_MAP@12": round(result.best_val_map, 4),
            "popularity_val_MAP@12": round(result.popularity_val_map, 4),
            "epochs_run": result.epochs_run,
            "stopped_early": result.stopped_early,
            "seconds": round(result.seconds, 2),
            "device": describe(device),
            "checkpoints": dg.MetadataValue.path(str(folder)),
        },
    )


hm_sage_model_weights_finite = weights_finite("hm_sage_model", "state")


HmRankerConfig = config_class(
    "HmRankerConfig",
    RankerConfig,
    dg.Config,
    __name__,
    "How hm_ranker_model generates candidates and trains (personalized/candidates.py, ranker.py).",
)


@dg.asset(group_name=GROUP, pool=GPU_POOL, op_tags=GPU_STEP_TAGS, io_manager_key="model_io_manager")
def hm_ranker_model(
    context: dg.AssetExecutionContext,
    config: HmRankerConfig,  # type: ignore[valid-type]
    hm_graph: HeteroData,
    hm_sage_model: dict,
    torch_device: TorchDevice,
    mlflow: MlflowTracker,
    hm_files: HmFiles,
) -> dg.Output[dict]:
    """LightGBM lambdarank over each customer's candidates (repurchase, co-purchase, colour
    variants, popularity by segment, the GNN's top-N), trained on the weeks before validation
    with features from each week's snapshot, early-stopped on validation MAP@12, tracked and
    registered in MLflow as ``hm-ranker``."""
    from dataclasses import asdict

    from stl_pipeline.device import describe
    from stl_pipeline.personalized.ranker import importance_table, ranker_record, train_ranker
    from stl_pipeline.plots import training_curves
    from stl_pipeline.reporting import markdown
    from stl_pipeline.tracking import publish

    ranker_config = to_dataclass(RankerConfig, config.model_dump())
    params = asdict(ranker_config)
    device = torch_device.torch_device()
    with mlflow.training_run(
        context,
        "hm_ranker",
        {**params, "device": describe(device), "hm_sage_version": hm_sage_model["version"]},
    ) as run:
        result = train_ranker(
            hm_graph,
            hm_sage_model,
            ranker_config,
            device,
            on_round=lambda step, metrics: run.log_metrics(metrics, step=step) if step % 10 == 0 else None,
        )
        record = ranker_record(result, hm_graph, ranker_config, hm_sage_model, run.run_id)
        record["registered"] = RANKER_REGISTERED
        curves = training_curves(
            result.history,
            result.best_iteration,
            "hm_ranker_model",
            "val_map@12",
            "validation MAP@12 of the candidates",
            ("train_map@12", "training MAP@12 of the candidates"),
        )
        importance = importance_table(result.importance)
        run.log_text(importance.to_csv(index=False), "reports/feature_importance.csv")
        version = publish(
            run,
            hm_files.path("checkpoints", "hm_ranker_model", run.run_id),
            record,
            params,
            curves,
            {
                "best_iteration": result.best_iteration,
                "best_val_MAP@12": result.best_val_map,
                "training_rows": result.training_rows,
            },
            RANKER_REGISTERED,
            {"asset": "hm_ranker_model", "dagster_run_id": context.run.run_id},
        )
    record["version"] = version
    return dg.Output(
        record,
        metadata={
            "mlflow_run_id": run.run_id,
            "mlflow_model": f"{RANKER_REGISTERED} version {version}",
            "hm_sage_model": f"{REGISTERED} version {hm_sage_model['version']}",
            "best_iteration": result.best_iteration,
            "best_val_MAP@12": round(result.best_val_map, 4),
            "training_rows": result.training_rows,
            "feature_importance": dg.MetadataValue.md(markdown(importance.round(4))),
            "seconds": round(result.seconds, 2),
            "device": describe(device),
        },
    )


@dg.asset_check(
    asset="hm_ranker_model",
    blocking=True,
    additional_ins={"hm_graph": dg.AssetIn(), "hm_transactions": dg.AssetIn()},
    description="The ranker's features of the first training week and of validation, recounted from "
    "hm_transactions' earlier rows, are what it learned from: no later purchase reaches them.",
)
def hm_ranker_model_features_before_the_week(
    hm_ranker_model: dict, hm_graph: HeteroData, hm_transactions: pd.DataFrame
) -> dg.AssetCheckResult:
    from stl_pipeline.personalized.windows import feature_violations

    problems = feature_violations(hm_graph, hm_transactions, RankerConfig(**hm_ranker_model["config"]))
    return dg.AssetCheckResult(
        passed=not problems,
        metadata={"violations": len(problems)},
        description="; ".join(problems[:5]) or None,
    )
