"""Training and evaluation inputs from the assets: query vectors and true product indices."""

import numpy as np
import pandas as pd
import torch
from torch_geometric.data import HeteroData

from stl_pipeline.lineage import MismatchedInputError, require_made_from, require_same_pairs
from stl_pipeline.models.queries import Queries
from stl_pipeline.vectors import Embeddings

QUERY_ASSETS = {"stl": "stl_crop_embeddings", "ctl": "ctl_scene_embeddings"}
CONTEXT_ASSET = "ctl_scene_context"


def context_tokens(context: Embeddings, pair_ids: list[str]) -> torch.Tensor:
    """(Q, T, d) each pair's context tokens in their order, zero rows after a pair's last
    (T: the most any pair has); a pair without context has none."""
    rows: dict[str, list[int]] = {}
    for row, key in enumerate(context.keys):
        rows.setdefault(key.rsplit("/", 1)[0], []).append(row)
    width = max((len(r) for r in rows.values()), default=0)
    index = np.full((len(pair_ids), width), -1, dtype=np.int64)
    for i, pair_id in enumerate(pair_ids):
        taken = rows.get(pair_id, [])
        index[i, : len(taken)] = taken
    padded = np.concatenate([context.vectors, np.zeros((1, context.dim), dtype=np.float32)])
    return torch.from_numpy(padded[index])  # -1 picks the zero row


def _require_context_of(context: Embeddings, pairs: pd.DataFrame) -> None:
    pair_ids = set(pairs["pair_id"])
    foreign = {key.rsplit("/", 1)[0] for key in context.keys} - pair_ids
    if foreign:
        raise MismatchedInputError(
            f"{CONTEXT_ASSET} holds tokens of {len(foreign)} pairs that stl_pairs lacks (e.g. "
            f"{sorted(foreign)[0]!r}): it was made from other tables. Rematerialize {CONTEXT_ASSET}."
        )


def split_queries(
    graph: HeteroData,
    pairs: pd.DataFrame,
    queries: dict[str, Embeddings],
    split: str,
    context: Embeddings | None = None,
) -> tuple[dict[str, Queries], dict[str, pd.DataFrame]]:
    """Per task, the queries of ``split``'s pairs whose product is a graph node and whose query
    was embedded; and the pairs they come from, in the same order. CTL queries carry the
    category they complete and, given ``context``, their context tokens. Refuses a graph or
    embeddings made from other pairs (MismatchedInputError)."""
    require_same_pairs("stl_graph", getattr(graph, "info", {}), pairs, "Rematerialize stl_graph.")
    for task, embeddings in queries.items():
        name = QUERY_ASSETS[task]
        require_made_from(name, embeddings.keys, "stl_pairs", pairs["pair_id"], f"Rematerialize {name}.")
    if context is not None:
        _require_context_of(context, pairs)
    position = {p: i for i, p in enumerate(graph["product"].ids)}
    chosen = pairs[(pairs["split"].astype(str) == split) & pairs["product"].isin(position)]
    category = graph["product"].category.cpu()
    result, rows = {}, {}
    for task, embeddings in queries.items():
        keep = chosen[chosen["pair_id"].isin(embeddings.positions())].reset_index(drop=True)
        x = torch.from_numpy(embeddings.take(list(keep["pair_id"])))
        product = torch.tensor(keep["product"].map(position).to_numpy(), dtype=torch.long)
        tokens = (
            context_tokens(context, list(keep["pair_id"])) if context is not None and task == "ctl" else None
        )
        result[task] = Queries(x, product, category[product], tokens)
        rows[task] = keep
    return result, rows
