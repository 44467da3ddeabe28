"""Integrity of the graph: indices in range, no held-out label among message-passing edges."""

import torch
from torch_geometric.data import HeteroData

from stl_pipeline.graph.schema import CO_OCCURS, CONTAINS, REV_CONTAINS, SCENE, edge_type_name

HELD_OUT = ("val_edge_index", "test_edge_index")


def out_of_range(data: HeteroData) -> dict[str, int]:
    """Per edge type (and held-out label set), how many edges point outside their node sets."""
    problems = {}
    for edge_type in data.edge_types:
        src, _, dst = edge_type
        for key, value in data[edge_type].items():
            if not key.endswith("edge_index"):
                continue
            bad = (value[0] < 0) | (value[0] >= data[src].num_nodes)
            bad |= (value[1] < 0) | (value[1] >= data[dst].num_nodes)
            if int(bad.sum()):
                problems[f"{edge_type_name(edge_type)}.{key}"] = int(bad.sum())
    return problems


def _in_range(index: torch.Tensor, count: int) -> torch.Tensor:
    """Indices a corrupt graph may hold out of range; ``out_of_range`` reports those."""
    return index[(index >= 0) & (index < count)]


def _pairs(index: torch.Tensor, width: int) -> set[int]:
    return set((index[0] * width + index[1]).tolist())


def leakage(data: HeteroData) -> dict[str, int]:
    """Message-passing edges that reveal a validation or test pair, by kind.

    * held-out (scene, product) pairs among contains edges or their reverse;
    * contains edges of scenes that are not in the train split;
    * co-occurrence edges that no train scene explains.
    """
    found: dict[str, int] = {}
    width = data["product"].num_nodes
    store = data[CONTAINS] if CONTAINS in data.edge_types else None
    held = set()
    if store is not None:
        for key in HELD_OUT:
            if key in store:
                held |= _pairs(store[key], width)
    message = set()
    if CONTAINS in data.edge_types:
        message |= _pairs(data[CONTAINS].edge_index, width)
    if REV_CONTAINS in data.edge_types:
        message |= _pairs(data[REV_CONTAINS].edge_index.flip(0), width)
    found["held_out_pairs_in_message_passing"] = len(held & message)
    if CONTAINS in data.edge_types and "train_mask" in data[SCENE]:
        scenes = _in_range(data[CONTAINS].edge_index[0], data[SCENE].num_nodes)
        found["contains_edges_of_held_out_scenes"] = int((~data[SCENE].train_mask[scenes]).sum())
    if CO_OCCURS in data.edge_types and CONTAINS in data.edge_types:
        index = data[CONTAINS].edge_index
        by_scene: dict[int, list[int]] = {}
        for scene, product in zip(index[0].tolist(), index[1].tolist(), strict=True):
            by_scene.setdefault(scene, []).append(product)
        explained = {a * width + b for group in by_scene.values() for a in group for b in group if a != b}
        co = _pairs(data[CO_OCCURS].edge_index, width)
        found["co_occurrences_without_train_scene"] = len(co - explained)
    return {kind: count for kind, count in found.items() if count}


def isolated(data: HeteroData, node_type: str = SCENE) -> int:
    """Nodes of ``node_type`` with no message-passing edge in either direction."""
    touched = torch.zeros(data[node_type].num_nodes, dtype=torch.bool)
    for edge_type in data.edge_types:
        src, _, dst = edge_type
        index = data[edge_type].edge_index
        if src == node_type:
            touched[_in_range(index[0], len(touched))] = True
        if dst == node_type:
            touched[_in_range(index[1], len(touched))] = True
    return int((~touched).sum())
