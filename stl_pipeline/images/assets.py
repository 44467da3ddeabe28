"""Assets ``product_images`` and ``scene_images``: download manifests, and their checks."""

import time

import dagster as dg
import pandas as pd

from stl_pipeline.guards import not_shrunk
from stl_pipeline.images.download import CACHED, DOWNLOADED, FAILED
from stl_pipeline.reporting import counts, markdown
from stl_pipeline.resources import ImageSource, StlFiles

IMAGE_STORE = "images"


def _download(
    context: dg.AssetExecutionContext, signatures: pd.Series, image_source: ImageSource, stl_files: StlFiles
) -> dg.Output:
    name = context.asset_key.to_user_string()
    downloader = image_source.downloader(stl_files.path(IMAGE_STORE))
    context.log.info(f"{name}: {signatures.nunique()} images from {image_source.url_template}")
    start = time.perf_counter()
    manifest = downloader.run(signatures, progress=lambda p: context.log.info(f"{name}: {p}"))
    seconds = time.perf_counter() - start
    status = manifest["status"]
    on_disk = int(status.isin([DOWNLOADED, CACHED]).sum())
    failures = manifest[status == FAILED]
    return dg.Output(
        manifest,
        metadata={
            "images": len(manifest),
            "on_disk": on_disk,
            "downloaded": int((status == DOWNLOADED).sum()),
            "cached": int((status == CACHED).sum()),
            "failed": len(failures),
            "success_rate": on_disk / max(1, len(manifest)),
            "megabytes": round(float(manifest["bytes"].sum()) / 1e6, 2),
            "seconds": round(seconds, 2),
            "images_per_second": round(len(manifest) / seconds, 1) if seconds > 0 else 0.0,
            "store": dg.MetadataValue.path(str(stl_files.path(IMAGE_STORE))),
            "errors": dg.MetadataValue.md(counts(failures["error"], "error") if len(failures) else "none"),
        },
    )


@dg.asset(group_name="images")
def product_images(
    context: dg.AssetExecutionContext,
    stl_products: pd.DataFrame,
    image_source: ImageSource,
    stl_files: StlFiles,
) -> dg.Output[pd.DataFrame]:
    """Download manifest of every catalogue product's image."""
    return _download(context, stl_products["product"], image_source, stl_files)


@dg.asset(group_name="images")
def scene_images(
    context: dg.AssetExecutionContext, stl_pairs: pd.DataFrame, image_source: ImageSource, stl_files: StlFiles
) -> dg.Output[pd.DataFrame]:
    """Download manifest of every scene image."""
    return _download(context, stl_pairs["scene"], image_source, stl_files)


def _success_rate(manifest: pd.DataFrame, minimum: float) -> dg.AssetCheckResult:
    rate = float(manifest["status"].isin([DOWNLOADED, CACHED]).mean()) if len(manifest) else 0.0
    failures = manifest[manifest["status"] == FAILED]
    return dg.AssetCheckResult(
        passed=rate >= minimum,
        metadata={
            "success_rate": rate,
            "min_success_rate": minimum,
            "failed": len(failures),
            "sample": dg.MetadataValue.md(markdown(failures[["signature", "error"]], max_rows=10)),
        },
        description=None
        if rate >= minimum
        else f"only {rate:.1%} of images are on disk (< {minimum:.0%}); see the manifest's error column, "
        "or lower image_source.min_success_rate if the source is known to be incomplete",
    )


@dg.asset_check(asset=product_images, blocking=True, description="Enough product images are on disk.")
def product_images_success_rate(
    product_images: pd.DataFrame, image_source: ImageSource
) -> dg.AssetCheckResult:
    return _success_rate(product_images, image_source.min_success_rate)


@dg.asset_check(asset=scene_images, blocking=True, description="Enough scene images are on disk.")
def scene_images_success_rate(scene_images: pd.DataFrame, image_source: ImageSource) -> dg.AssetCheckResult:
    return _success_rate(scene_images, image_source.min_success_rate)


product_images_not_shrunk = not_shrunk("product_images", ("on_disk",))
scene_images_not_shrunk = not_shrunk("scene_images", ("on_disk",))
