"""What a training run is configured by, declared once: the training assets' run config is
made from these fields (``run_config.config_class``), and ``train`` reads the dataclass.
Plain data, so the code location loads it without torch."""

from dataclasses import dataclass, field


def knob(default, doc: str):
    """A field with the description the Dagster UI shows for it."""
    return field(default=default, metadata={"doc": doc})


@dataclass(frozen=True)
class TrainConfig:
    kind: str = knob("gat", "gat, sage, triplet or two_tower: what build_model builds.")
    hidden: int = knob(
        128, "Width of the hidden layers (the heads' hidden layer for the frozen-vector models)."
    )
    heads: int = knob(4, "Attention heads (GAT only).")
    layers: int = knob(2, "Message-passing layers (graph models only).")
    dropout: float = 0.3
    out_dim: int = knob(128, "Width of the scoring space.")
    lr: float = 3e-3
    weight_decay: float = 1e-4
    epochs: int = 150
    loss: str = knob("infonce", "infonce, triplet or bpr.")
    # Chosen per model on validation (registry.py): the graph models rank better at 0.1, the
    # two-tower worse.
    temperature: float = knob(0.07, "InfoNCE: the temperature the cosines are divided by.")
    in_batch_negatives: bool = knob(True, "The batch's other positives as negatives.")
    # Uniform within the positive's category, as the evaluation's pool.
    category_negatives: int = knob(8, "Same-category negatives per query, uniform.")
    # In-batch negatives are the batch's distinct positives, a random subset past this many: a
    # step scores B x (shared + category) pairs, so this bounds its memory and time once batches
    # grow (28,900 queries a step at the release's size). At 3,811 products a batch holds about
    # 2,000 distinct positives, so the cap changes nothing there.
    shared_negatives: int = knob(
        2048, "In-batch negatives at most (a random subset of the batch's distinct positives); 0: all."
    )
    # The batch's other positives are drawn by popularity, so a popular product is a negative for
    # nearly every query and the model learns to rank popular products down. Correcting for it
    # (with 64 category negatives) lifts the bare cosine's validation CTL MRR at 3,811 products,
    # but adds nothing once the popularity prior is fitted, and cost 0.06 of test CTL HR@10 at
    # 600 products: off.
    logq_correction: bool = knob(
        False, "Correct InfoNCE logits for how often the sampling offers each product (infonce only)."
    )
    # After training, fit per task a weight on log train popularity, added to each cosine, on
    # validation MRR. At 3,811 products it lifted GAT's test CTL HR@10 from 0.075 to 0.149, past
    # popularity's 0.139; weight 0 (the bare cosine) is among the candidates.
    popularity_prior: bool = knob(
        True, "After training, fit per task a weight on log train popularity added to every score."
    )
    # Chosen on validation by benchmarks/ctl_context.py (docs/experiments.md, Complete the Look).
    context: bool = knob(
        False, "Graph models: the CTL query attends over ctl_scene_context by the category it completes."
    )
    context_values: str = knob(
        "linear",
        "Graph models: what a context token adds to the CTL query: a linear map of it; catalogue, "
        "what the products it shows are worn with; catalogue_category, the same in the category "
        "being completed (models/context.py).",
    )
    context_lead: int = knob(
        0,
        "Graph models: each CTL query's first N context tokens (the masked scene's grid cells, "
        "with ctl_scene_context's source masked+items) are read by a linear map, the rest as "
        "context_values says; 0: all alike.",
    )
    visual_skip: bool = knob(
        False, "Graph models: add the frozen visual vector's own tower to each product vector."
    )
    # A co-occurrence pulls a product toward its partner and pushes it from the partner's
    # category, so products of one style in a category come to lie near each other: the
    # partners the CTL query reads from the catalogue then point at the style, not at the few
    # products seen with them. Weight chosen on validation (benchmarks/ctl_context.py, docs/experiments.md).
    cooccurrence_weight: float = knob(
        0.0,
        "Weight of an auxiliary loss that ranks each product's train co-occurrence partners "
        "(stl_graph's co_occurs edges) above products of the partner's category; 0: off.",
    )
    # A product in no train scene has only its looks and its visual neighbours, and a model
    # that always saw every product's scenes never learnt to place it: GAT found none of the
    # quality test's 24 such answers in its top 10. Hiding a random share of products'
    # interactions each step (as DropoutNet does for cold users) trains that path too.
    cold_start_dropout: float = knob(
        0.0,
        "Graph models: the share of products whose train interactions each step hides, so that "
        "products new to the catalogue (no train scene) get vectors that rank; 0: off.",
    )
    look_weight: float = knob(
        0.0,
        "Weight of an auxiliary loss that ranks each CTL query's positive's look (its cluster "
        "of frozen product vectors, models/looks.py) above its category's other looks; 0: off.",
    )
    looks_per_category: int = knob(16, "Looks (k-means clusters) a category at most, for look_weight.")
    edge_features: bool = knob(
        False, "GAT: attention reads each edge's stored features (bbox, kNN similarity, co-occurrence)."
    )
    # Message passing sums messages in parallel on the CPU, in an order that varies from run to
    # run: the last bits of the first loss differ, and 150 epochs later GAT's test CTL HR@10 on
    # the demo was 0.305 in one run and 0.254 in the next. PyTorch's deterministic kernels
    # remove that for about 10% more time an epoch (benchmarks/train.py at demo size).
    deterministic: bool = knob(
        True, "PyTorch's deterministic kernels: the same data and config train the same model."
    )
    batch_size: int = knob(512, "Queries per task and optimizer step; 0: all at once (full batch).")
    # Every step encodes the whole graph, so steps, not queries, are what an epoch costs. Past
    # batch_size * max_steps queries the batches grow instead: at the release's size an epoch
    # is 2 encodings, not 113. At 3,811 products two steps of 2,890 queries cost 0.77 of four
    # steps of 1,445 an epoch and ended level or ahead on test over whole runs; one step fell
    # behind on Shop the Look (docs/experiments.md). The triplet head keeps four (registry.py).
    max_steps: int = knob(2, "Optimizer steps per epoch at most (each encodes the whole graph); 0: no limit.")
    patience: int = knob(30, "Epochs without a better validation MRR before stopping.")
    # Early stopping ends a run on a plateau at the learning rate it started with; lowering the
    # rate there first lets it settle into the minimum it has been circling.
    lr_decay_patience: int = knob(
        0, "Epochs without a better validation MRR before the learning rate is halved; 0: constant."
    )
    eval_every: int = knob(1, "Epochs between validations; patience counts validations.")
    optimizer: str = knob("adamw", "adamw (decoupled weight decay) or adam (weight decay as L2).")
    checkpoint_every: int = 10
    seed: int = 0
