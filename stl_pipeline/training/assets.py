"""Assets of the ``training`` group: the recommenders of registry.py, tracked in MLflow."""

import hashlib
import json
from dataclasses import asdict

import dagster as dg
import pandas as pd
from pydantic import Field

from stl_pipeline.artifacts import HeteroData
from stl_pipeline.plots import training_curves
from stl_pipeline.registry import MODELS, ModelSpec
from stl_pipeline.resources import MlflowTracker, StlFiles, TorchDevice
from stl_pipeline.storage import atomic_write_bytes
from stl_pipeline.vectors import Embeddings

GROUP, POOL, IO = "training", "gpu", "model_io_manager"


class _TrainingKnobs(dg.Config):
    dropout: float = 0.3
    lr: float = 3e-3
    weight_decay: float = 1e-4
    epochs: int = 150
    batch_size: int = Field(default=512, description="Queries per task and step; 0: full batch.")
    max_steps: int = Field(
        default=2,
        description="Optimizer steps per epoch at most (each encodes the whole graph); past that, "
        "batches grow. 0: no limit.",
    )
    in_batch_negatives: bool = Field(default=True, description="The batch's other positives as negatives.")
    category_negatives: int = Field(default=8, description="Same-category negatives per query, uniform.")
    shared_negatives: int = Field(
        default=2048,
        description="In-batch negatives at most (a random subset of the batch's distinct positives); "
        "bounds a step's memory. 0: all.",
    )
    logq_correction: bool = Field(
        default=False,
        description="Correct InfoNCE logits for how often the sampling offers each product (infonce only).",
    )
    popularity_prior: bool = Field(
        default=True,
        description="After training, fit per task a weight on log train popularity added to every "
        "score, on validation MRR (0 among the candidates).",
    )
    deterministic: bool = Field(
        default=True,
        description="PyTorch's deterministic kernels: the same data and config train the same model "
        "(about 10% slower on the CPU).",
    )
    patience: int = Field(default=30, description="Epochs without a better validation MRR before stopping.")
    checkpoint_every: int = 10
    seed: int = 0


class GnnConfig(_TrainingKnobs):
    hidden: int = 128
    heads: int = Field(default=4, description="Attention heads (GAT only).")
    layers: int = 2
    loss: str = Field(default="infonce", description="infonce, triplet or bpr.")


class GatConfig(GnnConfig):
    # At 3e-3 the attention collapsed every product onto one vector (mean pairwise cosine 0.999).
    lr: float = 1e-3


class TripletConfig(_TrainingKnobs):
    hidden: int = Field(default=512, description="Width of the head's hidden layer.")
    lr: float = 1e-3
    # With two steps an epoch the head saved nothing at 3,811 products (its epoch is not its
    # steps) and fell behind on Shop the Look: a weaker baseline would flatter the graph models.
    max_steps: int = Field(default=4, description="Optimizer steps per epoch at most; 0: no limit.")
    loss: str = Field(default="triplet", description="triplet, infonce or bpr.")


class TwoTowerConfig(_TrainingKnobs):
    hidden: int = Field(default=512, description="Width of each tower's hidden layer.")
    lr: float = 1e-3
    max_steps: int = Field(default=0, description="Optimizer steps per epoch at most; 0: no limit.")
    loss: str = Field(default="infonce", description="infonce, triplet or bpr.")


def _prior(best: dict) -> dict[str, float]:
    """The fitted popularity weight of each task and the validation MRRs with it."""
    from stl_pipeline.models.recommender import TASKS

    weights = best["model"].get("prior.weight")
    if weights is None:
        return {}
    fitted = {f"popularity_weight_{task}": float(w) for task, w in zip(TASKS, weights.tolist(), strict=True)}
    return fitted | {f"prior_{key}": value for key, value in best.get("prior_val_mrr", {}).items()}


def _ended(instance: dg.DagsterInstance, run_id: str) -> bool:
    """A run of this instance that has ended (another instance's runs are not this one's to end)."""
    run = instance.get_run_by_id(run_id)
    return run is not None and run.is_finished


def _train_asset(spec: ModelSpec, config_class: type[_TrainingKnobs]) -> dg.AssetsDefinition:
    name, kind, registered = spec.asset, spec.kind, spec.registered

    @dg.asset(name=name, group_name=GROUP, pool=POOL, io_manager_key=IO, description=spec.description)
    def trained(
        context: dg.AssetExecutionContext,
        config: config_class,  # type: ignore[valid-type]
        stl_graph: HeteroData,
        stl_pairs: pd.DataFrame,
        stl_crop_embeddings: Embeddings,
        ctl_scene_embeddings: Embeddings,
        torch_device: TorchDevice,
        mlflow: MlflowTracker,
        stl_files: StlFiles,
    ) -> dg.Output[dict]:
        import torch

        from stl_pipeline.device import describe
        from stl_pipeline.training.data import split_queries
        from stl_pipeline.training.loop import BEST, TrainConfig, load_checkpoint, train
        from stl_pipeline.training.models import build_model, model_record, schema

        train_config = TrainConfig(kind=kind, **config.model_dump())
        params = asdict(train_config)
        queries = {"stl": stl_crop_embeddings, "ctl": ctl_scene_embeddings}
        train_q, _ = split_queries(stl_graph, stl_pairs, queries, "train")
        val_q, _ = split_queries(stl_graph, stl_pairs, queries, "val")
        # Resuming is only right for the same config on the same data: a retrain on new data
        # starts afresh, a retry of an interrupted one continues.
        digest = hashlib.blake2b(json.dumps(params, sort_keys=True).encode(), digest_size=8)
        for tensor in (*(stl_graph[t].x for t in stl_graph.node_types), *stl_graph.edge_index_dict.values()):
            digest.update(tensor.numpy().tobytes())
        for split in (train_q, val_q):
            for q in split.values():
                digest.update(q.x.numpy().tobytes())
                digest.update(q.product.numpy().tobytes())
        checkpoints = stl_files.path("checkpoints", name, digest.hexdigest())
        device = torch_device.torch_device()
        precision = torch_device.precision_on(device)
        graph = stl_graph.to(device)
        for split in (train_q, val_q):
            for q in split.values():
                q.x, q.product = q.x.to(device), q.product.to(device)
        torch.manual_seed(train_config.seed)
        node_dims, edge_types = schema(stl_graph)
        model = build_model(node_dims, edge_types, stl_crop_embeddings.dim, train_config).to(device)
        tags = {"dagster_run_id": context.run.run_id, "asset": name, "kind": kind}
        tracker = mlflow.tracker()
        tracker.check_reachable()
        for abandoned in tracker.end_abandoned(lambda run_id: _ended(context.instance, run_id)):
            context.log.warning(f"MLflow run {abandoned} outlived its Dagster run: marked KILLED")
        with tracker.run(f"{name} {context.run.run_id[:8]}", tags=tags) as run:
            run.log_params({**params, "device": describe(device), "precision": precision})
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
            record = model_record(best, stl_graph, stl_crop_embeddings.dim, run.run_id)
            config_path = checkpoints / "config.json"
            atomic_write_bytes(config_path, json.dumps(params, indent=2).encode())
            run.log_artifact(checkpoints / BEST, "checkpoint")
            run.log_artifact(config_path, "checkpoint")
            prior = _prior(best)
            run.log_metrics({"best_epoch": result.best_epoch, "best_val_mrr": result.best_val_mrr, **prior})
            curves = training_curves(result.history, result.best_epoch, name)
            run.log_image(curves, "training_curves.png")
            version = run.register(
                registered, "checkpoint", tags={"asset": name, "dagster_run_id": context.run.run_id}
            )
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


# Each registered model's knobs, by method.
CONFIGS: dict[str, type[_TrainingKnobs]] = {
    "gat": GatConfig,
    "sage": GnnConfig,
    "triplet_head": TripletConfig,
    "two_tower": TwoTowerConfig,
}
training_assets = [_train_asset(spec, CONFIGS[spec.method]) for spec in MODELS]
# Every model's record, as the inputs of a downstream asset that takes them as **models.
MODEL_INS = {spec.asset: dg.AssetIn(spec.asset) for spec in MODELS}
