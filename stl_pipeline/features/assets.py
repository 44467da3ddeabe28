"""Assets of the ``features`` group: backbone embeddings of images and scene queries, and their checks."""

import json
import warnings

import dagster as dg
import numpy as np
import pandas as pd

from stl_pipeline.executor import GPU_POOL, GPU_STEP_TAGS
from stl_pipeline.features.partitions import PARTITIONS, in_partitions, partition_of
from stl_pipeline.features.queries import ImageItem, context_items, image_items, query_items, token_keys
from stl_pipeline.features.regions import tokens_source
from stl_pipeline.guards import not_shrunk
from stl_pipeline.io_managers import EmbeddingIOManager
from stl_pipeline.plots import embedding_map
from stl_pipeline.resources import BackboneResource, StlFiles, TorchDevice
from stl_pipeline.vectors import Embeddings

GROUP, IO = "features", "embedding_io_manager"
NORM_TOLERANCE = 1e-3
EMBEDDING_PARTITIONS = dg.StaticPartitionsDefinition(list(PARTITIONS))
# A run over every partition at once, as one step per asset: the demo, the sensor's ingestion.
ALL_PARTITIONS = {
    "dagster/asset_partition_range_start": PARTITIONS[0],
    "dagster/asset_partition_range_end": PARTITIONS[-1],
}
Parts = dict[str, Embeddings]


def _partitions(context: dg.AssetExecutionContext) -> list[str]:
    """The run's partitions, or an error that says how to name them: Dagster runs a job that
    holds these assets without partitions when its run has no partition tags (``dagster job
    execute -j stl_embed`` as Dagster's docs teach it)."""
    if not (context.has_partition_key or context.has_partition_key_range):
        name = context.asset_key.to_user_string()
        raise dg.Failure(
            f"{name} is partitioned by the leading hex digit of the image signature, and this run "
            "names no partition. Run stl_full_pipeline or stl_ingest (every partition), pass the tags "
            f"'{json.dumps(ALL_PARTITIONS)}' for all sixteen in one step, or one partition "
            "(dagster asset materialize --partition 0, a backfill of stl_embed)."
        )
    return list(context.partition_keys)


def _embed(
    context: dg.AssetExecutionContext,
    items: list[ImageItem],
    torch_device: TorchDevice,
    backbone: BackboneResource,
    stl_files: StlFiles,
    grid: int = 0,
) -> tuple[Embeddings, dict]:
    from stl_pipeline.device import describe
    from stl_pipeline.features.embed import EmbeddingCache, embed_items

    name = context.asset_key.to_user_string()
    device = torch_device.torch_device()
    precision = torch_device.precision_on(device)
    if torch_device.precision not in ("auto", precision):
        context.log.warning(
            f"{device} cannot run {torch_device.precision} autocast fast; it runs {precision}"
        )
    workers = torch_device.loader_workers(device)
    model = backbone.load()
    context.log.info(
        f"{name}: {len(items)} images with {model.spec.model} ({model.weights_id}) on {device} in {precision}"
    )
    pooled = EmbeddingCache(stl_files.path("cache", "embeddings"), model, precision)
    embeddings, stats = embed_items(
        items,
        model,
        device,
        precision,
        batch_size=torch_device.batch_size,
        workers=workers,
        cache=EmbeddingCache(stl_files.path("cache", f"tokens-{grid}"), model, precision)
        if grid > 1
        else pooled,
        progress=lambda done, total: context.log.debug(f"{name}: {done}/{total}"),
        grid=grid,
        pooled_cache=pooled if grid else None,
    )
    metadata = {
        "model": model.spec.model,
        "weights": model.weights_id,
        "transform": model.transform.describe(),
        "dimension": model.dim,
        "embedded": len(embeddings),
        "computed": stats.computed,
        "cached": stats.cached,
        "device": describe(device),
        "precision": precision,
        "loader_workers": workers,
        "seconds": round(stats.seconds, 2),
        "images_per_second": round(stats.images_per_second, 1),
    }
    return embeddings, metadata


def _split(
    context: dg.AssetExecutionContext, embeddings: Embeddings, row_partitions: list[str], metadata: dict
) -> Parts:
    """The run's vectors by partition, each partition's materialization with its own count."""
    rows = np.asarray(row_partitions, dtype=object)
    parts = {p: embeddings.where(rows == p) for p in _partitions(context)}
    for partition, part in parts.items():
        context.add_asset_metadata({"count": len(part)}, partition_key=partition)
    context.add_output_metadata(metadata)
    return parts


def _asset(name: str | None = None, description: str | None = None):
    """A partitioned embedding asset: a backfill runs one partition per run, side by side in
    the run queue and one at a time on the GPU pool; a run over ``ALL_PARTITIONS`` does all."""
    with warnings.catch_warnings():
        # Dagster marks backfill_policy beta; the deployment test runs such a backfill. Without
        # this, every step process of a run prints the warning once per embedding asset.
        warnings.simplefilter("ignore", dg.BetaWarning)
        return dg.asset(
            name=name,
            group_name=GROUP,
            pool=GPU_POOL,
            op_tags=GPU_STEP_TAGS,
            io_manager_key=IO,
            description=description,
            partitions_def=EMBEDDING_PARTITIONS,
            backfill_policy=dg.BackfillPolicy.multi_run(max_partitions_per_run=1),
        )


@_asset(description="Backbone embedding of every product image on disk, keyed by signature.")
def product_embeddings(
    context: dg.AssetExecutionContext,
    product_images: pd.DataFrame,
    stl_products: pd.DataFrame,
    torch_device: TorchDevice,
    backbone: BackboneResource,
    stl_files: StlFiles,
) -> Parts:
    items = in_partitions(image_items(product_images), _partitions(context))
    embeddings, metadata = _embed(context, items, torch_device, backbone, stl_files)
    category = dict(zip(stl_products["product"], stl_products["category"].astype(str), strict=True))
    if len(embeddings):
        png = embedding_map(
            embeddings.vectors,
            [category.get(key, "") for key in embeddings.keys],
            f"Product embeddings ({metadata['model']}), PCA",
        )
        metadata |= stl_files.save_plot("product_embedding_map", png)
    return _split(context, embeddings, [partition_of(i) for i in items], metadata)


@_asset(description="Backbone embedding of every scene image on disk, keyed by signature.")
def scene_embeddings(
    context: dg.AssetExecutionContext,
    scene_images: pd.DataFrame,
    torch_device: TorchDevice,
    backbone: BackboneResource,
    stl_files: StlFiles,
) -> Parts:
    items = in_partitions(image_items(scene_images), _partitions(context))
    embeddings, metadata = _embed(context, items, torch_device, backbone, stl_files)
    return _split(context, embeddings, [partition_of(i) for i in items], metadata)


def _query_asset(name: str, kind: str, description: str) -> dg.AssetsDefinition:
    """The two scene-query assets differ only in the region they crop."""

    @_asset(name=name, description=description)
    def query_embeddings(
        context: dg.AssetExecutionContext,
        stl_pairs: pd.DataFrame,
        scene_images: pd.DataFrame,
        torch_device: TorchDevice,
        backbone: BackboneResource,
        stl_files: StlFiles,
    ) -> Parts:
        items, without_region = query_items(stl_pairs, scene_images, kind)
        items = in_partitions(items, _partitions(context))
        embeddings, metadata = _embed(context, items, torch_device, backbone, stl_files)
        if kind == "ctl":
            metadata["pairs_without_region"] = without_region
        return _split(context, embeddings, [partition_of(i) for i in items], metadata)

    return query_embeddings


stl_crop_embeddings = _query_asset(
    "stl_crop_embeddings",
    "stl",
    "Shop-the-Look queries: each pair's scene cropped to its bbox, keyed by pair id.",
)
ctl_scene_embeddings = _query_asset(
    "ctl_scene_embeddings",
    "ctl",
    "Complete-the-Look queries: the largest scene region left of, right of, above or below each "
    "pair's bbox, so the product is not visible; keyed by pair id.",
)


class ContextConfig(dg.Config):
    """Where the context tokens come from (``regions.CONTEXT_SOURCES``) and the grid each
    view's last feature map is pooled to; ``benchmarks/ctl_context.py`` compares them on
    validation: the masked scene and the other garments, one token each (docs/experiments.md)."""

    source: str = "masked+items"
    grid: int = 1


@_asset()
def ctl_scene_context(
    context: dg.AssetExecutionContext,
    config: ContextConfig,
    stl_pairs: pd.DataFrame,
    scene_images: pd.DataFrame,
    torch_device: TorchDevice,
    backbone: BackboneResource,
    stl_files: StlFiles,
) -> Parts:
    """Complete-the-Look context tokens: each pair's scene, seen without its product, as a
    grid of backbone feature-map cells, keyed ``<pair id>/<token>``. A graph model with
    ``context`` on (GAT by default) attends over them by the category its CTL query
    completes (Kang et al.)."""
    from stl_pipeline.features.regions import CONTEXT_SOURCES

    if config.source not in CONTEXT_SOURCES or not 1 <= config.grid <= 4:
        raise ValueError(
            f"ctl_scene_context: source {config.source!r}, grid {config.grid}: use a source of "
            f"{', '.join(CONTEXT_SOURCES)} and a grid of 1 to 4"
        )
    items = in_partitions(context_items(stl_pairs, scene_images, config.source), _partitions(context))
    views, metadata = _embed(context, items, torch_device, backbone, stl_files, grid=config.grid)
    per_view = config.grid**2
    tokens = Embeddings(
        token_keys(items, per_view),
        views.vectors.reshape(-1, views.dim // per_view),
        views.info | {"source": config.source, "grid": str(config.grid)},
    )
    pairs = {key.rsplit("/", 1)[0] for key in tokens.keys}
    metadata |= {
        "source": config.source,
        "grid": config.grid,
        "tokens": len(tokens),
        "pairs": len(pairs),
        "tokens_per_pair": round(len(tokens) / max(1, len(pairs)), 2),
        "dimension": tokens.dim,
    }
    return _split(context, tokens, [partition_of(i) for i in items for _ in range(per_view)], metadata)


def _completeness(embeddings: Embeddings, expected: set[str]) -> dg.AssetCheckResult:
    keys = list(embeddings.keys)
    missing, extra = expected - set(keys), set(keys) - expected
    duplicates = len(keys) - len(set(keys))
    return dg.AssetCheckResult(
        passed=not (missing or extra or duplicates),
        metadata={
            "expected": len(expected),
            "missing": len(missing),
            "unexpected": len(extra),
            "duplicates": duplicates,
            "sample_missing": ", ".join(sorted(missing)[:5]) or "none",
        },
        description="rematerialize the asset: its images changed since" if missing or extra else None,
    )


def _pair_items(
    kind: str, embeddings: Embeddings, pairs: pd.DataFrame, scenes: pd.DataFrame
) -> list[ImageItem]:
    """The items a pair-keyed asset embeds: one per query (``stl``, ``ctl``), or every view
    (``context``, for the source the tokens record)."""
    if kind == "context":
        return context_items(pairs, scenes, tokens_source(embeddings.info))
    return query_items(pairs, scenes, kind)[0]


def _expected_keys(
    kind: str, embeddings: Embeddings, items: list[ImageItem], partitions: list[str]
) -> set[str]:
    items = in_partitions(items, partitions)
    if kind == "context":
        return set(token_keys(items, int(embeddings.info.get("grid", 1)) ** 2))
    return {item.key for item in items}


def _checks_for(asset: str, manifest: str | None = None, kind: str = "") -> list[dg.AssetChecksDefinition]:
    """Four blocking checks per embedding asset: finite, unit norm, one per verified image
    (``manifest``) or per pair query (``kind``), not shrunk. Each reads the partitions its
    run wrote: a backfill's first run checks its own partition, not sixteen."""

    def run_partitions(context: dg.AssetCheckExecutionContext, io: EmbeddingIOManager) -> Embeddings:
        return io.load_partitions(asset, list(context.partition_keys))

    @dg.asset_check(asset=asset, name=f"{asset}_finite", blocking=True, description="Every value is finite.")
    def finite(
        context: dg.AssetCheckExecutionContext, embedding_io_manager: dg.ResourceParam[EmbeddingIOManager]
    ) -> dg.AssetCheckResult:
        embeddings = run_partitions(context, embedding_io_manager)
        bad = ~np.isfinite(embeddings.vectors).all(axis=1)
        keys = [k for k, b in zip(embeddings.keys, bad, strict=True) if b]
        return dg.AssetCheckResult(
            passed=not keys, metadata={"non_finite": len(keys), "sample": ", ".join(keys[:5]) or "none"}
        )

    @dg.asset_check(
        asset=asset, name=f"{asset}_unit_norm", blocking=True, description="Every vector has length 1."
    )
    def unit_norm(
        context: dg.AssetCheckExecutionContext, embedding_io_manager: dg.ResourceParam[EmbeddingIOManager]
    ) -> dg.AssetCheckResult:
        embeddings = run_partitions(context, embedding_io_manager)
        norms = np.linalg.norm(embeddings.vectors, axis=1)
        off = ~(np.abs(norms - 1) <= NORM_TOLERANCE)
        return dg.AssetCheckResult(
            passed=not off.any(),
            metadata={
                "off_unit_norm": int(off.sum()),
                "min_norm": float(np.nanmin(norms)) if len(norms) else 1.0,
                "max_norm": float(np.nanmax(norms)) if len(norms) else 1.0,
            },
        )

    name, description = f"{asset}_complete", "Exactly one vector per verified image or pair query."
    if manifest:

        @dg.asset_check(
            asset=asset,
            name=name,
            blocking=True,
            additional_ins={"manifest": dg.AssetIn(manifest)},
            description=description,
        )
        def complete(
            context: dg.AssetCheckExecutionContext,
            embedding_io_manager: dg.ResourceParam[EmbeddingIOManager],
            manifest: pd.DataFrame,
        ) -> dg.AssetCheckResult:
            embeddings = run_partitions(context, embedding_io_manager)
            partitions = list(context.partition_keys)
            return _completeness(
                embeddings, _expected_keys("", embeddings, image_items(manifest), partitions)
            )

    else:

        @dg.asset_check(
            asset=asset,
            name=name,
            blocking=True,
            additional_ins={"stl_pairs": dg.AssetIn("stl_pairs"), "scene_images": dg.AssetIn("scene_images")},
            description=description,
        )
        def complete(
            context: dg.AssetCheckExecutionContext,
            embedding_io_manager: dg.ResourceParam[EmbeddingIOManager],
            stl_pairs: pd.DataFrame,
            scene_images: pd.DataFrame,
        ) -> dg.AssetCheckResult:
            embeddings = run_partitions(context, embedding_io_manager)
            items = _pair_items(kind, embeddings, stl_pairs, scene_images)
            return _completeness(
                embeddings, _expected_keys(kind, embeddings, items, list(context.partition_keys))
            )

    return [finite, unit_norm, complete, not_shrunk(asset, ("count",), PARTITIONS)]


embedding_checks = [
    *_checks_for("product_embeddings", manifest="product_images"),
    *_checks_for("scene_embeddings", manifest="scene_images"),
    *_checks_for("stl_crop_embeddings", kind="stl"),
    *_checks_for("ctl_scene_embeddings", kind="ctl"),
    *_checks_for("ctl_scene_context", kind="context"),
]
