"""The trained recommenders, one entry each. The training assets are made from this list,
every downstream asset takes the records of all of them as one mapping, and reports, the
gallery, the product index and cold start find them here: adding a model is an entry here
and its own module.
"""

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

GRAPH_KINDS = ("gat", "sage")


@dataclass(frozen=True)
class ModelSpec:
    method: str  # its name in reports, the gallery and product_index's config
    asset: str  # the training asset that returns its record
    kind: str  # what build_model builds: gat, sage, or triplet (a head over the frozen vectors)
    registered: str  # the MLflow registered model
    label: str  # how pages name it
    description: str
    # Its training knobs' defaults where they differ from TrainConfig's (models/config.py);
    # the training asset's run config is made from both.
    defaults: Mapping[str, Any] = field(default_factory=dict)

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
        # With two steps an epoch the head saved nothing at 3,811 products (its epoch is not its
        # steps) and fell behind on Shop the Look: a weaker baseline would flatter the graph models.
        {"hidden": 512, "lr": 1e-3, "max_steps": 4, "loss": "triplet"},
    ),
    ModelSpec(
        "two_tower",
        "two_tower",
        "two_tower",
        "stl-two-tower",
        "two-tower",
        "Two towers over the frozen backbone vectors (products; STL and CTL queries), InfoNCE, no "
        "graph: what a graph model must beat to have earned its graph.",
        # Two steps an epoch, not twelve, validate better at 3,811 products and cost half an
        # epoch; stopping after 10 epochs without a better one: 74 epochs, validation MRR 0.228
        # (patience 20: 101, 0.231; twelve steps: 0.204). docs/benchmarks.md.
        {"hidden": 512, "lr": 1e-3, "max_steps": 2, "patience": 10},
    ),
    ModelSpec(
        "gat",
        "gat_model",
        "gat",
        "stl-gat",
        "GAT",
        "Heterogeneous GAT over stl_graph, with an STL query projection and a CTL query that "
        "attends over ctl_scene_context, early-stopped on validation MRR.",
        # At 3e-3 the attention collapsed every product onto one vector (mean pairwise cosine 0.999).
        # The context and edge features were chosen on validation (benchmarks/ctl_context.py,
        # docs/experiments.md): reading what the scene's other garments are worn with in the category being
        # completed gave a mean CTL MRR over three seeds of 0.266, against 0.234 over all their
        # partners and 0.191 with the CTL region's feature map; edge features gave 0.188: off.
        # The visual tower kept CTL level and lifted test STL HR@10 from 0.820 to 0.941 and
        # 0.922 (seeds 0 and 1). The co-occurrence loss at weight 0.2 lifted validation CTL MRR
        # to 0.278 (0.5: 0.274) with test STL level (0.906-0.914). Hiding a fifth of the
        # products' interactions a step (cold_start_dropout) gave 0.283, test STL 0.914-0.945,
        # and test answers in no train scene found in the top 10 of 3 queries in 24, not 0.
        # An InfoNCE temperature of 0.1 then lifted it to 0.296 (0.15: 0.296, lower HR@10;
        # 0.05: 0.277); the two-tower fell at 0.1 (0.173 against 0.184) and keeps 0.07.
        # Halving the learning rate after 5 epochs without a better one: 0.304 (3: 0.303,
        # 7: 0.295, 10: 0.292), test STL 0.934-0.957. At 3,811 products patience 10 (one
        # decay, then stop) ends at 80 epochs, not 140, with 0.2188 against 0.2198 (mean of
        # both tasks; GraphSAGE: 65 epochs, not 85, the same best). There, on release-shaped
        # data, the masked scene read apart before the garments (ctl_scene_context's
        # masked+items) lifted validation CTL MRR to 0.109 from 0.107, image-only to 0.082
        # from 0.078. A learning rate of 1.5e-3, not 1e-3, stops after 73 and 68 epochs, not 123
        # and 103 (seeds 0 and 1; bf16, benchmarks/train.py --patience 10), with validation MRR
        # 0.230 and 0.224 against 0.233 and 0.232 (CTL with the prior: 0.116 and 0.109 against
        # 0.111 and 0.111): two-fifths of GAT's time at 3,811 products for 0.005 of MRR
        # (2e-3: 0.225 after 74 epochs). docs/benchmarks.md.
        {
            "lr": 1.5e-3,
            "context": True,
            "context_values": "catalogue_category",
            "context_lead": 1,
            "visual_skip": True,
            "cooccurrence_weight": 0.2,
            "cold_start_dropout": 0.2,
            "temperature": 0.1,
            "lr_decay_patience": 5,
            "patience": 10,
        },
    ),
    ModelSpec(
        "sage",
        "sage_model",
        "sage",
        "stl-sage",
        "GraphSAGE",
        "GraphSAGE over stl_graph, with an STL query projection and a CTL query that attends over "
        "ctl_scene_context, early-stopped on validation MRR.",
        # The same CTL query as GAT's, chosen on validation (benchmarks/ctl_context.py, docs/experiments.md):
        # a mean CTL MRR over three seeds of 0.245, against 0.184 over all partners (two seeds).
        # GAT's visual tower kept it level (0.237) and lifted test STL HR@10 from 0.777-0.824
        # to 0.891-0.906, in half the epochs. The co-occurrence loss at weight 0.2 lifted
        # validation CTL MRR to 0.263 (0.5: 0.254, with test STL down to 0.840-0.867).
        # cold_start_dropout 0.2 lifted it to 0.275, and test STL from 0.871-0.902 to 0.906-0.914;
        # an InfoNCE temperature of 0.1 to 0.285 (test STL 0.930-0.953), and halving the
        # learning rate after 5 epochs without a better one to 0.287 (test STL 0.945-0.949).
        # The masked scene read apart (masked+items, as GAT): at 3,811 release-shaped products
        # validation CTL MRR 0.113 and 0.105 against 0.107 and 0.099 (seeds 0 and 1).
        {
            "context": True,
            "context_values": "catalogue_category",
            "context_lead": 1,
            "visual_skip": True,
            "cooccurrence_weight": 0.2,
            "cold_start_dropout": 0.2,
            "temperature": 0.1,
            "lr_decay_patience": 5,
            "patience": 10,
        },
    ),
)
MODEL_ASSETS = {spec.method: spec.asset for spec in MODELS}


def by_method(records: Mapping[str, dict]) -> dict[str, dict]:
    """The records of a downstream asset's inputs (keyed by asset), keyed by method, in
    registry order."""
    return {spec.method: records[spec.asset] for spec in MODELS}
