"""Query geometry: the Shop-the-Look crop and the Complete-the-Look region of a scene.

Boxes are normalized ``[left, top, right, bottom]``; pixels are rounded
outwards for the crop, so the product is never cut, and inwards for the
region around it, so no pixel of the product is visible.
"""

import math

Box = tuple[int, int, int, int]  # left, top, right, bottom in pixels
BBox = tuple[float, float, float, float]  # the same, normalized

MIN_REGION_SIDE = 8  # pixels; a thinner strip carries no usable context


def stl_box(bbox: BBox, width: int, height: int) -> Box:
    """The product's bbox in pixels, at least one pixel wide and high."""
    left = min(max(math.floor(bbox[0] * width), 0), width - 1)
    top = min(max(math.floor(bbox[1] * height), 0), height - 1)
    right = max(min(math.ceil(bbox[2] * width), width), left + 1)
    bottom = max(min(math.ceil(bbox[3] * height), height), top + 1)
    return left, top, right, bottom


def regions_around(bbox: BBox, width: int, height: int) -> list[Box]:
    """The regions left of, right of, above and below the bbox, each at least
    ``MIN_REGION_SIDE`` on both sides; empty when the product fills the scene."""
    left, top, right, bottom = stl_box(bbox, width, height)
    regions = [
        (0, 0, left, height),  # left of the bbox
        (right, 0, width, height),  # right of it
        (0, 0, width, top),  # above
        (0, bottom, width, height),  # below
    ]
    return [
        box for box in regions if box[2] - box[0] >= MIN_REGION_SIDE and box[3] - box[1] >= MIN_REGION_SIDE
    ]


def ctl_box(bbox: BBox, width: int, height: int) -> Box | None:
    """The largest region around the bbox: the Complete-the-Look query's global view. None
    when there is no context to complete."""
    usable = regions_around(bbox, width, height)
    if not usable:
        return None
    return max(usable, key=lambda box: (box[2] - box[0]) * (box[3] - box[1]))


def _overlap(box: Box, other: Box) -> bool:
    return min(box[2], other[2]) > max(box[0], other[0]) and min(box[3], other[3]) > max(box[1], other[1])


def _inside(box: Box, outer: Box) -> bool:
    return outer[0] <= box[0] and outer[1] <= box[1] and box[2] <= outer[2] and box[3] <= outer[3]


# Where a Complete-the-Look query's context tokens come from (features/assets.py):
# the largest region around the bbox, each of the four, the whole scene with the bbox
# masked out, or the scene's other annotated items (a detector's boxes when serving), or
# the masked scene first and then the items (a model reads the first view's tokens apart
# with ``context_lead``). Each view's last backbone feature map is pooled to a grid of tokens.
CONTEXT_SOURCES = ("largest", "four", "masked", "items", "masked+items")


def tokens_source(info: dict[str, str]) -> str:
    """The source that context tokens were embedded from, by their info; tokens written
    before the source was recorded are the largest region's."""
    return info.get("source", "largest")


def lead_tokens(source: str, grid: int) -> int:
    """How many of each query's first tokens are the masked scene, not a garment: a model's
    ``context_lead`` must match it (``training.loop.check_context``)."""
    return grid * grid if source == "masked+items" else 0


def context_views(
    bbox: BBox, width: int, height: int, source: str, others: tuple[BBox, ...] = ()
) -> list[tuple[Box, Box | None]]:
    """The (crop box, masked box) of each view of ``source``; empty when there is no context.

    ``others`` are the boxes of the scene's other items, read by ``items``: each is cropped
    as its Shop-the-Look query is (so the embedding cache already holds it), with the
    product's own box masked where they overlap (a coat over a shirt): no pixel of the
    product may show."""
    if source == "masked+items":
        # Always both or neither: a query's first view must be the scene.
        scene = context_views(bbox, width, height, "masked")
        return scene + context_views(bbox, width, height, "items", others) if scene else []
    if source == "items":
        product = stl_box(bbox, width, height)
        crops = dict.fromkeys(stl_box(other, width, height) for other in others)
        return [
            (crop, product if _overlap(crop, product) else None)
            for crop in crops
            if not _inside(crop, product)
        ]
    usable = regions_around(bbox, width, height)
    if not usable:
        return []
    if source == "largest":
        return [(max(usable, key=lambda box: (box[2] - box[0]) * (box[3] - box[1])), None)]
    if source == "four":
        return [(box, None) for box in usable]
    if source == "masked":
        return [((0, 0, width, height), stl_box(bbox, width, height))]
    raise ValueError(f"unknown context source {source!r}: use one of {', '.join(CONTEXT_SOURCES)}")
