"""Training speed and validation quality of the recommenders, per device, precision and knobs.

Runs the training assets' code path (``training.loop.train``: mini-batches,
negatives, validation every epoch, checkpoints) with each asset's default knobs
on a materialized data directory, for a fixed number of epochs without early
stopping, and prints seconds per epoch (with the ratio to the first row of the
same kind: fp32 on the first device named) and the validation MRR of each task
at the best epoch, of the bare cosine and with the popularity prior fitted after
training, against train popularity's in the same run.
``--variants`` takes JSON objects of knobs to override, one row each. ``--patience 10,20``
adds, per row, the epoch early stopping with each patience would have ended the run at
and the best validation MRR by then (the same run cut short: the learning-rate decay does
not depend on it).

    .venv/bin/python benchmarks/train.py [--data-dir .stl_data] [--devices cpu,cuda]
        [--precisions fp32,bf16,auto] [--kinds gat,sage,triplet] [--epochs 20]
        [--variants '{}' '{"logq_correction": true, "category_negatives": 64}']

``make demo`` fills ``.stl_data``; any ``STL_DATA_DIR`` that has run the
lineage through ``stl_graph`` and the two query embeddings works
(``benchmarks/end_to_end.py --work DIR`` keeps one at any scale). ``--tile N``
repeats that graph and its queries N times as disjoint copies: the speed and
memory of a catalogue N times larger without embedding one (``--tile 10`` on a
scale-0.1 folder is the release's shape; its MRRs mean nothing, since every
product has N identical twins). The last column is the process's peak RSS so far.
"""

import argparse
import json
import math
import resource
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import pandas as pd
import torch
from tabulate import tabulate
from torch_geometric.data import HeteroData

from stl_pipeline.catalogue import asset_path, read_embeddings
from stl_pipeline.checkpoints import BEST, load_checkpoint
from stl_pipeline.device import describe, effective_precision, resolve_device
from stl_pipeline.graph.schema import CONTAINS
from stl_pipeline.graph.store import load_graph
from stl_pipeline.metrics import mrr, true_ranks
from stl_pipeline.models.config import TrainConfig
from stl_pipeline.models.queries import Queries
from stl_pipeline.models.record import build_model, schema
from stl_pipeline.models.splits import CONTEXT_ASSET, QUERY_ASSETS, split_queries
from stl_pipeline.registry import MODELS
from stl_pipeline.training.loop import check_context, train


def load(data_dir: Path, copies: int = 1):
    graph, graph.info = load_graph(asset_path(data_dir, "stl_graph"))
    pairs = pd.read_parquet(asset_path(data_dir, "stl_pairs"))
    queries = {task: read_embeddings(data_dir, name) for task, name in QUERY_ASSETS.items()}
    context = read_embeddings(data_dir, CONTEXT_ASSET)
    train_q, _ = split_queries(graph, pairs, queries, "train", context)
    val_q, _ = split_queries(graph, pairs, queries, "val", context)
    if copies > 1:
        return *tile(graph, train_q, val_q, copies), queries["stl"].dim, context.info
    return graph, train_q, val_q, queries["stl"].dim, context.info


def tile(graph: HeteroData, train_q: dict, val_q: dict, copies: int):
    """``copies`` disjoint copies of the graph (the category nodes stay shared) and queries."""
    sizes = {t: graph[t].num_nodes for t in graph.node_types}
    offset = {t: 0 if t == "category" else n for t, n in sizes.items()}
    big = HeteroData()
    for t in graph.node_types:
        big[t].x = graph[t].x.repeat(1 if t == "category" else copies, 1)
    big["product"].category = graph["product"].category.repeat(copies)
    for (source, relation, target), edges in graph.edge_index_dict.items():
        shift = torch.tensor([[offset[source]], [offset[target]]])
        big[source, relation, target].edge_index = torch.cat([edges + k * shift for k in range(copies)], 1)

    def repeat(split: dict) -> dict:
        return {
            task: Queries(
                q.x.repeat(copies, 1),
                torch.cat([q.product + k * sizes["product"] for k in range(copies)]),
                None if q.category is None else q.category.repeat(copies),
                None if q.context is None else q.context.repeat(copies, 1, 1),
            )
            for task, q in split.items()
        }

    return big, repeat(train_q), repeat(val_q)


DEFAULTS = {spec.kind: spec.defaults for spec in MODELS}  # the training assets' own knobs


def run(kind: str, device: torch.device, precision: str, data, epochs: int, overrides: dict):
    """Seconds per epoch, the training result, and the validation MRRs with the fitted prior;
    knobs that do not fit the data's ``ctl_scene_context`` tokens are refused."""
    graph, train_q, val_q, query_dim, context = data
    knobs = {**DEFAULTS[kind], "epochs": epochs, "patience": epochs, "checkpoint_every": epochs}
    config = TrainConfig(kind=kind, **(knobs | overrides))
    check_context(config, context)
    if not config.context:  # as the training asset: a model that reads no tokens is given none
        train_q, val_q = (
            {t: replace(q, context=None) for t, q in split.items()} for split in (train_q, val_q)
        )
    graph = graph.to(device)
    train_q, val_q = ({task: q.to(device) for task, q in split.items()} for split in (train_q, val_q))
    torch.manual_seed(0)
    model = build_model(schema(graph), query_dim, config).to(device)
    with tempfile.TemporaryDirectory() as folder:
        start = time.perf_counter()
        result = train(model, graph, train_q, val_q, config, Path(folder), precision=precision)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds = time.perf_counter() - start
        prior = load_checkpoint(Path(folder) / BEST).get("prior_val_mrr", {})
    return seconds / result.epochs_run, result, prior


def popularity_mrr(data) -> dict[str, float]:
    """Validation MRR of ranking by train popularity (contains in-degree), same-category pool."""
    graph, _, val_q, _, _ = data
    degree = torch.bincount(graph[CONTAINS].edge_index[1], minlength=graph["product"].num_nodes).float()
    noise = torch.rand(len(degree), generator=torch.Generator().manual_seed(0)) * 1e-3
    category = graph["product"].category
    return {
        task: mrr(true_ranks((degree + noise).expand(len(q.product), -1), q.product, same(category, q)))
        for task, q in val_q.items()
    }


def stopped(history: list[dict[str, float]], patience: int) -> tuple[int, float]:
    """(epochs run, best validation MRR) had early stopping with ``patience`` ended the run.
    Nothing before the stop depends on the patience (the learning-rate decay has its own),
    so with deterministic kernels this is the shorter run itself, not an estimate."""
    best, at, epoch = -math.inf, -1, -1
    for record in history:
        if "val_mrr" not in record:
            continue
        epoch = int(record["epoch"])
        if record["val_mrr"] > best:
            best, at = record["val_mrr"], epoch
        if epoch - at >= patience:
            break
    return epoch + 1, best


def same(category: torch.Tensor, queries) -> torch.Tensor:
    return category[None, :] == category[queries.product][:, None]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data-dir", type=Path, default=Path(".stl_data"))
    parser.add_argument("--devices", default="auto")
    parser.add_argument("--precisions", default="fp32")
    parser.add_argument("--kinds", default="gat,sage,triplet")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--variants", nargs="+", default=["{}"], help="JSON objects of knobs to override")
    parser.add_argument("--tile", type=int, default=1, help="train on N disjoint copies of the graph")
    parser.add_argument(
        "--patience", default="", help="comma-separated patiences: where each would have stopped the run"
    )
    args = parser.parse_args()
    patiences = [int(p) for p in args.patience.split(",") if p]
    data = load(args.data_dir, args.tile)
    graph, train_q, _, _, _ = data
    print(
        f"{graph['product'].num_nodes} products, {graph['scene'].num_nodes} scenes, "
        f"{sum(graph[e].edge_index.shape[1] for e in graph.edge_types)} edges, "
        f"{sum(len(q.product) for q in train_q.values())} training queries; {args.epochs} epochs each"
    )
    popular = popularity_mrr(data)
    del data, graph, train_q  # each row loads afresh; the peak RSS column counts one copy
    popular_row = [f"{popular['stl']:.3f}", f"{popular['ctl']:.3f}"] * 2
    rows = [["popularity (train)", "", "", "", "", "", "", *popular_row, "", *[""] * len(patiences)]]
    for kind in args.kinds.split(","):
        peer = None
        for variant in args.variants:
            overrides = json.loads(variant)
            for name in args.devices.split(","):
                device = resolve_device(name)
                for asked in args.precisions.split(","):
                    precision = effective_precision(device, asked)
                    if asked != "auto" and precision != asked:
                        continue  # this device would run it as fp32 (device.py): a rerun of that row
                    per_epoch, result, prior = run(
                        kind,
                        device,
                        precision,
                        load(args.data_dir, args.tile),
                        args.epochs,
                        overrides,
                    )
                    peer = peer or per_epoch
                    best = result.history[result.best_epoch]
                    rows.append(
                        [
                            kind,
                            variant,
                            describe(device),
                            precision,
                            f"{per_epoch:.4f}",
                            f"{peer / per_epoch:.2f}",
                            result.best_epoch,
                            f"{best['val_mrr_stl']:.3f}",
                            f"{best['val_mrr_ctl']:.3f}",
                            *(f"{prior[f'val_mrr_{task}']:.3f}" if prior else "" for task in ("stl", "ctl")),
                            f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:,.0f}",
                            *("{} ({:.3f})".format(*stopped(result.history, p)) for p in patiences),
                        ]
                    )
    headers = ["model", "knobs", "device", "precision", "s/epoch", "speed-up vs first row", "best epoch"]
    metrics = ["val MRR STL", "val MRR CTL", "with prior STL", "with prior CTL", "peak RSS MB"]
    stops = [f"patience {p}: epochs (val MRR)" for p in patiences]
    print(tabulate(rows, headers=[*headers, *metrics, *stops]))


if __name__ == "__main__":
    main()
