"""How ``hm_sage_model`` trains: a plain dataclass, so the code location loads without torch."""

from dataclasses import dataclass

REGISTERED = "hm-sage"  # the MLflow registered model of hm_sage_model


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
    hard_negatives: bool = True
    hard_negative_days: int = 28  # hard negatives sold in these days before the week; 0: any on sale
    article_embeddings: bool = True
    seed: int = 0
    # What the lifecycle reads beside the above (lifecycle.Schedule).
    lr_decay_patience: int = 0
    checkpoint_every: int = 4
    optimizer: str = "adam"
    deterministic: bool = True
