"""A trained model as one self-describing record: weights, the config and the graph schema
needed to rebuild it, and where it came from. Plain tensors and containers, so it loads
with ``weights_only=True``."""

from dataclasses import dataclass, field

from torch_geometric.data import HeteroData

from stl_pipeline.categories import LEAVES
from stl_pipeline.lineage import PAIRS_DIGEST, MismatchedInputError
from stl_pipeline.models.config import TrainConfig
from stl_pipeline.models.encoders import EdgeType
from stl_pipeline.models.recommender import (
    GraphRecommender,
    Recommender,
    TripletRecommender,
    TwoTowerRecommender,
)
from stl_pipeline.vectors import Embeddings

CONTEXT_INFO = ("source", "grid", "model", "weights")  # what must match between training and use

# Kinds over the frozen backbone vectors alone: no message passing, the graph's edges unread.
FROZEN = {"triplet": TripletRecommender, "two_tower": TwoTowerRecommender}


@dataclass(frozen=True)
class GraphSchema:
    """What a model's layers are shaped by: feature widths of each node type, the edge types,
    and the width of each edge type's ``edge_attr``."""

    node_dims: dict[str, int]
    edge_types: list[EdgeType]
    edge_dims: dict[EdgeType, int] = field(default_factory=dict)


def schema(graph: HeteroData) -> GraphSchema:
    return GraphSchema(
        {t: int(graph[t].x.shape[1]) for t in graph.node_types},
        list(graph.edge_types),
        {e: int(graph[e].edge_attr.shape[1]) for e in graph.edge_types if "edge_attr" in graph[e]},
    )


def build_model(shape: GraphSchema, query_dim: int, config: TrainConfig) -> Recommender:
    if config.kind in FROZEN:
        return FROZEN[config.kind](
            query_dim, config.out_dim, config.hidden, config.dropout, config.popularity_prior
        )
    return GraphRecommender(
        shape.node_dims,
        shape.edge_types,
        query_dim,
        kind=config.kind,  # type: ignore[arg-type]
        hidden=config.hidden,
        layers=config.layers,
        heads=config.heads,
        dropout=config.dropout,
        out_dim=config.out_dim,
        popularity_prior=config.popularity_prior,
        categories=len(LEAVES) if config.context else 0,
        edge_dims=shape.edge_dims if config.edge_features else None,
        visual_skip=config.visual_skip,
        context_values=config.context_values,
        context_lead=config.context_lead,
    )


def model_record(
    best: dict, graph: HeteroData, query_dim: int, mlflow_run_id: str, context: Embeddings | None = None
) -> dict:
    """``best`` is the best-epoch checkpoint that ``train`` wrote; ``context``, the tokens its
    CTL queries attended over, whose source and grid serving must use again."""
    shape = schema(graph)
    return {
        "config": best["config"],
        "state_dict": best["model"],
        "node_dims": shape.node_dims,
        "edge_types": [list(e) for e in shape.edge_types],
        "edge_dims": [[*e, d] for e, d in shape.edge_dims.items()],
        "query_dim": query_dim,
        "best_epoch": best["best_epoch"],
        "best_val_mrr": best["best_score"],
        "prior_val_mrr": best.get("prior_val_mrr", {}),  # with the fitted popularity prior
        "history": best["history"],
        "mlflow_run_id": mlflow_run_id,
        PAIRS_DIGEST: getattr(graph, "info", {}).get(PAIRS_DIGEST),  # the graph it was trained on
        "context": {k: context.info[k] for k in CONTEXT_INFO if k in context.info} if context else {},
    }


def load_model(record: dict) -> Recommender:
    edge_types = [tuple(e) for e in record["edge_types"]]
    # A record from before the popularity prior existed has none, whatever today's default.
    config = TrainConfig(**({"popularity_prior": False} | record["config"]))
    edge_dims = {tuple(e[:3]): int(e[3]) for e in record.get("edge_dims", [])}
    model = build_model(GraphSchema(record["node_dims"], edge_types, edge_dims), record["query_dim"], config)
    model.load_state_dict(record["state_dict"])
    return model.eval()


def require_context(method: str, record: dict, context: Embeddings) -> None:
    """The context tokens at hand are of the source, grid and backbone the model was trained
    on: other tokens would feed its CTL attention what it never learned to read."""
    trained = record.get("context") or {}
    differ = {k: (v, context.info.get(k)) for k, v in trained.items() if context.info.get(k) != v}
    if differ:
        found = ", ".join(f"{k} {was!r} in training, {now!r} now" for k, (was, now) in differ.items())
        raise MismatchedInputError(
            f"{method} was trained on other ctl_scene_context tokens ({found}): rematerialize the "
            "model, or ctl_scene_context with the config it was trained on."
        )
