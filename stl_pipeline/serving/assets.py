"""Assets of the ``serving`` group: ``product_index``, ``recommendations`` and
``recommendation_gallery``, and their checks."""

import time
from pathlib import Path

import dagster as dg
import numpy as np
import pandas as pd
from pydantic import Field

from stl_pipeline.artifacts import HeteroData, ProductIndex
from stl_pipeline.asset_inputs import MODEL_INS
from stl_pipeline.categories import LEAVES
from stl_pipeline.device import deterministic
from stl_pipeline.features.queries import on_disk
from stl_pipeline.graph.schema import CONTAINS
from stl_pipeline.lineage import require_trained_on
from stl_pipeline.registry import MODELS, by_method
from stl_pipeline.reporting import markdown
from stl_pipeline.resources import StlFiles
from stl_pipeline.storage import atomic_write_bytes
from stl_pipeline.vectors import Embeddings


class ProductIndexConfig(dg.Config):
    exact_limit: int = Field(default=50_000, description="Products up to which the search is exact.")
    nprobe: int = Field(default=8, description="Cells an IVF search probes (past exact_limit).")


def _served(stl_champion: dict) -> tuple[dict, dict, HeteroData]:
    from stl_pipeline.champion.store import served

    return served(stl_champion, "Shop-the-Look")


@dg.asset(group_name="serving", io_manager_key="index_io_manager")
def product_index(config: ProductIndexConfig, stl_champion: dict) -> dg.Output[ProductIndex]:
    """A FAISS index of the champion's product vectors, with the id map and provenance."""
    from stl_pipeline.champion.store import snapshot_products
    from stl_pipeline.serving.index import build_index

    serving, record, graph = _served(stl_champion)
    require_trained_on(serving["method"], record, graph.info)
    start = time.perf_counter()
    vectors = snapshot_products(Path(serving["folder"]))  # computed once, at promotion
    if len(vectors) != graph["product"].num_nodes:
        raise ValueError(f"the champion's snapshot {serving['folder']} holds vectors of another graph")
    index = build_index(vectors, graph["product"].ids, config.exact_limit, config.nprobe)
    index.info |= {
        "model": serving["method"],
        "mlflow_run_id": record["mlflow_run_id"],
        "registered": serving["registered"],
        "version": serving["version"],
    }
    return dg.Output(
        index,
        metadata={
            **index.info,
            "products": len(index.ids),
            "seconds": round(time.perf_counter() - start, 3),
        },
    )


@dg.asset_check(
    asset=product_index, blocking=True, description="Every product is indexed and finds itself first."
)
def product_index_finds_every_product(product_index: ProductIndex) -> dg.AssetCheckResult:
    total = product_index.index.ntotal
    vectors = product_index.vectors()
    scores, found = product_index.search(vectors, 1)
    # A product finds itself first, or an exact duplicate of its vector (score 1 either way).
    missed = int(((found[:, 0] != np.arange(total)) & (scores[:, 0] < 1 - 1e-4)).sum())
    return dg.AssetCheckResult(
        passed=total == len(product_index.ids) and missed == 0,
        metadata={"indexed": total, "ids": len(product_index.ids), "not_found_first": missed},
    )


class RecommendationsConfig(dg.Config):
    k: int = Field(default=10, description="Products per list.")
    complementary_per_category: int = Field(
        default=3, description="At most this many products of one category in a complementary list."
    )


def _lacking(graph: HeteroData, pairs: pd.DataFrame, scenes: list[str]) -> tuple[list[str], list[int]]:
    """(scene, category) for every held-out scene and each category none of its products has."""
    category_of = dict(zip(graph["product"].ids, graph["product"].category.tolist(), strict=True))
    present = (
        pairs[pairs["scene"].isin(scenes)]
        .assign(category=lambda t: t["product"].map(category_of))
        .groupby("scene")["category"]
        .agg(set)
    )
    offered = sorted(set(category_of.values()))
    wanted = [(scene, c) for scene in scenes for c in offered if c not in present.get(scene, set())]
    return [scene for scene, _ in wanted], [c for _, c in wanted]


@dg.asset(group_name="serving")
def recommendations(
    config: RecommendationsConfig, product_index: ProductIndex, stl_champion: dict
) -> dg.Output[pd.DataFrame]:
    """Top-K lists of the champion: similar and complementary products for every product, and
    complete-the-look products for every held-out scene of its graph and each category it lacks."""
    import torch

    from stl_pipeline.models.record import load_model
    from stl_pipeline.serving.recommend import (
        COLUMNS,
        complementary_queries,
        complete_the_look,
        finds_partners,
        hit_rate,
        paired_lead,
        rows,
        scene_partners,
        top_complementary,
        top_similar,
    )

    start = time.perf_counter()
    serving, record, stl_graph = _served(stl_champion)
    stl_pairs = pd.read_parquet(Path(serving["folder"]) / "pairs.parquet")
    if product_index.info.get("mlflow_run_id") != record["mlflow_run_id"]:
        raise ValueError("product_index was built from another champion: rematerialize product_index")
    if product_index.ids != list(stl_graph["product"].ids):
        raise ValueError("product_index was built from another stl_graph: rematerialize product_index")
    # The same champion gives the same lists, bit for bit: sums over edges in a fixed order.
    with torch.no_grad(), deterministic():
        ids, category = product_index.ids, stl_graph["product"].category
        names = [LEAVES[c] for c in category.tolist()]
        vectors = torch.from_numpy(product_index.vectors())
        k, per_category = config.k, config.complementary_per_category
        scene = stl_graph["scene"]
        require_trained_on(serving["method"], record, stl_graph.info)
        model = load_model(record)
        scene_queries = model.queries(scene.x, "ctl")
        ctl_bias = model.popularity_bias(stl_graph, "ctl")
        edges = stl_graph[CONTAINS].edge_index  # train scenes only

        def complementary_of(products: torch.Tensor, queries: torch.Tensor) -> pd.DataFrame:
            return rows(
                "complementary",
                ids,
                *top_complementary(products, category, k, per_category, queries),
                ids,
                names,
            )

        similar = rows("similar", ids, *top_similar(vectors, category, k), ids, names)
        own_vectors = finds_partners(record["config"])
        complementary = complementary_of(
            vectors, complementary_queries(vectors, edges[1], edges[0], scene_queries, own_vectors)
        )
        held_out = [s for s, test in zip(scene.ids, scene.test_mask.tolist(), strict=True) if test]
        scenes, lacking = _lacking(stl_graph, stl_pairs, held_out)
        wanted = torch.tensor(lacking, dtype=torch.long)
        position = {s: i for i, s in enumerate(scene.ids)}
        queries = scene_queries[[position[s] for s in scenes]]
        looks = rows(
            "complete_the_look",
            scenes,
            *complete_the_look(queries, vectors, category, wanted, k, ctl_bias),
            ids,
            names,
        )
        table = pd.concat([similar, complementary, looks], ignore_index=True)[COLUMNS]

        # Held-out check of the complementary lists: products that share a test scene should
        # find each other. Baselines: the other kind of query of the same model, and the frozen
        # backbone's vectors.
        category_of = dict(zip(ids, names, strict=True))
        truth = scene_partners(stl_pairs[stl_pairs["scene"].isin(held_out)], category_of)
        truth = truth[truth["query"].isin(category_of) & truth["product"].isin(category_of)]
        frozen = stl_graph["product"].x[:, : record["query_dim"]]
        used, other = (
            ("product_vectors", "scene_context") if own_vectors else ("scene_context", "product_vectors")
        )
        other_queries = complementary_queries(vectors, edges[1], edges[0], scene_queries, not own_vectors)
        baselines = {
            other: complementary_of(vectors, other_queries),
            "frozen": complementary_of(frozen, frozen),
        }
        shares = table.groupby("kind")["category"].value_counts(normalize=True).unstack(0).fillna(0).round(3)
        metadata = {
            "model": serving["method"],
            "mlflow_model": f"{serving['registered']} version {serving['version']}",
            "mlflow_run_id": record["mlflow_run_id"],
            "k": k,
            "held_out_scenes": len(held_out),
            **{
                f"rows_{kind}": int((table["kind"] == kind).sum())
                for kind in ("similar", "complementary", "complete_the_look")
            },
            **{
                f"coverage_{kind}": round(table.loc[table["kind"] == kind, "product"].nunique() / len(ids), 4)
                for kind in ("similar", "complementary", "complete_the_look")
            },
            "complementary_queries": used,
            "complementary_test_pairs": len(truth),
            f"complementary_test_hit_rate@{k}": round(hit_rate(complementary, truth), 4),
            **{
                f"complementary_test_hit_rate@{k}_{name}": round(hit_rate(lists, truth), 4)
                for name, lists in baselines.items()
            },
            **{
                f"complementary_test_lead@{k}_over_{other}{part}": round(value, 4)
                for part, value in zip(
                    ("", "_low", "_high"), paired_lead(complementary, baselines[other], truth), strict=True
                )
            },
            "category_share": dg.MetadataValue.md(markdown(shares.reset_index(), max_rows=20)),
            "preview": dg.MetadataValue.md(markdown(table.groupby("kind").head(3).round(4), max_rows=12)),
            "seconds": round(time.perf_counter() - start, 2),
        }
    return dg.Output(table, metadata=metadata)


@dg.asset_check(
    asset=recommendations,
    blocking=True,
    additional_ins={"product_index": dg.AssetIn("product_index"), "stl_champion": dg.AssetIn("stl_champion")},
    description="No product recommends itself, categories are respected, and lists are full.",
)
def recommendations_well_formed(
    recommendations: pd.DataFrame, product_index: ProductIndex, stl_champion: dict
) -> dg.AssetCheckResult:
    from stl_pipeline.serving.recommend import problems

    _, _, graph = _served(stl_champion)
    names = (LEAVES[c] for c in graph["product"].category.tolist())
    k = int(recommendations["rank"].max()) if len(recommendations) else 0
    found = problems(recommendations, dict(zip(product_index.ids, names, strict=True)), k)
    return dg.AssetCheckResult(passed=not any(found.values()), metadata=found)


class GalleryConfig(dg.Config):
    scenes: int = Field(default=6, description="Held-out test scenes shown, one pair each.")
    k: int = Field(default=10, description="Products shown per method and task.")
    strips: int = Field(default=4, description="Products shown with their similar and complementary lists.")
    thumbnail: int = Field(default=72, description="Thumbnail side in pixels.")
    seed: int = 0


GALLERY_METHODS = {"popularity": "popularity", "frozen_knn": "frozen kNN"} | {
    spec.method: spec.label for spec in MODELS
}


def _sample_pairs(pairs: pd.DataFrame, usable: set[str], count: int, seed: int) -> pd.DataFrame:
    """One held-out test pair per scene, for ``count`` scenes chosen at random (seeded): half
    with other annotated garments in the scene, half with only the image around the box
    (``context``), while both kinds last."""
    others = pairs["scene"].map(pairs.groupby("scene").size()) - 1
    test = pairs.assign(others=others)
    test = test[(test["split"].astype(str) == "test") & test["pair_id"].isin(usable)]
    one = test.sort_values("pair_id").drop_duplicates("scene").sample(frac=1.0, random_state=seed)
    image_only, annotated = one[one["others"] == 0], one[one["others"] > 0]
    half = min(len(image_only), max(count - len(annotated), (count + 1) // 2))
    chosen = pd.concat([image_only.head(half), annotated.head(count - half)])
    return chosen.sort_values("pair_id")


@dg.asset(group_name="serving", ins=MODEL_INS)
def recommendation_gallery(
    context: dg.AssetExecutionContext,
    config: GalleryConfig,
    retrieval_report: pd.DataFrame,
    recommendations: pd.DataFrame,
    stl_champion: dict,
    stl_graph: HeteroData,
    stl_pairs: pd.DataFrame,
    stl_products: pd.DataFrame,
    product_images: pd.DataFrame,
    scene_images: pd.DataFrame,
    stl_crop_embeddings: Embeddings,
    ctl_scene_embeddings: Embeddings,
    ctl_scene_context: Embeddings,
    stl_files: StlFiles,
    **models: dict,
) -> dg.Output[pd.DataFrame]:
    """An HTML page of held-out test scenes: query regions, the true product and each method's
    top-K side by side with hits marked, the test metrics on top, and the champion's
    similar-product strips (it waits for the champion's gate, as everything served does).
    Its value is the table of what it shows: per pair, method and task, the true product's rank."""
    import torch

    from stl_pipeline.evaluation.report import overall
    from stl_pipeline.models.queries import Queries
    from stl_pipeline.models.splits import context_tokens
    from stl_pipeline.serving.gallery import (
        Thumbnails,
        build_samples,
        metrics_table,
        preview,
        ranked_lists,
        render,
        shown_table,
        strips_of,
    )

    ids, category = stl_graph["product"].ids, stl_graph["product"].category
    position = {p: i for i, p in enumerate(ids)}
    queries = {"stl": stl_crop_embeddings, "ctl": ctl_scene_embeddings}
    usable = set(stl_crop_embeddings.keys) & set(ctl_scene_embeddings.keys)
    chosen = _sample_pairs(stl_pairs[stl_pairs["product"].isin(position)], usable, config.scenes, config.seed)
    truth = torch.tensor([position[p] for p in chosen["product"]], dtype=torch.long)
    popularity = torch.tensor(stl_products.set_index("product").loc[ids, "popularity"].to_numpy())
    records = by_method(models)
    pair_ids = list(chosen["pair_id"])
    x = {
        task: Queries(
            torch.from_numpy(e.take(pair_ids)),
            truth,
            category[truth],
            context_tokens(ctl_scene_context, pair_ids) if task == "ctl" else None,
        )
        for task, e in queries.items()
    }
    lists = ranked_lists(stl_graph, records, popularity, x, ctl_scene_context, GALLERY_METHODS, config.k)
    samples = build_samples(
        chosen, on_disk(scene_images), [LEAVES[c] for c in category[truth].tolist()], lists
    )
    strips = [
        strip
        for product in list(chosen["product"])[: config.strips]
        for strip in strips_of(recommendations, product, config.k)
    ]
    test = retrieval_report[
        (retrieval_report["split"] == "test") & (retrieval_report["pool"] == "same_category")
    ]
    queries_count = int(overall(test)["queries"].iloc[0]) if len(test) else 0
    products = on_disk(product_images)
    thumbnails = Thumbnails(dict(zip(products["signature"], products["path"], strict=True)), config.thumbnail)
    served = stl_champion["serving"]
    runs = ", ".join(f"{m} {r['mlflow_run_id'][:8]}" for m, r in records.items())
    runs += f" · serving: {served['method']} ({served['registered']} version {served['version']})"
    page = render(
        "stl-pipeline recommendation gallery",
        f"{len(samples)} held-out test scenes · {queries_count} test queries in the metrics · "
        f"model runs: {runs}",
        metrics_table(test, GALLERY_METHODS),
        samples,
        strips,
        thumbnails,
        tile=config.thumbnail,
    )
    path = stl_files.path("gallery", "recommendation_gallery.html")
    atomic_write_bytes(path, page.encode())
    shown = shown_table(samples, config.k)
    metadata = {
        "gallery": dg.MetadataValue.path(str(path)),
        "gallery_bytes": path.stat().st_size,
        "scenes": len(samples),
        "hits_per_method": dg.MetadataValue.md(
            markdown(
                shown.pivot_table(index="method", columns="task", values="hit", aggfunc="sum").reset_index()
            )
        )
        if len(shown)
        else "none",
    }
    if samples:
        metadata |= stl_files.save_plot(
            "recommendation_gallery_preview", preview(samples[0], "GAT", thumbnails)
        )
    context.log.info(f"recommendation_gallery: {path}")
    return dg.Output(shown, metadata=metadata)


@dg.asset_check(
    asset=recommendation_gallery,
    blocking=True,
    description="The page exists and shows every method on both tasks for every sampled scene.",
)
def recommendation_gallery_complete(
    recommendation_gallery: pd.DataFrame, stl_files: StlFiles
) -> dg.AssetCheckResult:
    path = stl_files.path("gallery", "recommendation_gallery.html")
    page = path.read_text() if path.is_file() else ""
    shown = recommendation_gallery
    per_pair = shown.groupby("pair_id").size() if len(shown) else pd.Series(dtype=int)
    expected = len(GALLERY_METHODS) * 2
    missing_on_page = sum(pair[:12] not in page for pair in per_pair.index)
    return dg.AssetCheckResult(
        passed=bool(page) and len(per_pair) > 0 and (per_pair == expected).all() and not missing_on_page,
        metadata={
            "page_exists": bool(page),
            "scenes": len(per_pair),
            "incomplete_scenes": int((per_pair != expected).sum()),
            "scenes_missing_on_page": missing_on_page,
        },
    )
