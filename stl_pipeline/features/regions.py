"""Query geometry: the Shop-the-Look crop and the Complete-the-Look region of a scene.

Boxes are normalized ``[left, top, right, bottom]``; pixels are rounded
outwards for the crop, so the product is never cut, and inwards for the
region around it, so no pixel of the product is visible.
"""

import math

Box = tuple[int, int, int, int]  # left, top, right, bottom in pixels

MIN_REGION_SIDE = 8  # pixels; a thinner strip carries no usable context


def stl_box(bbox: tuple[float, float, float, float], width: int, height: int) -> Box:
    """The product's bbox in pixels, at least one pixel wide and high."""
    left = min(max(math.floor(bbox[0] * width), 0), width - 1)
    top = min(max(math.floor(bbox[1] * height), 0), height - 1)
    right = max(min(math.ceil(bbox[2] * width), width), left + 1)
    bottom = max(min(math.ceil(bbox[3] * height), height), top + 1)
    return left, top, right, bottom


def ctl_box(bbox: tuple[float, float, float, float], width: int, height: int) -> Box | None:
    """The largest of the regions left of, right of, above and below the bbox.

    None when every region is thinner than ``MIN_REGION_SIDE``: the product
    fills the scene and there is no context to complete.
    """
    left, top, right, bottom = stl_box(bbox, width, height)
    regions = [
        (0, 0, left, height),  # left of the bbox
        (right, 0, width, height),  # right of it
        (0, 0, width, top),  # above
        (0, bottom, width, height),  # below
    ]
    usable = [
        box for box in regions if box[2] - box[0] >= MIN_REGION_SIDE and box[3] - box[1] >= MIN_REGION_SIDE
    ]
    if not usable:
        return None
    return max(usable, key=lambda box: (box[2] - box[0]) * (box[3] - box[1]))
