"""Assets of the ``training`` group: the recommenders of registry.py, tracked in MLflow."""

import hashlib
import json
from dataclasses import asdict

import dagster as dg
import pandas as pd

from stl_pipeline.artifacts import HeteroData
from stl_pipeline.executor import GPU_POOL, GPU_STEP_TAGS
from stl_pipeline.models.config import TrainConfig
from stl_pipeline.plots import training_curves
from stl_pipeline.registry import MODELS, ModelSpec
from stl_pipeline.resources import MlflowTracker, StlFiles, TorchDevice
from stl_pipeline.run_config import config_class, to_dataclass
from stl_pipeline.vectors import Embeddings

GROUP, IO = "training", "model_io_manager"


def _prior(best: dict) -> dict[str, float]:
    """The fitted popularity weight of each task and the validation MRRs with it."""
    from stl_pipeline.models.recommender import TASKS

    weights = best["model"].get("prior.weight")
    if weights is None:
        return {}
    fitted = {f"popularity_weight_{task}": float(w) for task, w in zip(TASKS, weights.tolist(), strict=True)}
    return fitted | {f"prior_{key}": value for key, value in best.get("prior_val_mrr", {}).items()}


def _train_asset(spec: ModelSpec, config_class: type[dg.Config]) -> dg.AssetsDefinition:
    name, kind, registered = spec.asset, spec.kind, spec.registered

    @dg.asset(
        name=name,
        group_name=GROUP,
        pool=GPU_POOL,
        op_tags=GPU_STEP_TAGS,
        io_manager_key=IO,
        description=spec.description,
    )
    def trained(
        context: dg.AssetExecutionContext,
        config: config_class,  # type: ignore[valid-type]
        stl_graph: HeteroData,
        stl_pairs: pd.DataFrame,
        stl_crop_embeddings: Embeddings,
        ctl_scene_embeddings: Embeddings,
        ctl_scene_context: Embeddings,
        torch_device: TorchDevice,
        mlflow: MlflowTracker,
        stl_files: StlFiles,
    ) -> dg.Output[dict]:
        import torch

        from stl_pipeline.checkpoints import BEST, load_checkpoint
        from stl_pipeline.device import describe
        from stl_pipeline.models.record import build_model, model_record, schema
        from stl_pipeline.models.splits import split_queries
        from stl_pipeline.tracking import publish
        from stl_pipeline.training.loop import check_context, train

        train_config = to_dataclass(TrainConfig, config.model_dump(), kind=kind)
        check_context(train_config, ctl_scene_context.info)
        params = asdict(train_config)
        queries = {"stl": stl_crop_embeddings, "ctl": ctl_scene_embeddings}
        tokens = ctl_scene_context if train_config.context else None
        train_q, _ = split_queries(stl_graph, stl_pairs, queries, "train", tokens)
        val_q, _ = split_queries(stl_graph, stl_pairs, queries, "val", tokens)
        device = torch_device.torch_device()
        precision = torch_device.precision_on(device)
        # Resuming is only right for the same config on the same data in the same precision: a
        # retrain on new data starts afresh, a retry of an interrupted one continues.
        digest = hashlib.blake2b(json.dumps(params, sort_keys=True).encode(), digest_size=8)
        if precision != "fp32":  # fp32 keeps the folders that runs before the precision had
            digest.update(precision.encode())
        for tensor in (*(stl_graph[t].x for t in stl_graph.node_types), *stl_graph.edge_index_dict.values()):
            digest.update(tensor.numpy().tobytes())
        for split in (train_q, val_q):
            for q in split.values():
                for tensor in (q.x, q.product, q.context):
                    if tensor is not None:
                        digest.update(tensor.numpy().tobytes())
        checkpoints = stl_files.path("checkpoints", name, digest.hexdigest())
        graph = stl_graph.to(device)
        train_q, val_q = ({task: q.to(device) for task, q in split.items()} for split in (train_q, val_q))
        torch.manual_seed(train_config.seed)
        model = build_model(schema(stl_graph), stl_crop_embeddings.dim, train_config).to(device)
        run_params = {**params, "device": describe(device), "precision": precision}
        with mlflow.training_run(context, kind, run_params) as run:
            result = train(
                model,
                graph,
                train_q,
                val_q,
                train_config,
                checkpoints,
                on_epoch=lambda epoch, metrics: run.log_metrics(metrics, step=epoch),
                precision=precision,
            )
            best = load_checkpoint(checkpoints / BEST)
            record = model_record(best, stl_graph, stl_crop_embeddings.dim, run.run_id, tokens)
            record["registered"] = registered
            prior = _prior(best)
            curves = training_curves(result.history, result.best_epoch, name)
            version = publish(
                run,
                checkpoints,
                record,
                params,
                curves,
                {"best_epoch": result.best_epoch, "best_val_mrr": result.best_val_mrr, **prior},
                registered,
                {"asset": name, "dagster_run_id": context.run.run_id},
            )
        record["version"] = version
        history = pd.DataFrame(result.history)
        plots = stl_files.save_plot(f"{name}_training_curves", curves)
        context.log.info(
            f"{name}: best validation MRR {result.best_val_mrr:.4f} at epoch {result.best_epoch}"
        )
        return dg.Output(
            record,
            metadata={
                "mlflow_run_id": run.run_id,
                "mlflow_model": f"{registered} version {version}",
                "best_epoch": result.best_epoch,
                "best_val_mrr": round(result.best_val_mrr, 4),
                **{key: round(value, 4) for key, value in prior.items()},
                "epochs_run": result.epochs_run,
                "stopped_early": result.stopped_early,
                "final_loss": round(float(history["loss"].iloc[-1]), 4) if len(history) else float("nan"),
                "device": describe(device),
                "precision": precision,
                "checkpoints": dg.MetadataValue.path(str(checkpoints)),
                **plots,
            },
        )

    return trained


# Each registered model's knobs, by method: TrainConfig's fields with the registry's defaults.
CONFIGS: dict[str, type[dg.Config]] = {
    spec.method: config_class(
        f"{spec.asset.title().replace('_', '')}Config",
        TrainConfig,
        dg.Config,
        __name__,
        f"How {spec.asset} trains.",
        exclude=("kind",),
        **spec.defaults,
    )
    for spec in MODELS
}
training_assets = [_train_asset(spec, CONFIGS[spec.method]) for spec in MODELS]
