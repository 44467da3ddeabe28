"""Save and load the graph as safetensors: loading executes no pickled code.

Tensors are stored under ``node/<type>/<attr>`` and
``edge/<src>/<relation>/<dst>/<attr>``; node ids and the build configuration
travel as JSON in the header.
"""

import json
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch_geometric.data import HeteroData

from stl_pipeline.storage import atomic_write_with

FORMAT = "stl-graph/1"


def save_graph(data: HeteroData, path: Path, info: dict | None = None) -> None:
    tensors: dict[str, torch.Tensor] = {}
    ids: dict[str, list[str]] = {}
    for node_type in data.node_types:
        for key, value in data[node_type].items():
            if isinstance(value, torch.Tensor):
                tensors[f"node/{node_type}/{key}"] = value.contiguous()
            elif key == "ids":
                ids[node_type] = list(value)
    for edge_type in data.edge_types:
        for key, value in data[edge_type].items():
            if isinstance(value, torch.Tensor):
                tensors[f"edge/{'/'.join(edge_type)}/{key}"] = value.contiguous()
    header = {"format": FORMAT, "ids": json.dumps(ids), "info": json.dumps(info or {})}
    atomic_write_with(path, lambda tmp: save_file(tensors, str(tmp), metadata=header))


def load_graph(path: Path) -> tuple[HeteroData, dict]:
    """The graph and the ``info`` it was saved with."""
    data = HeteroData()
    with safe_open(str(path), framework="pt") as handle:
        header = handle.metadata() or {}
        if header.get("format") != FORMAT:
            raise ValueError(f"{path} is not an {FORMAT} file (format {header.get('format')!r})")
        for name in handle.keys():  # noqa: SIM118 (safe_open has no __iter__)
            kind, *parts, key = name.split("/")
            store = data[parts[0]] if kind == "node" else data[tuple(parts)]
            store[key] = handle.get_tensor(name)
    for node_type, ids in json.loads(header["ids"]).items():
        data[node_type].ids = ids
    return data, json.loads(header["info"])
