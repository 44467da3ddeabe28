"""What each embedding asset embeds: images on disk, and the two query crops of each pair."""

from dataclasses import dataclass

import pandas as pd

from stl_pipeline.features.regions import Box, ctl_box, stl_box
from stl_pipeline.images.download import CACHED, DOWNLOADED

BBOX = ["left", "top", "right", "bottom"]


@dataclass(frozen=True)
class ImageItem:
    """One thing to embed: an image on disk, optionally cropped to a pixel box."""

    key: str  # signature, or pair id for scene queries
    path: str
    sha256: str
    box: Box | None = None

    @property
    def cache_key(self) -> str:
        return f"{self.sha256}/{'full' if self.box is None else ','.join(map(str, self.box))}"


def on_disk(manifest: pd.DataFrame) -> pd.DataFrame:
    """The manifest's verified images, one row per signature."""
    rows = manifest[manifest["status"].isin([DOWNLOADED, CACHED])]
    return rows.drop_duplicates("signature").set_index("signature", drop=False)


def image_items(manifest: pd.DataFrame) -> list[ImageItem]:
    rows = on_disk(manifest)
    return [
        ImageItem(key=s, path=p, sha256=h)
        for s, p, h in zip(rows["signature"], rows["path"], rows["sha256"], strict=True)
    ]


def query_items(pairs: pd.DataFrame, scene_manifest: pd.DataFrame, kind: str) -> tuple[list[ImageItem], int]:
    """One item per pair whose scene is on disk: the bbox crop (``stl``) or the region
    around it (``ctl``). Also returns how many pairs have no usable CTL region."""
    if kind not in ("stl", "ctl"):
        raise ValueError(f"unknown query kind {kind!r}: use stl or ctl")
    scenes = on_disk(scene_manifest)
    usable = pairs[pairs["scene"].isin(scenes.index)]
    rows = scenes.loc[usable["scene"]]
    items, without_region = [], 0
    for pair_id, bbox, path, sha, width, height in zip(
        usable["pair_id"],
        usable[BBOX].itertuples(index=False, name=None),
        rows["path"],
        rows["sha256"],
        rows["width"].astype(int),
        rows["height"].astype(int),
        strict=True,
    ):
        box = stl_box(bbox, width, height) if kind == "stl" else ctl_box(bbox, width, height)
        if box is None:
            without_region += 1
            continue
        items.append(ImageItem(key=pair_id, path=path, sha256=sha, box=box))
    return items, without_region
