"""Cold start: recommendations for a scene photo, or a product, that no pipeline run has seen.

A new scene goes through exactly what the pipeline's scenes went through: the
backbone and transform that embedded the catalogue (checked against the
graph's record of them), the Shop-the-Look crop of its bbox and the
Complete-the-Look region around it, and the trained model's query heads. It
is placed in the graph as held-out scenes are, through its nearest train
scenes by visual similarity, whose products are returned as "seen in similar
scenes". Which model, graph and index it answers from is serving/loading.py's
choice: the champion's, by default.
"""

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from stl_pipeline.categories import LEAVES
from stl_pipeline.features.backbone import Backbone
from stl_pipeline.features.embed import Embedder
from stl_pipeline.features.regions import ctl_box, stl_box
from stl_pipeline.images.decode import BadImageError, ImageLimits, decode
from stl_pipeline.models.recommender import TASKS, Recommender
from stl_pipeline.serving.index import ProductIndex, build_index
from stl_pipeline.serving.recommend import complementary_queries

MAX_PIXELS = 50_000_000


class ColdStartError(ValueError):
    """Input or state that cold start cannot use; the message says what to do instead."""


@dataclass
class Item:
    product: str
    category: str
    score: float


@dataclass
class SceneAnswer:
    image: str
    bbox: list[float] | None
    category: str
    category_inferred: bool
    exact: list[Item]
    complete_the_look: list[Item]
    similar_scenes: list[Item]  # train scenes: id in ``product``, "scene" in ``category``
    seen_in_similar_scenes: list[Item]
    model: dict[str, str] = field(default_factory=dict)


@dataclass
class ProductAnswer:
    product: str
    category: str
    similar: list[Item]
    complementary: list[Item]
    model: dict[str, str] = field(default_factory=dict)


@dataclass
class TrainScenes:
    """The graph's train scenes: visual vectors and the products each contains."""

    ids: list[str]
    vectors: torch.Tensor  # (S, D), unit length
    products: list[np.ndarray]
    k: int  # neighbours per scene, as the graph's scene kNN edges use


def parse_bbox(text: str) -> tuple[float, float, float, float]:
    """``"l,t,r,b"`` as four numbers (checked for range by ``ColdStart.scene``)."""
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) != 4:
        raise ColdStartError(
            f"bbox {text!r} is not four numbers: use left,top,right,bottom, e.g. 0.2,0.3,0.6,0.9"
        )
    return values  # type: ignore[return-value]


def _check_bbox(bbox: tuple[float, ...]) -> None:
    left, top, right, bottom = bbox
    if not all(math.isfinite(v) for v in bbox) or not (0 <= left < right <= 1 and 0 <= top < bottom <= 1):
        raise ColdStartError(
            f"bbox {list(bbox)} is out of range: use left,top,right,bottom normalized to [0, 1] "
            "(origin top-left) with left < right and top < bottom"
        )


def resolve_category(name: str) -> int:
    leaf = name.split("|")[-1].strip().lower()
    for i, known in enumerate(LEAVES):
        if known.lower() == leaf:
            return i
    raise ColdStartError(f"unknown category {name!r}: use one of {', '.join(LEAVES)}")


@dataclass
class ColdStart:
    backbone: Backbone
    model: Recommender
    index: ProductIndex
    category: np.ndarray  # (P,) category index of every indexed product
    scenes: TrainScenes
    source: dict[str, str]
    per_category: int = 3  # most products of one category in a complete-the-look list
    own_vectors: bool = False  # complementary queries: the products' vectors (recommend.finds_partners)
    limits: ImageLimits = field(default_factory=lambda: ImageLimits(max_pixels=MAX_PIXELS))

    def __post_init__(self) -> None:
        self.embedder = Embedder(self.backbone, torch.device("cpu"))
        self.members = {int(c): np.flatnonzero(self.category == c) for c in np.unique(self.category)}
        self.position = self.index.positions()
        # One index per category, so a search within a category reads only its products.
        vectors = self.index.vectors()
        # Complementary queries: each product's vector, or its train scenes through the CTL head.
        with torch.no_grad():
            scene_queries = self.model.queries(self.scenes.vectors, "ctl")
        scenes = torch.cat(
            [torch.full((len(p),), i) for i, p in enumerate(self.scenes.products)] or [torch.empty(0)]
        )
        products = torch.from_numpy(np.concatenate(self.scenes.products or [np.empty(0)]).astype(np.int64))
        self.context = complementary_queries(
            torch.from_numpy(vectors), products, scenes.long(), scene_queries, self.own_vectors
        ).numpy()
        # The model's popularity prior per task, from the same train scenes (their contains edges).
        log_pop = torch.from_numpy(np.log1p(np.bincount(products.numpy(), minlength=len(vectors))))
        with torch.no_grad():
            self.bias = {task: self.model.bias_of(log_pop.float(), task).numpy() for task in TASKS}
        self.vectors = vectors
        self.by_category = {
            c: build_index(vectors[members], [self.index.ids[i] for i in members])
            for c, members in self.members.items()
        }

    def _search(
        self, query: np.ndarray, k: int, category: int | None = None, bias: np.ndarray | None = None
    ) -> list[Item]:
        """The best ``k`` products for ``query``, in the index or one category: exact cosines
        plus a non-zero popularity ``bias``, as the report ranks; else FAISS's cosines."""
        if bias is not None and bias.any():
            pool = self.members[category] if category is not None else np.arange(len(self.vectors))
            unit = query[0] / max(float(np.linalg.norm(query[0])), 1e-12)
            scores = self.vectors[pool] @ unit + bias[pool]
            top = np.argsort(-scores, kind="stable")[:k]
            return self._items(scores[top], pool[top])
        if category is None:
            scores, positions = self.index.search(query, k)
            return self._items(scores[0], positions[0])
        scores, local = self.by_category[category].search(query, k)
        members = self.members[category]
        return self._items(scores[0], np.where(local[0] >= 0, members[local[0].clip(min=0)], -1))

    def _items(self, scores: np.ndarray, positions: np.ndarray) -> list[Item]:
        return [
            Item(self.index.ids[p], LEAVES[self.category[p]], round(float(s), 4))
            for s, p in zip(scores, positions, strict=True)
            if p >= 0
        ]

    def _across_categories(
        self, query: np.ndarray, excluded: int, k: int, bias: np.ndarray | None = None
    ) -> list[Item]:
        """Top ``k`` outside category ``excluded``, at most ``per_category`` of any one."""
        found: list[Item] = []
        for c in self.members:
            if c != excluded:
                found += self._search(query, self.per_category, c, bias)
        return sorted(found, key=lambda item: -item.score)[:k]

    def _open(self, image: str | Path) -> Image.Image:
        path = Path(image)
        if not path.is_file():
            raise ColdStartError(f"{path} does not exist or is not a file")
        try:
            return decode(path, self.limits)
        except BadImageError as error:
            raise ColdStartError(f"{path}: {error}; use a JPEG, PNG or WebP photo of the scene") from error

    def scene(
        self,
        image: str | Path,
        bbox: tuple[float, float, float, float] | None = None,
        category: str | None = None,
        k: int = 10,
    ) -> SceneAnswer:
        """Exact matches for the bbox (the whole image without one), complete-the-look products
        for the rest of the scene, and what the most similar train scenes contain."""
        wanted = resolve_category(category) if category else None
        if bbox is not None:
            _check_bbox(tuple(bbox))
        picture = self._open(image)
        width, height = picture.size
        crop = stl_box(bbox, width, height) if bbox else None
        region = ctl_box(bbox, width, height) if bbox else None  # None: the whole scene
        transform = self.backbone.transform
        batch = torch.from_numpy(
            np.stack([transform(picture, crop), transform(picture, region), transform(picture)])
        )
        stl_x, ctl_x, scene_x = torch.from_numpy(self.embedder(batch)).split(1)
        with torch.no_grad():
            stl_q = self.model.queries(stl_x, "stl").numpy()
            ctl_q = self.model.queries(ctl_x, "ctl").numpy()
        if wanted is not None and wanted not in self.members:
            raise ColdStartError(f"the index holds no product of category {LEAVES[wanted]!r}")
        exact = self._search(stl_q, k, wanted, self.bias["stl"])
        query_category = wanted if wanted is not None else self._category_of(exact[0].product)
        looks = self._across_categories(ctl_q, query_category, k, self.bias["ctl"])
        neighbours, seen = self._similar_scenes(scene_x[0], query_category, k)
        return SceneAnswer(
            image=str(image),
            bbox=list(bbox) if bbox else None,
            category=LEAVES[query_category],
            category_inferred=wanted is None,
            exact=exact,
            complete_the_look=looks,
            similar_scenes=neighbours,
            seen_in_similar_scenes=seen,
            model=self.source,
        )

    def _category_of(self, product: str) -> int:
        return int(self.category[self.position[product]])

    def _similar_scenes(self, vector: torch.Tensor, excluded: int, k: int) -> tuple[list[Item], list[Item]]:
        """The scene's nearest train scenes, and their products outside ``excluded``, weighted by
        the similarity of the scenes they appear in."""
        if not self.scenes.ids:
            return [], []
        sims = self.scenes.vectors @ F.normalize(vector, dim=0)
        top = sims.topk(min(self.scenes.k, len(sims)))
        weights: dict[int, float] = {}
        for s, i in zip(top.values.tolist(), top.indices.tolist(), strict=True):
            for p in self.scenes.products[i]:
                if self.category[p] != excluded:
                    weights[int(p)] = weights.get(int(p), 0.0) + s
        best = sorted(weights.items(), key=lambda kv: -kv[1])[:k]
        neighbours = [
            Item(self.scenes.ids[i], "scene", round(s, 4))
            for s, i in zip(top.values.tolist(), top.indices.tolist(), strict=True)
        ]
        seen = [Item(self.index.ids[p], LEAVES[self.category[p]], round(w, 4)) for p, w in best]
        return neighbours, seen

    def product(self, product_id: str, k: int = 10) -> ProductAnswer:
        """Similar products (same category) and complementary ones (other categories)."""
        position = self.position.get(product_id)
        if position is None:
            shown = product_id if len(product_id) <= 64 else product_id[:64] + "…"
            raise ColdStartError(
                f"unknown product id {shown!r}: the index holds {len(self.index.ids)} products "
                f"(model {self.source.get('model', '?')}); ids are 32 hex digits, as in fashion.json"
            )
        own = int(self.category[position])
        vector = self.index.index.reconstruct(position)[None, :]
        similar = [item for item in self._search(vector, k + 1, own) if item.product != product_id][:k]
        return ProductAnswer(
            product=product_id,
            category=LEAVES[own],
            similar=similar,
            complementary=self._across_categories(self.context[position : position + 1], own, k),
            model=self.source,
        )
