"""The trained recommenders, one entry each. The training assets are made from this list,
every downstream asset takes the records of all of them as one mapping, and reports, the
gallery, the product index and cold start find them here: adding a model is an entry here,
its config class in training/assets.py, and its own module.
"""

from collections.abc import Mapping
from dataclasses import dataclass

GRAPH_KINDS = ("gat", "sage")


@dataclass(frozen=True)
class ModelSpec:
    method: str  # its name in reports, the gallery and product_index's config
    asset: str  # the training asset that returns its record
    kind: str  # what build_model builds: gat, sage, or triplet (a head over the frozen vectors)
    registered: str  # the MLflow registered model
    label: str  # how pages name it
    description: str

    @property
    def passes_messages(self) -> bool:
        """Whether its product vectors come from the graph's edges (else from frozen vectors)."""
        return self.kind in GRAPH_KINDS


MODELS = (
    ModelSpec(
        "triplet_head",
        "triplet_head",
        "triplet",
        "stl-triplet",
        "triplet head",
        "The seed projects' baseline: a triplet head over frozen backbone vectors, no message passing.",
    ),
    ModelSpec(
        "two_tower",
        "two_tower",
        "two_tower",
        "stl-two-tower",
        "two-tower",
        "Two towers over the frozen backbone vectors (products; STL and CTL queries), InfoNCE, no "
        "graph: what a graph model must beat to have earned its graph.",
    ),
    ModelSpec(
        "gat",
        "gat_model",
        "gat",
        "stl-gat",
        "GAT",
        "Heterogeneous GAT over stl_graph, with STL and CTL query projections, early-stopped on "
        "validation MRR.",
    ),
    ModelSpec(
        "sage",
        "sage_model",
        "sage",
        "stl-sage",
        "GraphSAGE",
        "GraphSAGE over stl_graph, with STL and CTL query projections, early-stopped on validation MRR.",
    ),
)
MODEL_ASSETS = {spec.method: spec.asset for spec in MODELS}


def by_method(records: Mapping[str, dict]) -> dict[str, dict]:
    """The records of a downstream asset's inputs (keyed by asset), keyed by method, in
    registry order."""
    return {spec.method: records[spec.asset] for spec in MODELS}
