"""Build the heterogeneous STL graph from the tables and the embeddings.

Only train scenes contribute edges that carry labels (contains,
co-occurrence); validation and test pairs are kept as label edges outside
message passing. Scene kNN edges point from train scenes to every scene, so a
held-out scene receives context but never sends its content into the graph.
"""

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from torch_geometric.data import HeteroData

from stl_pipeline.categories import LEAVES
from stl_pipeline.graph.config import GraphConfig
from stl_pipeline.graph.knn import search, self_neighbours
from stl_pipeline.graph.schema import (
    BBOX,
    BELONGS_TO,
    CATEGORY,
    CO_OCCURS,
    CONTAINS,
    PRODUCT,
    PRODUCT_SIMILAR,
    REV_BELONGS_TO,
    REV_CONTAINS,
    SCENE,
    SCENE_SIMILAR,
    SPLITS,
    edge_type_name,
)
from stl_pipeline.lineage import require_made_from
from stl_pipeline.vectors import Embeddings


@dataclass
class BuildReport:
    pairs_used: int
    pairs_without_image: int
    products_without_image: int
    knn_methods: dict[str, str]


def _edge_index(src: np.ndarray, dst: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.stack([src, dst]).astype(np.int64, copy=False))


def _knn_edges(neighbours: np.ndarray, sims: np.ndarray, sources: np.ndarray | None = None):
    """Edges neighbour -> node, so that each node aggregates its own neighbours."""
    rows, cols = np.nonzero(neighbours >= 0)
    src = neighbours[rows, cols]
    if sources is not None:
        src = sources[src]
    return _edge_index(src, rows), torch.from_numpy(sims[rows, cols].astype(np.float32)).unsqueeze(1)


def build_graph(
    products: pd.DataFrame,
    pairs: pd.DataFrame,
    product_embeddings: Embeddings,
    scene_embeddings: Embeddings,
    config: GraphConfig = GraphConfig(),
) -> tuple[HeteroData, BuildReport]:
    """The HeteroData of docs/design.md, section 3, and what was left out for lack of an image.
    Refuses embeddings made from other tables (MismatchedInputError)."""
    again = "Rematerialize {0}_images and {0}_embeddings (the stl_ingest job does both)."
    require_made_from(
        "product_embeddings",
        product_embeddings.keys,
        "stl_products",
        products["product"],
        again.format("product"),
        config.max_missing,
    )
    require_made_from(
        "scene_embeddings",
        scene_embeddings.keys,
        "stl_pairs",
        pairs["scene"],
        again.format("scene"),
        config.max_missing,
    )
    with_image = set(product_embeddings.keys)
    product_ids = [p for p in products["product"] if p in with_image]
    product_pos = {p: i for i, p in enumerate(product_ids)}
    pairs = pairs[pairs["product"].isin(product_pos)]
    scene_keys = set(scene_embeddings.keys)
    usable = pairs[pairs["scene"].isin(scene_keys)]
    scene_ids = list(dict.fromkeys(usable["scene"]))
    scene_pos = {s: i for i, s in enumerate(scene_ids)}
    category_of = dict(zip(products["product"], products["category"], strict=True))
    categories = list(LEAVES)
    category_pos = {c: i for i, c in enumerate(categories)}

    data = HeteroData()
    visual = product_embeddings.take(product_ids)
    category_index = torch.tensor([category_pos[category_of[p]] for p in product_ids], dtype=torch.long)
    one_hot = torch.nn.functional.one_hot(category_index, len(categories)).float()
    # The backbone vector comes first: the triplet head and the kNN baseline read only it.
    data[PRODUCT].x = torch.cat([torch.from_numpy(visual), one_hot], dim=1)
    data[PRODUCT].category = category_index
    data[PRODUCT].ids = product_ids
    scene_visual = scene_embeddings.take(scene_ids)
    data[SCENE].x = torch.from_numpy(scene_visual)
    data[SCENE].ids = scene_ids
    split_of = usable.drop_duplicates("scene").set_index("scene")["split"].astype(str)
    split_code = np.array([SPLITS.index(split_of[s]) for s in scene_ids], dtype=np.int64)
    data[SCENE].split = torch.from_numpy(split_code)
    for code, name in enumerate(SPLITS):
        data[SCENE][f"{name}_mask"] = torch.from_numpy(split_code == code)
    data[CATEGORY].x = torch.eye(len(categories))
    data[CATEGORY].ids = categories

    src = usable["scene"].map(scene_pos).to_numpy()
    dst = usable["product"].map(product_pos).to_numpy()
    bbox = torch.from_numpy(usable[BBOX].to_numpy(np.float32, copy=True))
    split = usable["split"].astype(str).to_numpy()
    train = split == "train"
    knn_methods: dict[str, str] = {}
    if "contains" in config.edges:
        data[CONTAINS].edge_index = _edge_index(src[train], dst[train])
        data[CONTAINS].edge_attr = bbox[torch.from_numpy(train)]
        data[REV_CONTAINS].edge_index = _edge_index(dst[train], src[train])
        data[REV_CONTAINS].edge_attr = bbox[torch.from_numpy(train)]
    else:
        # The held-out labels below live on this store, and every edge store has an index:
        # without the family, no train pair passes messages.
        data[CONTAINS].edge_index = torch.empty((2, 0), dtype=torch.long)
        data[CONTAINS].edge_attr = torch.empty((0, len(BBOX)))
    for name in ("val", "test"):
        held = split == name
        data[CONTAINS][f"{name}_edge_index"] = _edge_index(src[held], dst[held])
        data[CONTAINS][f"{name}_edge_attr"] = bbox[torch.from_numpy(held)]
    if "product_similar" in config.edges:
        found = self_neighbours(visual, config.product_k, config.knn)
        data[PRODUCT_SIMILAR].edge_index, data[PRODUCT_SIMILAR].edge_attr = _knn_edges(
            found.indices, found.similarities
        )
        knn_methods["product_similar"] = found.method
    if "scene_similar" in config.edges:
        train_scenes = np.flatnonzero(split_code == 0)
        found = search(scene_visual, scene_visual[train_scenes], config.scene_k + 1, config.knn)
        own = train_scenes[np.maximum(found.indices, 0)] == np.arange(len(scene_ids))[:, None]
        indices = np.where(own, -1, found.indices)
        order = np.argsort(indices < 0, axis=1, kind="stable")[:, : config.scene_k]
        indices = np.take_along_axis(indices, order, 1)
        sims = np.take_along_axis(found.similarities, order, 1)
        data[SCENE_SIMILAR].edge_index, data[SCENE_SIMILAR].edge_attr = _knn_edges(
            indices, sims, sources=train_scenes
        )
        knn_methods["scene_similar"] = found.method
    if "co_occurs" in config.edges:
        members = pd.DataFrame({"scene": src[train], "product": dst[train]}).drop_duplicates()
        both = members.merge(members, on="scene")
        both = both[both["product_x"] != both["product_y"]]
        counted = both.groupby(["product_x", "product_y"]).size().reset_index(name="scenes")
        data[CO_OCCURS].edge_index = _edge_index(
            counted["product_x"].to_numpy(), counted["product_y"].to_numpy()
        )
        data[CO_OCCURS].edge_attr = torch.from_numpy(counted["scenes"].to_numpy(np.float32)).unsqueeze(1)
    if "category" in config.edges:
        products_range = np.arange(len(product_ids))
        data[BELONGS_TO].edge_index = _edge_index(products_range, category_index.numpy())
        data[REV_BELONGS_TO].edge_index = _edge_index(category_index.numpy(), products_range)
    report = BuildReport(
        pairs_used=len(usable),
        pairs_without_image=len(pairs) - len(usable),
        products_without_image=len(products) - len(product_ids),
        knn_methods=knn_methods,
    )
    return data, report


def summary(data: HeteroData) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Node counts, and per edge type: count, density and in-degree spread."""
    nodes = pd.DataFrame(
        {"node_type": list(data.node_types), "count": [data[t].num_nodes for t in data.node_types]}
    )
    rows = []
    for edge_type in data.edge_types:
        src, _, dst = edge_type
        index = data[edge_type].edge_index
        possible = data[src].num_nodes * data[dst].num_nodes
        degree = torch.bincount(index[1], minlength=data[dst].num_nodes).float()
        rows.append(
            {
                "edge_type": edge_type_name(edge_type),
                "edges": index.shape[1],
                "density": index.shape[1] / possible if possible else 0.0,
                "in_degree_mean": float(degree.mean()) if len(degree) else 0.0,
                "in_degree_median": float(degree.median()) if len(degree) else 0.0,
                "in_degree_max": int(degree.max()) if len(degree) else 0,
                "no_in_edge": int((degree == 0).sum()),
            }
        )
    return nodes, pd.DataFrame(rows)
