"""A trained model as one self-describing record: weights, the config and the graph schema
needed to rebuild it, and where it came from. Plain tensors and containers, so it loads
with ``weights_only=True``."""

from torch_geometric.data import HeteroData

from stl_pipeline.lineage import PAIRS_DIGEST
from stl_pipeline.models.encoders import EdgeType
from stl_pipeline.models.recommender import (
    GraphRecommender,
    Recommender,
    TripletRecommender,
    TwoTowerRecommender,
)
from stl_pipeline.training.loop import TrainConfig

# Kinds over the frozen backbone vectors alone: no message passing, the graph's edges unread.
FROZEN = {"triplet": TripletRecommender, "two_tower": TwoTowerRecommender}


def build_model(
    node_dims: dict[str, int], edge_types: list[EdgeType], query_dim: int, config: TrainConfig
) -> Recommender:
    if config.kind in FROZEN:
        return FROZEN[config.kind](
            query_dim, config.out_dim, config.hidden, config.dropout, config.popularity_prior
        )
    return GraphRecommender(
        node_dims,
        edge_types,
        query_dim,
        kind=config.kind,  # type: ignore[arg-type]
        hidden=config.hidden,
        layers=config.layers,
        heads=config.heads,
        dropout=config.dropout,
        out_dim=config.out_dim,
        popularity_prior=config.popularity_prior,
    )


def schema(graph: HeteroData) -> tuple[dict[str, int], list[EdgeType]]:
    return {t: int(graph[t].x.shape[1]) for t in graph.node_types}, list(graph.edge_types)


def model_record(best: dict, graph: HeteroData, query_dim: int, mlflow_run_id: str) -> dict:
    """``best`` is the best-epoch checkpoint that ``train`` wrote."""
    node_dims, edge_types = schema(graph)
    return {
        "config": best["config"],
        "state_dict": best["model"],
        "node_dims": node_dims,
        "edge_types": [list(e) for e in edge_types],
        "query_dim": query_dim,
        "best_epoch": best["best_epoch"],
        "best_val_mrr": best["best_val_mrr"],
        "prior_val_mrr": best.get("prior_val_mrr", {}),  # with the fitted popularity prior
        "history": best["history"],
        "mlflow_run_id": mlflow_run_id,
        PAIRS_DIGEST: getattr(graph, "info", {}).get(PAIRS_DIGEST),  # the graph it was trained on
    }


def load_model(record: dict) -> Recommender:
    edge_types = [tuple(e) for e in record["edge_types"]]
    # A record from before the popularity prior existed has none, whatever today's default.
    config = TrainConfig(**({"popularity_prior": False} | record["config"]))
    model = build_model(record["node_dims"], edge_types, record["query_dim"], config)
    model.load_state_dict(record["state_dict"])
    return model.eval()
