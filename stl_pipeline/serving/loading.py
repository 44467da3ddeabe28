"""How ``stl-recommend`` gets its model: the champion with the graph it was trained on and its
``product_index`` (by default), or a registered MLflow model on the latest graph, which it
must have been trained on; and the backbone that embedded that graph's catalogue."""

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch_geometric.data import HeteroData

from stl_pipeline.catalogue import asset_path
from stl_pipeline.champion.store import CHAMPION, NoChampion, current, load_snapshot, snapshot_products
from stl_pipeline.device import deterministic
from stl_pipeline.features.backbone import Backbone, BackboneUnavailable, load_backbone
from stl_pipeline.features.spec import BackboneSpec
from stl_pipeline.graph.schema import CONTAINS
from stl_pipeline.graph.store import load_graph
from stl_pipeline.lineage import MismatchedInputError, require_trained_on
from stl_pipeline.models.record import load_model
from stl_pipeline.serving.cold_start import ColdStart, ColdStartError, TrainScenes
from stl_pipeline.serving.index import build_index, load_index
from stl_pipeline.serving.recommend import finds_partners
from stl_pipeline.settings import Settings
from stl_pipeline.storage import read_artifact


def _backbone_of(graph: HeteroData, checkpoint: str | None) -> Backbone:
    """The backbone that embedded the graph's products, loaded again and checked to be it."""
    info = graph.info.get("backbone", {})
    if "source" not in info:
        raise ColdStartError("stl_graph records no backbone: rematerialize the features and stl_graph")
    seed = int(info["weights"].split("seed=")[1]) if info["source"] == "none" else 0
    spec = BackboneSpec(info["model"], info["source"], checkpoint, int(info["image_size"]), seed)
    try:
        backbone = load_backbone(spec)
    except (BackboneUnavailable, ValueError) as error:
        raise ColdStartError(f"cannot load the backbone that embedded the catalogue: {error}") from error
    if backbone.weights_id != info["weights"] or backbone.transform.describe() != info["transform"]:
        raise ColdStartError(
            f"the backbone loaded here ({backbone.weights_id}, {backbone.transform.describe()}) is not the "
            f"one that embedded the catalogue ({info['weights']}, {info['transform']}); set "
            "STL_BACKBONE_WEIGHTS to the same checkpoint file"
        )
    return backbone


def _train_scenes(graph: HeteroData) -> TrainScenes:
    scene = graph["scene"]
    train = torch.nonzero(scene.train_mask).squeeze(1)
    edges = (
        graph[CONTAINS].edge_index if CONTAINS in graph.edge_types else torch.empty((2, 0), dtype=torch.long)
    )
    order = torch.argsort(edges[0], stable=True)
    src, dst = edges[0][order].numpy(), edges[1][order].numpy()
    starts = np.searchsorted(src, train.numpy())
    ends = np.searchsorted(src, train.numpy(), side="right")
    return TrainScenes(
        ids=[scene.ids[i] for i in train.tolist()],
        vectors=F.normalize(scene.x[train].float(), dim=1),
        products=[dst[a:b] for a, b in zip(starts, ends, strict=True)],
        k=int(graph.info.get("config", {}).get("scene_k", 10)),
    )


def _read(path: Path, what: str, loader):
    if not path.is_file():
        raise ColdStartError(
            f"no {what} at {path}: materialize the pipeline first (`make demo`, or the serving group "
            "in the UI), or pass a registered model with --model-name and --model-version"
        )
    return read_artifact(path, loader, f"rematerialize it ({what.removeprefix('materialized ')})")


def load(settings: Settings, model_name: str | None = None, model_version: str | None = None) -> ColdStart:
    """The champion, with the graph it was trained on, by default; or a registered MLflow model
    (its ``@champion`` alias without a version) on the latest graph, which it must have been
    trained on."""
    root = settings.data_dir
    if model_name:
        graph, info = _read(asset_path(root, "stl_graph"), "materialized stl_graph", load_graph)
        graph.info = info
        record, version = _registered(settings, model_name, model_version)
        try:
            require_trained_on(model_name, record, info)
        except MismatchedInputError as error:
            raise ColdStartError(
                f"{model_name} version {version} was trained on another stl_graph than the latest one: "
                f"leave out --model-name to use the champion with its own graph ({error})"
            ) from error
        index = None  # its vectors are computed below
        source = {"model": model_name, "version": version, "mlflow_run_id": record["mlflow_run_id"]}
    else:
        try:
            serving = current(root, "stl")
        except NoChampion as error:
            raise ColdStartError(str(error)) from error
        folder = Path(serving["folder"])
        record, graph = load_snapshot(folder)
        path = asset_path(root, "product_index")
        index = _read(path, "materialized product_index", load_index) if path.is_file() else None
        if index is None or index.info.get("mlflow_run_id") != record["mlflow_run_id"]:
            # the champion was just promoted and its index is not built yet: its frozen vectors
            index = build_index(snapshot_products(folder), list(graph["product"].ids))
        source = {
            "model": serving["method"],
            "version": f"{serving['registered']} version {serving['version']} (@champion)",
            "mlflow_run_id": record["mlflow_run_id"],
        }
    try:
        model = load_model(record)
    except RuntimeError as error:
        raise ColdStartError(
            f"{source['model']} does not fit the graph it is served with: {str(error)[:200]}"
        ) from error
    if index is None:
        with torch.no_grad(), deterministic():
            vectors = model.products(graph).numpy()
        index = build_index(vectors, list(graph["product"].ids))
    if index.ids != list(graph["product"].ids):
        raise ColdStartError(
            "product_index and the champion's graph hold different products: rematerialize product_index"
        )
    return ColdStart(
        backbone=_backbone_of(graph, settings.backbone_checkpoint),
        model=model,
        index=index,
        category=graph["product"].category.numpy(),
        scenes=_train_scenes(graph),
        source=source,
        own_vectors=finds_partners(record["config"]),
    )


def _registered(settings: Settings, name: str, version: str | None) -> tuple[dict, str]:
    """The record of ``name``'s ``version``, or of its ``@champion`` alias."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    from stl_pipeline.tracking import download_record

    client = MlflowClient(tracking_uri=settings.mlflow_tracking_uri)
    try:
        if not version:
            version = str(client.get_model_version_by_alias(name, CHAMPION).version)
        return download_record(client, name, version), version
    except MlflowException as error:
        wanted = f"version {version}" if version else "a @champion alias"
        raise ColdStartError(
            f"registered model {name!r} has no {wanted} at {settings.mlflow_tracking_uri}: see `make mlflow` "
            "for the registered models (stl-gat, stl-sage, stl-two-tower, stl-triplet)"
        ) from error
