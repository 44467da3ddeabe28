"""Training of a Shop-the-Look recommender: the queries of both tasks in mini-batches, the
negatives, the co-occurrence term and the cold-start dropout of a step, and the validation MRR
that early stopping watches. Seeding, resume, stopping and checkpoints are the lifecycle's
(lifecycle.py), shared with the personalized group.
"""

import copy
import functools
import math
from dataclasses import dataclass
from pathlib import Path

import torch
from torch_geometric.data import HeteroData

from stl_pipeline.device import Precision
from stl_pipeline.features.regions import lead_tokens, tokens_source
from stl_pipeline.graph.schema import CO_OCCURS, CONTAINS, REV_CONTAINS
from stl_pipeline.lifecycle import fit
from stl_pipeline.metrics import mrr, ranks_in_category
from stl_pipeline.models.config import TrainConfig
from stl_pipeline.models.looks import look_clusters, look_loss
from stl_pipeline.models.losses import LOSSES, Negatives, sample_negatives, sampling_log_q
from stl_pipeline.models.queries import Queries
from stl_pipeline.models.recommender import TASKS, Recommender, log_popularity
from stl_pipeline.models.shapes import take


@dataclass
class TrainResult:
    best_epoch: int
    best_val_mrr: float
    epochs_run: int
    history: list[dict[str, float]]
    stopped_early: bool


def validation_mrr(model: Recommender, graph: HeteroData, val: dict[str, Queries]) -> dict[str, float]:
    """MRR of each task over the same-category candidate pool."""
    model.eval()
    with torch.no_grad():
        products = model.products(graph)
        category = graph["product"].category
        result = {}
        for task, queries in val.items():
            bias = model.popularity_bias(graph, task)
            vectors = model.encode(queries, task, products, graph)
            (ranks,) = ranks_in_category(vectors, products, queries.product, category, [bias])
            result[f"val_mrr_{task}"] = mrr(ranks)
    model.train()
    result["val_mrr"] = sum(result.values()) / max(1, len(result))
    return result


PRIOR_WEIGHTS = (0.0, *(0.01 * 2**k for k in range(9)))  # cosine units: 0, 0.01 ... 2.56


def fit_popularity_prior(model: Recommender, graph: HeteroData, val: dict[str, Queries]) -> dict[str, float]:
    """Set each task's popularity weight to the candidate with the best validation MRR (the
    smallest on ties) and return the MRRs it reaches; a model without a prior is left alone.
    The graph is encoded once: only the added term changes between candidates."""
    prior = getattr(model, "prior", None)
    if prior is not None:
        model.eval()
        with torch.no_grad():
            products = model.products(graph)
            log_pop = log_popularity(graph)
            category = graph["product"].category
            for task, queries in val.items():
                biases = [log_pop * w for w in PRIOR_WEIGHTS]
                vectors = model.encode(queries, task, products, graph)
                ranks = ranks_in_category(vectors, products, queries.product, category, biases)
                found = [mrr(r) for r in ranks]
                # max() keeps the first of equals, and the candidates rise from 0
                prior.weight[TASKS.index(task)] = PRIOR_WEIGHTS[max(range(len(found)), key=found.__getitem__)]
        model.train()
    return validation_mrr(model, graph, val)


def steps_per_epoch(largest: int, batch_size: int, max_steps: int = 0) -> int:
    steps = 1 if batch_size <= 0 or largest <= batch_size else math.ceil(largest / batch_size)
    return min(steps, max_steps) if max_steps > 0 else steps


def batches(
    queries: dict[str, Queries], batch_size: int, generator: torch.Generator, max_steps: int = 0
) -> list[dict[str, torch.Tensor]]:
    """One epoch's steps: per task, a shuffled slice of its queries (tasks of different
    sizes are spread over the same number of steps, at most ``max_steps`` if positive)."""
    sizes = {task: len(q.product) for task, q in queries.items()}
    steps = steps_per_epoch(max(sizes.values(), default=0), batch_size, max_steps)
    orders = {task: torch.randperm(n, generator=generator) for task, n in sizes.items()}
    return [
        {task: order.tensor_split(steps)[step] for task, order in orders.items()} for step in range(steps)
    ]


def _co_occurrences(graph: HeteroData, config: TrainConfig) -> torch.Tensor | None:
    """(2, E) the train co-occurrences the auxiliary loss ranks (``co_occurs``, both ways);
    None when its weight is 0."""
    if not config.cooccurrence_weight:
        return None
    if CO_OCCURS not in graph.edge_types or not graph[CO_OCCURS].num_edges:
        raise ValueError(
            "cooccurrence_weight ranks a product's train co-occurrence partners: build stl_graph "
            "with co_occurs edges, or set cooccurrence_weight to 0"
        )
    return graph[CO_OCCURS].edge_index


def _co_occurrence_batches(
    edges: int, steps: int, cap: int, generator: torch.Generator
) -> list[torch.Tensor]:
    """One epoch's co-occurrence edges per step: a random ``cap`` of the ``edges`` at most (the
    largest task's queries, so the auxiliary loss costs no more than a task), spread over the
    same steps as the queries."""
    return list(torch.randperm(edges, generator=generator)[:cap].tensor_split(steps))


def _as_if_cold(graph: HeteroData, fraction: float, generator: torch.Generator) -> HeteroData:
    """``graph`` with a random ``fraction`` of products' train interactions hidden (their
    ``contains`` and ``co_occurs`` edges), as a product new to the catalogue has none: their
    vectors must then come from what they look like and their visual neighbours. The graph
    itself is not changed; the copy shares its tensors."""
    hidden = torch.rand(graph["product"].num_nodes, generator=generator) < fraction
    hidden = hidden.to(graph["product"].x.device)
    masked = copy.copy(graph)
    for edge_type, ends in ((CONTAINS, [1]), (REV_CONTAINS, [0]), (CO_OCCURS, [0, 1])):
        if edge_type not in graph.edge_types:
            continue
        store = graph[edge_type]
        keep = ~hidden[store.edge_index[ends]].any(dim=0)
        masked[edge_type].edge_index = store.edge_index[:, keep]
        if "edge_attr" in store:
            masked[edge_type].edge_attr = store.edge_attr[keep]
    return masked


def _sampling_corrections(
    queries: dict[str, Queries], category: torch.Tensor, config: TrainConfig, device: torch.device
) -> dict[str, dict[str, torch.Tensor]]:
    """Per task, the InfoNCE logit correction for how often each product is offered."""
    if config.loss != "infonce" or not config.logq_correction:
        return {task: {} for task in queries}
    largest = max(len(q.product) for q in queries.values())
    steps = steps_per_epoch(largest, config.batch_size, config.max_steps)
    return {
        task: {
            "log_q": sampling_log_q(
                q.product,
                category,
                math.ceil(len(q.product) / steps),
                config.in_batch_negatives,
                config.category_negatives,
                config.shared_negatives,
            ).to(device)
        }
        for task, q in queries.items()
    }


def _negatives(
    positives: torch.Tensor, category: torch.Tensor, config: TrainConfig, sampler: torch.Generator
) -> Negatives:
    """The config's negatives for ``positives``, drawn on the CPU generator, on their device."""
    return sample_negatives(
        positives.cpu(),
        category,
        config.in_batch_negatives,
        config.category_negatives,
        sampler,
        config.shared_negatives,
    ).to(positives.device)


def check_config(config: TrainConfig) -> None:
    """Refuse knobs out of range, naming them (the lifecycle checks its own)."""
    if config.loss not in LOSSES:
        raise ValueError(f"unknown loss {config.loss!r}: use one of {sorted(LOSSES)}")
    if config.temperature <= 0:
        raise ValueError(f"temperature divides the cosines: {config.temperature} must be above 0")
    if config.context_lead < 0:
        raise ValueError(f"context_lead counts each query's first tokens: {config.context_lead} is below 0")
    if not 0 <= config.cold_start_dropout < 1:
        raise ValueError(
            f"cold_start_dropout is the share of products hidden a step: {config.cold_start_dropout} "
            "is not in [0, 1)"
        )


def check_context(config: TrainConfig, info: dict[str, str]) -> None:
    """Refuse a ``context_lead`` that does not match the tokens' source: read apart, a garment
    would pass for the scene, or the scene for a garment to recognize (``info``: the
    ``ctl_scene_context`` tokens' own)."""
    if not config.context or not config.context_lead:
        return
    source, grid = tokens_source(info), int(info.get("grid", 1))
    lead = lead_tokens(source, grid)
    if config.context_lead != lead:
        raise ValueError(
            f"context_lead {config.context_lead} reads each query's first tokens as the masked scene, "
            f"but ctl_scene_context's source {source!r} (grid {grid}) puts {lead} there: set "
            f"context_lead to {lead}, or ctl_scene_context's source to masked+items"
        )


@dataclass
class StlTrainable:
    """Both tasks' queries in mini-batches over the whole graph, re-encoded every step."""

    model: Recommender
    graph: HeteroData
    train_queries: dict[str, Queries]
    val_queries: dict[str, Queries]
    config: TrainConfig
    score: str = "val_mrr"

    def __post_init__(self) -> None:
        unknown = set(self.train_queries) - set(TASKS)
        if unknown:
            raise ValueError(f"unknown tasks {sorted(unknown)}: use {TASKS}")
        config = self.config
        self.loss_fn = LOSSES[config.loss]
        if config.loss == "infonce":
            self.loss_fn = functools.partial(self.loss_fn, temperature=config.temperature)
        self.category = self.graph["product"].category.cpu()  # negatives are drawn on the CPU generator
        device = next(self.model.parameters()).device
        self.corrections = _sampling_corrections(self.train_queries, self.category, config, device)
        self.partners = _co_occurrences(self.graph, config)
        self.largest = max(len(q.product) for q in self.train_queries.values())
        self.looks = None
        if config.look_weight:
            # The product features start with the backbone vector, as wide as a query's.
            width = next(iter(self.train_queries.values())).x.shape[1]
            product = self.graph["product"]
            self.looks = look_clusters(
                product.x[:, :width], product.category, config.looks_per_category, config.seed
            )

    def steps(self, generator: torch.Generator) -> list[tuple[dict[str, torch.Tensor], torch.Tensor | None]]:
        config = self.config
        steps = batches(self.train_queries, config.batch_size, generator, config.max_steps)
        pairs: list[torch.Tensor | None] = [None] * len(steps)
        if self.partners is not None:
            pairs = list(_co_occurrence_batches(self.partners.shape[1], len(steps), self.largest, generator))
        return list(zip(steps, pairs, strict=True))

    def loss(
        self, batch: tuple[dict[str, torch.Tensor], torch.Tensor | None], generator: torch.Generator
    ) -> torch.Tensor:
        chosen_queries, chosen_pairs = batch
        config, model, graph, category = self.config, self.model, self.graph, self.category
        # The graph is encoded again for every step: its weights have just changed.
        seen = (
            _as_if_cold(graph, config.cold_start_dropout, generator) if config.cold_start_dropout else graph
        )
        products = model.products(seen).float()
        loss = torch.zeros((), device=products.device)
        for task, queries in self.train_queries.items():
            chosen = chosen_queries[task].to(queries.product.device)
            if not len(chosen):  # a small task may run out of queries before a large one
                continue
            positives = queries.product[chosen].to(products.device)
            negatives = _negatives(positives, category, config, generator)
            predicted = model.encode(queries.rows(chosen), task, products, graph).float()
            loss = loss + self.loss_fn(predicted, products, positives, negatives, **self.corrections[task])
            if task == "ctl" and self.looks is not None:
                loss = loss + config.look_weight * look_loss(
                    predicted, products, positives, self.looks, graph["product"].category, config.temperature
                )
        if chosen_pairs is not None and len(chosen_pairs):
            # Each product's vector as a query for a partner (why: TrainConfig).
            partners = self.partners
            source, target = partners[:, chosen_pairs.to(partners.device)].to(products.device)
            negatives = _negatives(target, category, config, generator)
            loss = loss + config.cooccurrence_weight * self.loss_fn(
                take(products, source), products, target, negatives
            )
        return loss

    def validate(self) -> dict[str, float]:
        return validation_mrr(self.model, self.graph, self.val_queries)

    def fit_prior(self, best: dict) -> dict:
        """The best checkpoint with its popularity prior fitted on validation. A copy of the
        model does it: the last epoch's state is still to be saved."""
        fitted = copy.deepcopy(self.model)
        fitted.load_state_dict(best["model"])
        with torch.no_grad():
            prior_val_mrr = fit_popularity_prior(fitted, self.graph, self.val_queries)
        return best | {"model": fitted.state_dict(), "prior_val_mrr": prior_val_mrr}


def train(
    model: Recommender,
    graph: HeteroData,
    train_queries: dict[str, Queries],
    val_queries: dict[str, Queries],
    config: TrainConfig,
    checkpoint_dir: Path,
    on_epoch=None,
    precision: Precision = "fp32",
) -> TrainResult:
    """Train on the model's device through the lifecycle, resuming from
    ``checkpoint_dir/last.pt`` when it was written with the same config."""
    check_config(config)
    trainable = StlTrainable(model, graph, train_queries, val_queries, config)
    result = fit(trainable, config, checkpoint_dir, on_epoch, precision, finish=trainable.fit_prior)
    return TrainResult(
        result.best_epoch, result.best_score, result.epochs_run, result.history, result.stopped_early
    )
