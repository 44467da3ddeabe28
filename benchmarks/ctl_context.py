"""Which context the Complete-the-Look query encoder reads: the ablation it is chosen by.

For each context (``regions.CONTEXT_SOURCES``: the largest region around the bbox, all
four, the whole scene with the bbox masked, the scene's other garments, or the masked scene
and then the garments, whose first view's tokens a model reads apart: ``context_lead`` is
set per row; each view's last feature map pooled to a grid of tokens), computes ``ctl_scene_context``'s tokens
with the pipeline's backbone (sharing the asset's embedding cache), trains each graph
model with its asset's knobs, and prints validation and test CTL MRR and HR@10
(same-category pool, popularity prior fitted) against the global vector alone (``none``).
The asset's default is the row with the best validation MRR; the test columns only show
what that choice is worth.

On a generated dataset, the first line says what the scene's other garments can tell at
best (``garments_vote``), and the ``style probe`` column how much each context tells at
all: the accuracy of a logistic regression from a query's features (the global vector and
its context tokens) to its scene's latent style, fitted on train pairs and scored on the
others. It bounds what any query encoder over these frozen features can reach. Two more
columns split a trained model's image-only validation queries (no other annotated garment in
the scene, most of the release) into what it loses where: ``val style told``, the share whose
scene style its query picks out, and ``val HR@10 style given``, what it would reach if it were
told the style (against the oracle's, which is told the style and orders by popularity).
``--views`` swaps the CTL query's global vector: the asset's largest region around the bbox,
or the whole scene with the bbox masked.

    .venv/bin/python benchmarks/ctl_context.py [--sources none,largest:2,masked:2,items:1]
        [--views largest,masked] [--kinds gat,sage] [--seeds 0,1,2] [--knobs '{"edge_features": true}']

Run it with the environment the lineage ran with (``STL_DATA_DIR`` and the ``STL_*``
settings), after the lineage has materialized ``stl_graph`` and the query embeddings.
"""

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tabulate import tabulate

from stl_pipeline.catalogue import asset_path, read_embeddings
from stl_pipeline.evaluation.report import query_contexts
from stl_pipeline.features.backbone import load_backbone
from stl_pipeline.features.embed import EmbeddingCache, embed_items
from stl_pipeline.features.queries import context_items, token_keys
from stl_pipeline.features.regions import lead_tokens
from stl_pipeline.features.spec import BackboneSpec
from stl_pipeline.generate import STYLES_FILE
from stl_pipeline.graph.store import load_graph
from stl_pipeline.metrics import hit_rate, mrr, ranks_in_category, true_ranks
from stl_pipeline.models.config import TrainConfig
from stl_pipeline.models.record import build_model, schema
from stl_pipeline.models.splits import QUERY_ASSETS, split_queries
from stl_pipeline.registry import MODELS
from stl_pipeline.settings import load_settings
from stl_pipeline.training.loop import train
from stl_pipeline.vectors import Embeddings


def tokens(source: str, grid: int, pairs: pd.DataFrame, data_dir: Path) -> Embeddings:
    """``ctl_scene_context`` for this source and grid, as the asset computes it."""
    settings = load_settings()
    spec = BackboneSpec(
        settings.backbone, settings.backbone_weights, settings.backbone_checkpoint, settings.image_size
    )
    backbone = load_backbone(spec)
    items = context_items(pairs, pd.read_parquet(asset_path(data_dir, "scene_images")), source)
    pooled = EmbeddingCache(data_dir / "cache" / "embeddings", backbone)
    cache = EmbeddingCache(data_dir / "cache" / f"tokens-{grid}", backbone) if grid > 1 else pooled
    views, _ = embed_items(items, backbone, torch.device("cpu"), cache=cache, grid=grid, pooled_cache=pooled)
    return Embeddings(
        token_keys(items, grid * grid),
        views.vectors.reshape(-1, views.dim // grid**2),
        views.info | {"source": source, "grid": str(grid)},
    )


def style_probe(pairs: pd.DataFrame, ctl: Embeddings, context: Embeddings | None) -> str:
    """Held-out accuracy of the scene's style from the CTL query's features; empty without
    the generator's ground truth."""
    from sklearn.linear_model import LogisticRegression

    from stl_pipeline.models.splits import context_tokens

    path = load_settings().pairs_path.parent / STYLES_FILE
    if not path.is_file():
        return ""
    style = json.loads(path.read_text())["scenes"]
    rows = pairs[pairs["pair_id"].isin(ctl.positions())]
    x = ctl.take(list(rows["pair_id"]))
    if context is not None:
        x = np.hstack([x, context_tokens(context, list(rows["pair_id"])).flatten(1).numpy()])
    y, train = rows["scene"].map(style).to_numpy(), (rows["split"] == "train").to_numpy()
    probe = LogisticRegression(max_iter=2000).fit(x[train], y[train])
    return f"{probe.score(x[~train], y[~train]):.3f}"


def garments_vote(graph, pairs: pd.DataFrame) -> str:
    """Test CTL HR@10 (same-category pool) of ranking the products of the style most of
    the scene's other garments have first, by train popularity: what perfect recognition
    of what the scene shows can reach, against the oracle, which knows the scene's own
    style. Empty without the generator's ground truth."""
    path = load_settings().pairs_path.parent / STYLES_FILE
    if not path.is_file():
        return ""
    truth = json.loads(path.read_text())
    style = pairs["product"].map(truth["products"])
    popularity = pairs.loc[pairs["split"] == "train", "product"].value_counts()
    catalogue = pd.Series(graph["product"].category.numpy(), index=graph["product"].ids)
    category = pairs["product"].map(catalogue)
    hits = []
    for row in pairs[pairs["split"] == "test"].itertuples():
        seen = style[(pairs["scene"] == row.scene) & (pairs["pair_id"] != row.pair_id)]
        voted = seen.mode().min() if len(seen) else -1
        pool = catalogue.index[catalogue == category[row.Index]]
        key = pd.DataFrame(
            {"same": [truth["products"][p] == voted for p in pool], "n": popularity.reindex(pool).fillna(0)}
        )
        ranked = key.sort_values(["same", "n"], ascending=False, kind="stable").index
        hits.append(row.product in ranked[:10])
    return f"{np.mean(hits):.3f}"


def global_view(view: str, pairs: pd.DataFrame, data_dir: Path, ctl: Embeddings) -> Embeddings:
    """The CTL query's global vector: the asset's (``largest``: the largest region around the
    bbox), or the whole scene with the bbox masked (``masked``), keyed by pair id."""
    if view == "largest":
        return ctl
    if view != "masked":
        raise ValueError(f"unknown view {view!r}: use largest or masked")
    scene = tokens("masked", 1, pairs, data_dir)
    return Embeddings([key.rsplit("/", 1)[0] for key in scene.keys], scene.vectors, scene.info)


def scores(model, graph, queries, task: str = "ctl", rows: np.ndarray | None = None) -> tuple[float, float]:
    """MRR and HR@10 of ``task`` over the same-category pool, with the model's fitted prior;
    over the queries ``rows`` selects, if given."""
    model.eval()
    with torch.no_grad():
        q = queries[task] if rows is None else queries[task].rows(torch.from_numpy(rows))
        products = model.products(graph)
        (ranks,) = ranks_in_category(
            model.encode(q, task, products, graph),
            products,
            q.product,
            graph["product"].category,
            [model.popularity_bias(graph, task)],
        )
    return mrr(ranks), hit_rate(ranks, 10)


def style_terms(model, graph, queries, rows: pd.DataFrame, chosen: np.ndarray) -> tuple[str, str]:
    """Where a model's CTL HR@10 is lost, over the queries ``chosen`` selects: the share whose
    scene style it tells (the style whose products, in the category completed, have the highest
    mean cosine with the query), and the HR@10 it would reach were it told the style (the true
    style's products first, in the model's own order). The oracle is both at once. Empty
    without the generator's ground truth."""
    path = load_settings().pairs_path.parent / STYLES_FILE
    if not path.is_file():
        return "", ""
    truth = json.loads(path.read_text())
    product_style = torch.tensor([truth["products"][p] for p in graph["product"].ids])
    scene_style = torch.tensor(rows["scene"].map(truth["scenes"]).to_numpy())[chosen]
    q = queries["ctl"].rows(torch.from_numpy(np.flatnonzero(chosen)))
    model.eval()
    with torch.no_grad():
        products = model.products(graph)
        cosine = model.encode(q, "ctl", products, graph) @ products.T
        bias = model.popularity_bias(graph, "ctl")
    same = graph["product"].category[None, :] == graph["product"].category[q.product][:, None]
    styles = torch.nn.functional.one_hot(product_style).float()  # (P, S)
    means = (cosine * same) @ styles / (same.float() @ styles).clamp(min=1)
    means[(same.float() @ styles) == 0] = -torch.inf
    told = (product_style[None, :] == scene_style[:, None]) * 100.0 + cosine + bias
    hits = hit_rate(true_ranks(told, q.product, same), 10)
    return f"{(means.argmax(dim=1) == scene_style).float().mean():.3f}", f"{hits:.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sources", default="none,largest:2,masked:2,items:1")
    parser.add_argument("--views", default="largest", help="the CTL query's global vector: largest,masked")
    parser.add_argument("--kinds", default="gat,sage")
    parser.add_argument("--seeds", default="0", help="training seeds, one row each")
    parser.add_argument("--knobs", default="{}", help="JSON object of training knobs for every row")
    args = parser.parse_args()
    data_dir = load_settings().data_dir
    graph, graph.info = load_graph(asset_path(data_dir, "stl_graph"))
    pairs = pd.read_parquet(asset_path(data_dir, "stl_pairs"))
    stored = {task: read_embeddings(data_dir, name) for task, name in QUERY_ASSETS.items()}
    specs = {spec.kind: spec for spec in MODELS}
    vote = garments_vote(graph, pairs) or "no ground truth"
    print(f"test CTL HR@10 of the other garments' style vote: {vote}")
    rows = []
    views = {view: global_view(view, pairs, data_dir, stored["ctl"]) for view in args.views.split(",")}
    for view, choice in [(v, c) for v in views for c in args.sources.split(",")]:
        queries = stored | {"ctl": views[view]}
        source, _, grid = choice.partition(":")
        start = time.perf_counter()
        context = None if source == "none" else tokens(source, int(grid or 1), pairs, data_dir)
        embed_seconds = time.perf_counter() - start
        probe = style_probe(pairs, queries["ctl"], context)
        split, image_only, held_rows = {}, {}, {}
        for name in ("train", "val", "test"):
            split[name], held = split_queries(graph, pairs, queries, name, context)
            image_only[name] = query_contexts("ctl", held["ctl"], pairs)["image_only"]
            held_rows[name] = held["ctl"]
        for kind, seed in [(k, int(s)) for k in args.kinds.split(",") for s in args.seeds.split(",")]:
            knobs = {
                **specs[kind].defaults,
                # Each source's own lead: the masked scene's tokens of masked+items, else none.
                "context_lead": lead_tokens(source, int(grid or 1)),
                **json.loads(args.knobs),
                "context": context is not None,
                "seed": seed,
            }
            config = TrainConfig(kind=kind, **knobs)
            torch.manual_seed(config.seed)
            model = build_model(schema(graph), queries["stl"].dim, config)
            start = time.perf_counter()
            with tempfile.TemporaryDirectory() as folder:
                result = train(model, graph, split["train"], split["val"], config, Path(folder))
                model.load_state_dict(torch.load(Path(folder) / "best.pt", weights_only=True)["model"])
            val, test = scores(model, graph, split["val"]), scores(model, graph, split["test"])
            val_alone = scores(model, graph, split["val"], rows=image_only["val"])
            test_alone = scores(model, graph, split["test"], rows=image_only["test"])
            stl = scores(model, graph, split["test"], "stl")
            told = style_terms(model, graph, split["val"], held_rows["val"], image_only["val"])
            rows.append(
                [
                    view,
                    choice,
                    kind,
                    seed,
                    len(context) // len({k.rsplit("/", 1)[0] for k in context.keys}) if context else 0,
                    f"{embed_seconds:.1f}",
                    probe,
                    f"{time.perf_counter() - start:.1f}",
                    result.best_epoch,
                    f"{val[0]:.3f}",
                    f"{val_alone[0]:.3f}",
                    *told,
                    f"{test[1]:.3f}",
                    f"{test_alone[1]:.3f}",
                    f"{stl[1]:.3f}",
                    f"{image_only['test'].sum()}/{len(split['test']['ctl'])}",
                ]
            )
            print(rows[-1], flush=True)
    headers = ["view", "context", "model", "seed", "tokens/pair", "embed s", "style probe", "train s"]
    metrics = ["best epoch", "val MRR", "val MRR image only", "val style told", "val HR@10 style given"]
    metrics += ["test HR@10", "test HR@10 image only"]
    print(tabulate(rows, headers=[*headers, *metrics, "test STL HR@10", "test queries image only/all"]))


if __name__ == "__main__":
    main()
