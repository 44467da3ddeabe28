"""Training throughput of the three recommenders, per device and precision, in one run.

Runs the training assets' code path (``training.loop.train``: mini-batches,
negatives, validation every epoch, checkpoints) on a materialized data
directory, for a fixed number of epochs without early stopping, and prints
seconds per epoch with the ratio to the first row of the same kind (the peer:
fp32 on the first device named).

    .venv/bin/python benchmarks/train.py [--data-dir .stl_data] [--devices cpu,cuda]
        [--precisions fp32,bf16] [--kinds gat,sage,triplet] [--epochs 20]

``make demo`` fills ``.stl_data``; any ``STL_DATA_DIR`` that has run the
lineage through ``stl_graph`` and the two query embeddings works.
"""

import argparse
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch
from tabulate import tabulate

from stl_pipeline.device import describe, effective_precision, resolve_device
from stl_pipeline.graph.store import load_graph
from stl_pipeline.training.data import split_queries
from stl_pipeline.training.loop import TrainConfig, train
from stl_pipeline.training.models import build_model, schema
from stl_pipeline.vectors import Embeddings


def load(data_dir: Path):
    graph, _ = load_graph(data_dir / "graph" / "stl_graph.safetensors")
    pairs = pd.read_parquet(data_dir / "tables" / "stl_pairs.parquet")
    queries = {
        "stl": Embeddings.load(data_dir / "embeddings" / "stl_crop_embeddings.parquet"),
        "ctl": Embeddings.load(data_dir / "embeddings" / "ctl_scene_embeddings.parquet"),
    }
    train_q, _ = split_queries(graph, pairs, queries, "train")
    val_q, _ = split_queries(graph, pairs, queries, "val")
    return graph, train_q, val_q, queries["stl"].dim


def seconds_per_epoch(kind: str, device: torch.device, precision: str, data, epochs: int) -> float:
    graph, train_q, val_q, query_dim = data
    config = TrainConfig(kind=kind, epochs=epochs, patience=epochs, checkpoint_every=epochs)
    if kind == "triplet":
        config = TrainConfig(kind=kind, hidden=512, lr=1e-3, loss="triplet", epochs=epochs, patience=epochs)
    graph = graph.to(device)
    for split in (train_q, val_q):
        for q in split.values():
            q.x, q.product = q.x.to(device), q.product.to(device)
    torch.manual_seed(0)
    model = build_model(*schema(graph), query_dim, config).to(device)
    with tempfile.TemporaryDirectory() as folder:
        start = time.perf_counter()
        result = train(model, graph, train_q, val_q, config, Path(folder), precision=precision)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds = time.perf_counter() - start
    return seconds / result.epochs_run


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data-dir", type=Path, default=Path(".stl_data"))
    parser.add_argument("--devices", default="auto")
    parser.add_argument("--precisions", default="fp32")
    parser.add_argument("--kinds", default="gat,sage,triplet")
    parser.add_argument("--epochs", type=int, default=20)
    args = parser.parse_args()
    data = load(args.data_dir)
    graph, train_q, _, _ = data
    print(
        f"{graph['product'].num_nodes} products, {graph['scene'].num_nodes} scenes, "
        f"{sum(graph[e].edge_index.shape[1] for e in graph.edge_types)} edges, "
        f"{sum(len(q.product) for q in train_q.values())} training queries; {args.epochs} epochs each"
    )
    rows = []
    for kind in args.kinds.split(","):
        peer = None
        for name in args.devices.split(","):
            device = resolve_device(name)
            for asked in args.precisions.split(","):
                precision = effective_precision(device, asked)
                if precision != asked:
                    continue  # autocast is CUDA-only: on CPU bf16 would just rerun fp32
                per_epoch = seconds_per_epoch(kind, device, precision, load(args.data_dir), args.epochs)
                peer = peer or per_epoch
                rows.append(
                    [kind, describe(device), precision, f"{per_epoch:.4f}", f"{peer / per_epoch:.2f}"]
                )
    print(tabulate(rows, headers=["model", "device", "precision", "s/epoch", "speed-up vs first row"]))


if __name__ == "__main__":
    main()
