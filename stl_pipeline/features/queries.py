"""What each embedding asset embeds: images on disk, and the two query crops of each pair."""

from dataclasses import dataclass

import pandas as pd

from stl_pipeline.features.regions import Box, context_views, ctl_box, stl_box
from stl_pipeline.images.download import CACHED, DOWNLOADED

BBOX = ["left", "top", "right", "bottom"]


@dataclass(frozen=True)
class ImageItem:
    """One thing to embed: an image on disk, optionally with a pixel box filled with the
    backbone's mean colour (``mask``), then cropped to a pixel box."""

    key: str  # signature, pair id for scene queries, pair id/view for context views
    signature: str  # of the image: its partition (features/partitions.py)
    path: str
    sha256: str
    box: Box | None = None
    mask: Box | None = None

    @property
    def cache_key(self) -> str:
        key = f"{self.sha256}/{'full' if self.box is None else ','.join(map(str, self.box))}"
        return key if self.mask is None else f"{key}/mask={','.join(map(str, self.mask))}"


def on_disk(manifest: pd.DataFrame) -> pd.DataFrame:
    """The manifest's verified images, one row per signature."""
    rows = manifest[manifest["status"].isin([DOWNLOADED, CACHED])]
    return rows.drop_duplicates("signature").set_index("signature", drop=False)


def image_items(manifest: pd.DataFrame) -> list[ImageItem]:
    rows = on_disk(manifest)
    return [
        ImageItem(key=s, signature=s, path=p, sha256=h)
        for s, p, h in zip(rows["signature"], rows["path"], rows["sha256"], strict=True)
    ]


def _scenes_of(pairs: pd.DataFrame, scene_manifest: pd.DataFrame) -> zip:
    """(pair id, bbox, scene, path, sha256, width, height) of each pair whose scene is on disk."""
    scenes = on_disk(scene_manifest)
    usable = pairs[pairs["scene"].isin(scenes.index)]
    rows = scenes.loc[usable["scene"]]
    return zip(
        usable["pair_id"],
        usable[BBOX].itertuples(index=False, name=None),
        usable["scene"],
        rows["path"],
        rows["sha256"],
        rows["width"].astype(int),
        rows["height"].astype(int),
        strict=True,
    )


def query_items(pairs: pd.DataFrame, scene_manifest: pd.DataFrame, kind: str) -> tuple[list[ImageItem], int]:
    """One item per pair whose scene is on disk: the bbox crop (``stl``) or the region
    around it (``ctl``). Also returns how many pairs have no usable CTL region."""
    if kind not in ("stl", "ctl"):
        raise ValueError(f"unknown query kind {kind!r}: use stl or ctl")
    items, without_region = [], 0
    for pair_id, bbox, scene, path, sha, width, height in _scenes_of(pairs, scene_manifest):
        box = stl_box(bbox, width, height) if kind == "stl" else ctl_box(bbox, width, height)
        if box is None:
            without_region += 1
            continue
        items.append(ImageItem(key=pair_id, signature=scene, path=path, sha256=sha, box=box))
    return items, without_region


def context_items(pairs: pd.DataFrame, scene_manifest: pd.DataFrame, source: str) -> list[ImageItem]:
    """The views of each pair's scene that its Complete-the-Look context tokens come from
    (``regions.context_views``), keyed ``<pair id>/<view>``; none for a pair without context."""
    boxes: dict[str, list[tuple]] = {}
    if "items" in source.split("+"):
        for scene, *bbox in pairs[["scene", *BBOX]].itertuples(index=False, name=None):
            boxes.setdefault(scene, []).append(tuple(bbox))
    return [
        ImageItem(key=f"{pair_id}/{view}", signature=scene, path=path, sha256=sha, box=box, mask=mask)
        for pair_id, bbox, scene, path, sha, width, height in _scenes_of(pairs, scene_manifest)
        for view, (box, mask) in enumerate(
            context_views(bbox, width, height, source, tuple(boxes.get(scene, ())))
        )
    ]


def token_keys(items: list[ImageItem], tokens_per_view: int) -> list[str]:
    """``<pair id>/<token>`` of each token of ``items``' views, in order: a pair's tokens are
    numbered across its views."""
    counts: dict[str, int] = {}
    keys = []
    for item in items:
        pair_id = item.key.rsplit("/", 1)[0]
        start = counts.get(pair_id, 0)
        keys.extend(f"{pair_id}/{start + t}" for t in range(tokens_per_view))
        counts[pair_id] = start + tokens_per_view
    return keys
