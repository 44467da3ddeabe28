"""Names in ``stl_graph``: node types, edge types, the edge families a run may choose, splits.

Plain constants, so the asset definitions and the checks name them without importing torch.
"""

PRODUCT, SCENE, CATEGORY = "product", "scene", "category"
CONTAINS = (SCENE, "contains", PRODUCT)
REV_CONTAINS = (PRODUCT, "rev_contains", SCENE)
PRODUCT_SIMILAR = (PRODUCT, "similar", PRODUCT)
SCENE_SIMILAR = (SCENE, "similar", SCENE)
CO_OCCURS = (PRODUCT, "co_occurs", PRODUCT)
BELONGS_TO = (PRODUCT, "belongs_to", CATEGORY)
REV_BELONGS_TO = (CATEGORY, "rev_belongs_to", PRODUCT)

EDGE_FAMILIES: dict[str, tuple[tuple[str, str, str], ...]] = {
    "contains": (CONTAINS, REV_CONTAINS),
    "product_similar": (PRODUCT_SIMILAR,),
    "scene_similar": (SCENE_SIMILAR,),
    "co_occurs": (CO_OCCURS,),
    "category": (BELONGS_TO, REV_BELONGS_TO),
}
SPLITS = ("train", "val", "test")
BBOX = ["left", "top", "right", "bottom"]


def edge_type_name(edge_type: tuple[str, str, str]) -> str:
    return "__".join(edge_type)
