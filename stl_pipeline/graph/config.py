"""How ``stl_graph`` is built, declared once: its run config is made from these fields
(``run_config.config_class``, the kNN ones as ``knn_<field>``), and the builder reads the
dataclasses. Plain data, so the code location loads it without torch or FAISS."""

from dataclasses import dataclass, field
from typing import Literal

from stl_pipeline.graph.schema import EDGE_FAMILIES
from stl_pipeline.lineage import MAX_MISSING_SHARE
from stl_pipeline.run_config import knob

Method = Literal["auto", "exact", "clustered"]


@dataclass(frozen=True)
class KnnConfig:
    method: Method = knob("auto", "auto, exact or clustered (FAISS).")
    exact_limit: int = knob(10_000, "auto searches exactly up to this many vectors, and clusters past it.")
    cells: int | None = knob(None, "Clusters of the clustered search; empty: sqrt(n) / 6, at least 2.")
    probes: int | None = knob(None, "Clusters each vector searches; empty: cells / 8, at least 2.")
    seed: int = 0


@dataclass(frozen=True)
class GraphConfig:
    edges: tuple[str, ...] = knob(tuple(EDGE_FAMILIES), f"Edge families to build, of {list(EDGE_FAMILIES)}.")
    product_k: int = knob(10, "Visual neighbours per product.")
    scene_k: int = knob(10, "Visual neighbours (train scenes) per scene.")
    knn: KnnConfig = field(default_factory=KnnConfig)
    max_missing: float = knob(
        MAX_MISSING_SHARE,
        "Share of products or scenes without an embedding (failed images) accepted; past it the "
        "embeddings were made from other tables and the build is refused.",
    )

    def __post_init__(self) -> None:
        unknown = set(self.edges) - set(EDGE_FAMILIES)
        if unknown:
            raise ValueError(f"unknown edge families {sorted(unknown)}; choose from {list(EDGE_FAMILIES)}")
