"""Drawing for the generated dataset: category silhouettes, textured looks, scenes.

Everything here is a pure function of its arguments and a seeded generator, so
the same seed gives the same pixels (and, with the same libjpeg, the same bytes).
"""

import colorsys
import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

Point = tuple[float, float]
Colour = tuple[int, int, int]


def _ellipse(cx: float, cy: float, rx: float, ry: float, n: int = 24) -> list[Point]:
    return [
        (cx + rx * math.cos(2 * math.pi * k / n), cy + ry * math.sin(2 * math.pi * k / n)) for k in range(n)
    ]


def _arc_band(cx: float, cy: float, r_out: float, r_in: float, n: int = 20) -> list[Point]:
    """The lower half of a ring: a necklace chain."""
    outer = [
        (cx + r_out * math.cos(math.pi * k / n), cy + r_out * math.sin(math.pi * k / n)) for k in range(n + 1)
    ]
    inner = [
        (cx + r_in * math.cos(math.pi * k / n), cy + r_in * math.sin(math.pi * k / n))
        for k in range(n, -1, -1)
    ]
    return outer + inner


# Polygons in unit coordinates (x right, y down), and a point inside the shape
# where the product's emblem goes.
SILHOUETTES: dict[str, tuple[list[list[Point]], Point]] = {
    "Shirts & Tops": (
        [
            [
                (0.3, 0.15),
                (0.42, 0.1),
                (0.58, 0.1),
                (0.7, 0.15),
                (0.93, 0.36),
                (0.81, 0.47),
                (0.72, 0.39),
                (0.72, 0.9),
                (0.28, 0.9),
                (0.28, 0.39),
                (0.19, 0.47),
                (0.07, 0.36),
            ]
        ],
        (0.5, 0.55),
    ),
    "Coats & Jackets": (
        [
            [
                (0.3, 0.06),
                (0.45, 0.04),
                (0.55, 0.04),
                (0.7, 0.06),
                (0.9, 0.3),
                (0.95, 0.93),
                (0.8, 0.93),
                (0.76, 0.42),
                (0.76, 0.96),
                (0.24, 0.96),
                (0.24, 0.42),
                (0.2, 0.93),
                (0.05, 0.93),
                (0.1, 0.3),
            ]
        ],
        (0.5, 0.5),
    ),
    "Pants": (
        [[(0.27, 0.04), (0.73, 0.04), (0.82, 0.96), (0.58, 0.96), (0.5, 0.36), (0.42, 0.96), (0.18, 0.96)]],
        (0.5, 0.18),
    ),
    "Shorts": (
        [[(0.2, 0.22), (0.8, 0.22), (0.9, 0.74), (0.57, 0.78), (0.5, 0.52), (0.43, 0.78), (0.1, 0.74)]],
        (0.5, 0.36),
    ),
    "Skirts": ([[(0.34, 0.12), (0.66, 0.12), (0.9, 0.88), (0.1, 0.88)]], (0.5, 0.55)),
    "Shoes": (
        [[(0.06, 0.4), (0.3, 0.38), (0.46, 0.52), (0.86, 0.6), (0.95, 0.74), (0.94, 0.84), (0.06, 0.84)]],
        (0.45, 0.7),
    ),
    "Handbags, Wallets & Cases": (
        [
            [(0.14, 0.38), (0.86, 0.38), (0.92, 0.9), (0.08, 0.9)],
            [
                (0.28, 0.38),
                (0.34, 0.12),
                (0.66, 0.12),
                (0.72, 0.38),
                (0.63, 0.38),
                (0.58, 0.21),
                (0.42, 0.21),
                (0.37, 0.38),
            ],
        ],
        (0.5, 0.64),
    ),
    "Sunglasses": (
        [
            _ellipse(0.27, 0.5, 0.21, 0.17),
            _ellipse(0.73, 0.5, 0.21, 0.17),
            [(0.45, 0.44), (0.55, 0.44), (0.55, 0.5), (0.45, 0.5)],
        ],
        (0.27, 0.5),
    ),
    "Earrings": (
        [
            _ellipse(0.27, 0.2, 0.07, 0.07),
            _ellipse(0.27, 0.6, 0.17, 0.27),
            _ellipse(0.73, 0.2, 0.07, 0.07),
            _ellipse(0.73, 0.6, 0.17, 0.27),
        ],
        (0.27, 0.6),
    ),
    "Necklaces": (
        [_arc_band(0.5, 0.18, 0.42, 0.3), _ellipse(0.5, 0.75, 0.16, 0.18)],
        (0.5, 0.75),
    ),
}

TEXTURES = ("solid", "hstripes", "vstripes", "checks", "dots", "diagonal")
EMBLEMS = ("circle", "square", "triangle", "diamond")


@dataclass(frozen=True)
class Look:
    """How one style dresses one category: colours and texture."""

    base: Colour
    accent: Colour
    texture: int


@dataclass(frozen=True)
class Product:
    """What makes one product look like itself and no other product."""

    category: str
    look: Look
    shade: float  # brightness factor applied to the look's colours
    frequency: float  # texture cycles across the item
    phase: float
    emblem: int
    emblem_colour: Colour
    emblem_offset: Point
    backdrop: Colour


def _hsv(h: float, s: float, v: float) -> Colour:
    r, g, b = colorsys.hsv_to_rgb(h % 1.0, s, v)
    return (round(r * 255), round(g * 255), round(b * 255))


def random_look(rng: np.random.Generator) -> Look:
    hue = rng.random()
    base = _hsv(hue, rng.uniform(0.45, 0.95), rng.uniform(0.3, 0.9))
    accent = _hsv(hue + rng.uniform(0.25, 0.75), rng.uniform(0.2, 0.9), rng.uniform(0.5, 1.0))
    return Look(base=base, accent=accent, texture=int(rng.integers(len(TEXTURES))))


def random_product(category: str, look: Look, rng: np.random.Generator, jitter: float) -> Product:
    return Product(
        category=category,
        look=look,
        shade=float(1.0 + rng.uniform(-jitter, jitter)),
        frequency=float(rng.uniform(3.0, 7.0)),
        phase=float(rng.random()),
        emblem=int(rng.integers(len(EMBLEMS))),
        emblem_colour=tuple(int(c) for c in rng.integers(0, 256, 3)),  # type: ignore[arg-type]
        emblem_offset=(float(rng.uniform(-0.06, 0.06)), float(rng.uniform(-0.06, 0.06))),
        backdrop=tuple(int(c) for c in rng.integers(228, 250, 3)),  # type: ignore[arg-type]
    )


def _scaled(colour: Colour, factor: float) -> np.ndarray:
    return np.clip(np.asarray(colour, dtype=np.float32) * factor, 0, 255)


def _texture_mask(texture: int, width: int, height: int, frequency: float, phase: float) -> np.ndarray:
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    u = x / max(width, 1) * frequency + phase
    v = y / max(height, 1) * frequency + phase
    name = TEXTURES[texture]
    if name == "solid":
        return np.zeros((height, width), dtype=bool)
    if name == "hstripes":
        return (v % 1.0) < 0.4
    if name == "vstripes":
        return (u % 1.0) < 0.4
    if name == "checks":
        return ((np.floor(u) + np.floor(v)) % 2) == 0
    if name == "dots":
        return ((u % 1.0) - 0.5) ** 2 + ((v % 1.0) - 0.5) ** 2 < 0.08
    return ((u + v) % 1.0) < 0.4


def render_item(
    product: Product, width: int, height: int, brightness: float = 1.0
) -> tuple[Image.Image, Image.Image]:
    """Draw a product at a size: its RGB pixels and the mask of its silhouette."""
    width, height = max(width, 4), max(height, 4)
    polygons, anchor = SILHOUETTES[product.category]
    mask = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(mask)
    for polygon in polygons:
        draw.polygon([(x * (width - 1), y * (height - 1)) for x, y in polygon], fill=255)

    factor = product.shade * brightness
    pattern = _texture_mask(product.look.texture, width, height, product.frequency, product.phase)
    pixels = np.where(
        pattern[..., None], _scaled(product.look.accent, factor), _scaled(product.look.base, factor)
    ).astype(np.uint8)
    item = Image.fromarray(pixels, "RGB")

    cx = (anchor[0] + product.emblem_offset[0]) * width
    cy = (anchor[1] + product.emblem_offset[1]) * height
    r = max(1.5, 0.11 * min(width, height))
    shape = EMBLEMS[product.emblem]
    emblem = ImageDraw.Draw(item)
    colour = tuple(int(c) for c in _scaled(product.emblem_colour, brightness))
    if shape == "circle":
        emblem.ellipse((cx - r, cy - r, cx + r, cy + r), fill=colour)
    elif shape == "square":
        emblem.rectangle((cx - r, cy - r, cx + r, cy + r), fill=colour)
    elif shape == "triangle":
        emblem.polygon([(cx, cy - r), (cx + r, cy + r), (cx - r, cy + r)], fill=colour)
    else:
        emblem.polygon([(cx, cy - r), (cx + r, cy), (cx, cy + r), (cx - r, cy)], fill=colour)
    return item, mask


def render_product_image(product: Product, size: int) -> Image.Image:
    """A catalogue photo: the item centred on a light backdrop."""
    canvas = Image.new("RGB", (size, size), product.backdrop)
    margin = round(size * 0.08)
    item, mask = render_item(product, size - 2 * margin, size - 2 * margin)
    canvas.paste(item, (margin, margin), mask)
    return canvas


# Where each category sits on the person: centre and size in scene units.
REGIONS: dict[str, tuple[Point, Point, tuple[str, ...]]] = {
    "torso": ((0.5, 0.44), (0.46, 0.28), ("Shirts & Tops", "Coats & Jackets")),
    "legs": ((0.5, 0.7), (0.38, 0.26), ("Pants", "Shorts", "Skirts")),
    "feet": ((0.5, 0.92), (0.36, 0.12), ("Shoes",)),
    "side": ((0.17, 0.58), (0.28, 0.24), ("Handbags, Wallets & Cases",)),
    "neck": ((0.5, 0.26), (0.28, 0.12), ("Necklaces",)),
    "head": ((0.5, 0.1), (0.34, 0.12), ("Sunglasses",)),
    "ears": ((0.76, 0.17), (0.17, 0.15), ("Earrings",)),
}
REGION_OF: dict[str, str] = {cat: region for region, (_, _, cats) in REGIONS.items() for cat in cats}
PASTE_ORDER: tuple[str, ...] = tuple(REGIONS)


def place_bbox(category: str, rng: np.random.Generator, jitter: float) -> tuple[float, ...]:
    """A normalized (left, top, right, bottom) box for a category on the person."""
    (cx, cy), (w, h), _ = REGIONS[REGION_OF[category]]
    shift = 0.3 * jitter
    cx += rng.uniform(-shift, shift)
    cy += rng.uniform(-shift / 2, shift / 2)
    scale = rng.uniform(1.0 - jitter, 1.0 + 1.5 * jitter)
    w, h = w * scale, h * scale
    box = (max(0.0, cx - w / 2), max(0.0, cy - h / 2), min(1.0, cx + w / 2), min(1.0, cy + h / 2))
    return tuple(round(v, 4) for v in box)


def render_scene(
    width: int,
    height: int,
    tint: Colour,
    items: list[tuple[Product, tuple[float, ...]]],
    rng: np.random.Generator,
    jitter: float,
) -> Image.Image:
    """A person on a cluttered backdrop, wearing ``items`` at their boxes."""
    backdrop = tuple(int(0.6 * c + 0.4 * t) for c, t in zip(rng.integers(150, 240, 3), tint, strict=True))
    scene = Image.new("RGB", (width, height), backdrop)
    draw = ImageDraw.Draw(scene)
    for _ in range(int(rng.integers(10, 24))):
        x0, y0 = rng.uniform(-0.1, 1.0) * width, rng.uniform(-0.1, 1.0) * height
        x1, y1 = x0 + rng.uniform(0.05, 0.4) * width, y0 + rng.uniform(0.05, 0.4) * height
        fill = tuple(int(c) for c in rng.integers(60, 230, 3))
        (draw.rectangle if rng.random() < 0.5 else draw.ellipse)((x0, y0, x1, y1), fill=fill)

    skin = tuple(int(c) for c in rng.integers([150, 100, 70], [240, 190, 160]))
    draw.ellipse((0.4 * width, 0.02 * height, 0.6 * width, 0.2 * height), fill=skin)
    draw.rectangle((0.32 * width, 0.22 * height, 0.68 * width, 0.6 * height), fill=(120, 120, 125))
    draw.rectangle((0.36 * width, 0.58 * height, 0.64 * width, 0.9 * height), fill=(105, 105, 110))

    order = sorted(items, key=lambda item: PASTE_ORDER.index(REGION_OF[item[0].category]))
    for product, (left, top, right, bottom) in order:
        x0, y0 = round(left * width), round(top * height)
        w, h = max(4, round(right * width) - x0), max(4, round(bottom * height) - y0)
        item, mask = render_item(product, w, h, brightness=float(1.0 + rng.uniform(-jitter, jitter)))
        scene.paste(item, (x0, y0), mask)

    noisy = np.asarray(scene, dtype=np.float32) + rng.normal(0.0, 3.0 + 20 * jitter, (height, width, 3))
    return Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8), "RGB")
