from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from stl_pipeline.graph.build import build_graph, summary
from stl_pipeline.graph.checks import isolated, leakage, out_of_range
from stl_pipeline.graph.config import GraphConfig, KnnConfig
from stl_pipeline.graph.knn import recall, search, self_neighbours
from stl_pipeline.graph.schema import (
    BELONGS_TO,
    CO_OCCURS,
    CONTAINS,
    PRODUCT_SIMILAR,
    REV_CONTAINS,
    SCENE_SIMILAR,
)
from stl_pipeline.graph.store import load_graph, save_graph
from stl_pipeline.ingest.tables import ingest
from stl_pipeline.lineage import MismatchedInputError
from stl_pipeline.vectors import Embeddings


def unit(rows: int, dim: int, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((rows, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.fixture(scope="module")
def tables(small_dataset: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    result = ingest(small_dataset / "fashion.json", small_dataset / "fashion-cat.json", 0, 0.15, 0.15)
    return result.pairs, result.products


@pytest.fixture(scope="module")
def graph(tables):
    pairs, products = tables
    scenes = list(dict.fromkeys(pairs["scene"]))
    product_emb = Embeddings(list(products["product"]), unit(len(products), 16, 0))
    scene_emb = Embeddings(scenes, unit(len(scenes), 16, 1))
    return build_graph(products, pairs, product_emb, scene_emb, GraphConfig(product_k=4, scene_k=3))


def test_schema_follows_the_design(graph, tables) -> None:
    data, report = graph
    pairs, products = tables
    assert set(data.node_types) == {"product", "scene", "category"}
    assert set(data.edge_types) == {
        CONTAINS,
        REV_CONTAINS,
        PRODUCT_SIMILAR,
        SCENE_SIMILAR,
        CO_OCCURS,
        BELONGS_TO,
        ("category", "rev_belongs_to", "product"),
    }
    assert data["product"].x.shape == (len(products), 16 + 10)  # visual + category one-hot
    assert data["category"].num_nodes == 10
    assert data["scene"].num_nodes == pairs["scene"].nunique()
    train = pairs[pairs["split"] == "train"]
    assert data[CONTAINS].edge_index.shape[1] == len(train) and data[CONTAINS].edge_attr.shape == (
        len(train),
        4,
    )
    assert torch.equal(data[REV_CONTAINS].edge_index, data[CONTAINS].edge_index.flip(0))
    held = data[CONTAINS].val_edge_index.shape[1] + data[CONTAINS].test_edge_index.shape[1]
    assert held == len(pairs) - len(train) and report.pairs_used == len(pairs)
    assert data[PRODUCT_SIMILAR].edge_index.shape[1] == 4 * len(products)
    assert data[BELONGS_TO].edge_index.shape[1] == len(products)  # one link each: no cliques
    # Scene neighbours come from train scenes only, and no scene is its own neighbour.
    sources, targets = data[SCENE_SIMILAR].edge_index
    assert data["scene"].train_mask[sources].all() and not (sources == targets).any()
    # Co-occurrence is symmetric.
    co = {tuple(e) for e in data[CO_OCCURS].edge_index.t().tolist()}
    assert co and all((b, a) in co for a, b in co)
    assert not out_of_range(data) and not leakage(data) and isolated(data) == 0


def test_summary_counts_and_densities(graph) -> None:
    nodes, edges = summary(graph[0])
    assert dict(zip(nodes["node_type"], nodes["count"], strict=True))["category"] == 10
    row = edges.set_index("edge_type").loc["product__similar__product"]
    assert row["in_degree_mean"] == 4 and 0 < row["density"] < 1


def test_leakage_check_fails_on_a_leaky_graph(graph) -> None:
    data = graph[0].clone()
    test_edge = data[CONTAINS].test_edge_index[:, :1]
    data[CONTAINS].edge_index = torch.cat([data[CONTAINS].edge_index, test_edge], dim=1)
    found = leakage(data)
    assert found["held_out_pairs_in_message_passing"] == 1
    assert found["contains_edges_of_held_out_scenes"] == 1

    data = graph[0].clone()
    explained = set(map(tuple, graph[0][CO_OCCURS].edge_index.t().tolist()))
    missing = next((a, b) for a in range(50) for b in range(50) if a != b and (a, b) not in explained)
    data[CO_OCCURS].edge_index = torch.cat(
        [graph[0][CO_OCCURS].edge_index, torch.tensor(missing).view(2, 1)], 1
    )
    assert leakage(data) == {"co_occurrences_without_train_scene": 1}


def test_leakage_is_prevented_by_construction_for_the_other_splits(graph) -> None:
    data = graph[0]
    scenes_with_contains = data[CONTAINS].edge_index[0].unique()
    assert data["scene"].train_mask[scenes_with_contains].all()
    held_out_scenes = data[CONTAINS].test_edge_index[0].unique()
    assert not data["scene"].train_mask[held_out_scenes].any()


def test_out_of_range_and_isolated_scenes_are_found(graph) -> None:
    data = graph[0].clone()
    data[PRODUCT_SIMILAR].edge_index[0, 0] = data["product"].num_nodes + 3
    assert out_of_range(data) == {"product__similar__product.edge_index": 1}
    lonely = graph[0].clone()
    del lonely[SCENE_SIMILAR]
    assert isolated(lonely) == int(
        (~lonely["scene"].train_mask).sum()
    )  # held-out scenes lose their only edges


def with_edges(tables, *edges: str):
    pairs, products = tables
    scenes = list(dict.fromkeys(pairs["scene"]))
    data, _ = build_graph(
        products,
        pairs,
        Embeddings(list(products["product"]), unit(len(products), 8, 0)),
        Embeddings(scenes, unit(len(scenes), 8, 1)),
        GraphConfig(edges=edges),
    )
    return data


def test_edge_families_are_configuration(tables) -> None:
    data = with_edges(tables, "contains", "scene_similar")
    assert set(data.edge_types) == {CONTAINS, REV_CONTAINS, SCENE_SIMILAR}
    with pytest.raises(ValueError, match="unknown edge families"):
        GraphConfig(edges=("cliques",))


def test_graph_without_contains_edges_keeps_its_labels_and_passes_no_train_pair(tables) -> None:
    pairs, _ = tables
    data = with_edges(tables, "scene_similar", "product_similar")
    assert data[CONTAINS].edge_index.shape == (2, 0) and REV_CONTAINS not in data.edge_types
    held = data[CONTAINS].val_edge_index.shape[1] + data[CONTAINS].test_edge_index.shape[1]
    assert held == (pairs["split"] != "train").sum()
    _, edges = summary(data)
    assert edges.set_index("edge_type").loc["scene__contains__product", "edges"] == 0
    assert not out_of_range(data) and not leakage(data)


def test_products_without_an_image_drop_out_with_their_pairs(tables) -> None:
    pairs, products = tables
    scenes = list(dict.fromkeys(pairs["scene"]))
    kept = list(products["product"])[5:]
    data, report = build_graph(
        products, pairs, Embeddings(kept, unit(len(kept), 8, 0)), Embeddings(scenes, unit(len(scenes), 8, 1))
    )
    assert data["product"].num_nodes == len(kept) and report.products_without_image == 5
    dropped = pairs["product"].isin(list(products["product"])[:5]).sum()
    assert report.pairs_used == len(pairs) - dropped


def test_store_round_trips_without_pickle(graph, tmp_path: Path) -> None:
    data = graph[0]
    path = tmp_path / "g.safetensors"
    save_graph(data, path, info={"k": 1})
    loaded, info = load_graph(path)
    assert info == {"k": 1}
    assert loaded["product"].ids == data["product"].ids and loaded["category"].ids == data["category"].ids
    for edge_type in data.edge_types:
        assert torch.equal(loaded[edge_type].edge_index, data[edge_type].edge_index)
    assert torch.equal(loaded[CONTAINS].test_edge_index, data[CONTAINS].test_edge_index)
    assert torch.equal(loaded["scene"].train_mask, data["scene"].train_mask)
    (tmp_path / "bad.safetensors").write_bytes(path.read_bytes()[:100])
    with pytest.raises(Exception):  # noqa: B017 (safetensors raises its own error type)
        load_graph(tmp_path / "bad.safetensors")


def test_exact_knn_matches_brute_force() -> None:
    x = unit(300, 24, 2)
    found = self_neighbours(x, 5, KnnConfig(method="exact"))
    similarity = x @ x.T
    np.fill_diagonal(similarity, -np.inf)
    truth = np.argsort(-similarity, axis=1)[:, :5]
    assert recall(found.indices, truth) == 1.0
    assert np.allclose(found.similarities, np.take_along_axis(similarity, truth, 1), atol=1e-5)


def test_clustered_knn_finds_almost_all_true_neighbours() -> None:
    rng = np.random.default_rng(3)
    centres = rng.standard_normal((40, 64)).astype(np.float32)
    x = centres[rng.integers(0, 40, 4000)] + 0.5 * rng.standard_normal((4000, 64)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    clustered = search(x, x, 10, KnnConfig(method="clustered"))
    exact = search(x, x, 10, KnnConfig(method="exact"))
    assert clustered.method.startswith("clustered")
    assert recall(clustered.indices, exact.indices) > 0.95
    assert search(x, x, 10, KnnConfig(exact_limit=1000)).method.startswith("clustered")


def test_embeddings_of_other_tables_are_refused_not_intersected(tables) -> None:
    pairs, products = tables
    scenes = list(dict.fromkeys(pairs["scene"]))
    scene_emb = Embeddings(scenes, unit(len(scenes), 8, 1))
    stale = [f"{i:032x}" for i in range(len(products))]
    with pytest.raises(MismatchedInputError, match=r"product_embeddings was made from other.*covers 0"):
        build_graph(products, pairs, Embeddings(stale, unit(len(stale), 8, 0)), scene_emb)
    few = list(products["product"])[: len(products) // 2]  # half the images: not failed downloads
    with pytest.raises(MismatchedInputError, match="Rematerialize product_images and product_embeddings"):
        build_graph(products, pairs, Embeddings(few, unit(len(few), 8, 0)), scene_emb)
    with pytest.raises(MismatchedInputError, match="scene_embeddings"):
        build_graph(
            products,
            pairs,
            Embeddings(list(products["product"]), unit(len(products), 8, 0)),
            Embeddings(scenes[:5], unit(5, 8, 1)),
        )
