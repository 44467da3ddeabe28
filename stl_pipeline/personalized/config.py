"""How ``hm_sage_model`` and ``hm_ranker_model`` train: plain dataclasses, so the code location
loads without torch or LightGBM."""

from dataclasses import dataclass

GROUP = "personalized"  # the Dagster asset group (personalized/assets/)
REGISTERED = "hm-sage"  # the MLflow registered model of hm_sage_model
RANKER_REGISTERED = "hm-ranker"  # of hm_ranker_model
REGISTERED_MODELS = [REGISTERED, RANKER_REGISTERED]  # the group's champion is one of these
LOSSES = ("softmax", "bce")  # HmTrainConfig.loss


@dataclass(frozen=True)
class HmTrainConfig:
    hidden: int = 64
    layers: int = 2
    dropout: float = 0.1
    lr: float = 0.01
    weight_decay: float = 1e-4
    epochs: int = 40
    patience: int = 4  # validations without a better validation MAP@12
    eval_every: int = 4
    train_windows: int = 8  # training weeks, each with its own snapshot
    max_positives: int = 200_000  # per step; a sample of the week when it has more
    # "softmax": each purchase against the customer's whole history and ``negatives`` uniform
    # articles shared by the step; "bce": against one uniform and (``hard_negatives``) one
    # same-type negative (model.py; docs/experiments.md, the GNN's recipe).
    loss: str = "softmax"
    negatives: int = 1024
    hard_negatives: bool = True
    hard_negative_days: int = 28  # hard negatives sold in these days before the week; 0: any on sale
    article_embeddings: bool = True
    seed: int = 0
    # What the lifecycle reads beside the above (lifecycle.Schedule).
    lr_decay_patience: int = 0
    checkpoint_every: int = 4
    optimizer: str = "adam"
    deterministic: bool = True


@dataclass(frozen=True)
class RankerConfig:
    # Candidates per customer from each generator (candidates.py).
    repurchase: int = 24
    co_purchase: int = 24
    same_product: int = 12
    popularity: int = 24
    popularity_age: int = 12
    popularity_channel: int = 12
    hm_sage: int = 24
    neighbours: int = 20  # co-purchased articles kept per article
    # What the ranker learns from: the weeks before validation, each from its own snapshot.
    train_weeks: int = 4
    max_customers: int = 60_000  # per week, a sample of those who bought when more did
    objective: str = "binary"  # or "lambdarank"
    learning_rate: float = 0.05
    num_leaves: int = 63
    min_data_in_leaf: int = 50
    feature_fraction: float = 0.8
    rounds: int = 400
    patience: int = 30  # rounds without a better validation MAP@12
    seed: int = 0
