"""The ten leaf categories of the STL release and how its category paths parse."""

ROOT = "Apparel & Accessories"

# Full paths of the release (Google product taxonomy), with the product counts
# published for it; the generator uses the counts as category proportions.
PATHS: dict[str, str] = {
    "Shoes": "Apparel & Accessories|Shoes",
    "Shirts & Tops": "Apparel & Accessories|Clothing|Shirts & Tops",
    "Pants": "Apparel & Accessories|Clothing|Pants",
    "Handbags, Wallets & Cases": "Apparel & Accessories|Handbags, Wallets & Cases",
    "Coats & Jackets": "Apparel & Accessories|Clothing|Outerwear|Coats & Jackets",
    "Sunglasses": "Apparel & Accessories|Clothing Accessories|Sunglasses",
    "Shorts": "Apparel & Accessories|Clothing|Shorts",
    "Skirts": "Apparel & Accessories|Clothing|Skirts",
    "Earrings": "Apparel & Accessories|Jewelry|Earrings",
    "Necklaces": "Apparel & Accessories|Jewelry|Necklaces",
}
PUBLISHED_COUNTS: dict[str, int] = {
    "Shoes": 11780,
    "Shirts & Tops": 7506,
    "Pants": 6553,
    "Handbags, Wallets & Cases": 3255,
    "Coats & Jackets": 2485,
    "Sunglasses": 1772,
    "Shorts": 1533,
    "Skirts": 1392,
    "Earrings": 926,
    "Necklaces": 909,
}
LEAVES: tuple[str, ...] = tuple(PATHS)


class UnknownCategoryError(ValueError):
    """A category path whose leaf is not one of the ten known leaves."""


def parse_category_path(path: object) -> tuple[str, str]:
    """Return ``(path without the uninformative root, leaf)`` of a ``|``-separated path."""
    if not isinstance(path, str) or not path.strip():
        raise UnknownCategoryError(f"category {path!r} is not a non-empty string")
    parts = [part.strip() for part in path.split("|")]
    if parts and parts[0] == ROOT:
        parts = parts[1:]
    if not parts or parts[-1] not in PATHS:
        raise UnknownCategoryError(f"category {path!r} does not end in a known leaf ({', '.join(LEAVES)})")
    return "|".join(parts), parts[-1]
