"""Full-batch training of a recommender with checkpoints, resume and early stopping.

A checkpoint holds the model, the optimizer, the fp16 gradient scaler, every
random generator (the CPU one negatives are drawn from, torch's, and the CUDA
device's that dropout uses there) and the history, so a run killed after
epoch n and resumed ends in exactly the state an uninterrupted run reaches.
Checkpoints are written atomically and read with ``weights_only=True``.
"""

import copy
import functools
import math
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch_geometric.data import HeteroData

from stl_pipeline.device import Precision, autocast, effective_precision
from stl_pipeline.graph.schema import CO_OCCURS, CONTAINS, REV_CONTAINS
from stl_pipeline.models.losses import LOSSES, Negatives, sample_negatives, sampling_log_q
from stl_pipeline.models.queries import Queries
from stl_pipeline.models.recommender import TASKS, Recommender, log_popularity
from stl_pipeline.storage import CorruptArtifactError, atomic_write_with, read_artifact
from stl_pipeline.training.config import TrainConfig
from stl_pipeline.training.ranking import mrr, ranks_in_category

LAST, BEST = "last.pt", "best.pt"
# What the best checkpoint keeps: what a model record reads (training/models.py), not the
# optimizer's moments and the RNG states that only resuming needs. It is written at every
# better epoch and registered in MLflow; the moments would treble its size.
BEST_KEYS = ("epoch", "model", "history", "best_epoch", "best_val_mrr", "config")


class NonFiniteLoss(FloatingPointError):
    pass


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


def _state(
    model, optimizer, scheduler, scaler, sampler, config, epoch, history, best, finished: bool
) -> dict:
    device = next(model.parameters()).device
    return {
        "epoch": epoch,
        "finished": finished,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict() if scheduler is not None else {},
        "scaler": scaler.state_dict(),
        "sampler": sampler.get_state(),
        "torch_rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
        "history": history,
        "best_epoch": best[0],
        "best_val_mrr": best[1],
        "config": asdict(config),
    }


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


def _fit_best(model: Recommender, graph: HeteroData, val: dict[str, Queries], path: Path) -> None:
    """Fit the popularity prior of the best epoch's model and write it into its checkpoint.
    A copy of the model does it: the last epoch's state is still to be saved."""
    best = load_checkpoint(path)
    fitted = copy.deepcopy(model)
    fitted.load_state_dict(best["model"])
    with torch.no_grad():
        best["prior_val_mrr"] = fit_popularity_prior(fitted, graph, val)
    best["model"] = fitted.state_dict()
    save_checkpoint(path, best)


def save_checkpoint(path: Path, state: dict) -> None:
    atomic_write_with(path, lambda tmp: torch.save(state, tmp))


def load_checkpoint(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def _resumable(last: Path) -> dict | None:
    """The state to resume from; None when there is none, or when it is damaged: training
    is deterministic, so starting afresh ends where the interrupted run would have."""
    if not last.exists():
        return None
    try:
        return read_artifact(last, load_checkpoint, "training starts afresh")
    except CorruptArtifactError as error:
        warnings.warn(str(error), stacklevel=3)
        last.unlink(missing_ok=True)
        return None


@contextmanager
def _deterministic(on: bool) -> Iterator[None]:
    """PyTorch's deterministic kernels while the block runs (a process-wide switch, restored
    after); ops without one warn instead of failing."""
    before = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(on, warn_only=True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before, warn_only=warn_only)


def train(
    model: Recommender,
    graph: HeteroData,
    train_queries: dict[str, Queries],
    val_queries: dict[str, Queries],
    config: TrainConfig,
    checkpoint_dir: Path,
    on_epoch: Callable[[int, dict[str, float]], None] | None = None,
    precision: Precision = "fp32",
) -> TrainResult:
    """Train on the model's device, resuming from ``checkpoint_dir/last.pt`` when it was
    written with the same config. ``precision`` bf16 or fp16 autocasts on CUDA; fp16
    scales the loss, so small gradients do not underflow to zero."""
    with _deterministic(config.deterministic):
        if config.loss not in LOSSES:
            raise ValueError(f"unknown loss {config.loss!r}: use one of {sorted(LOSSES)}")
        if config.temperature <= 0:
            raise ValueError(f"temperature divides the cosines: {config.temperature} must be above 0")
        if not 0 <= config.cold_start_dropout < 1:
            raise ValueError(
                f"cold_start_dropout is the share of products hidden a step: {config.cold_start_dropout} "
                "is not in [0, 1)"
            )
        if config.lr_decay_patience < 0:
            raise ValueError(
                f"lr_decay_patience counts epochs: {config.lr_decay_patience} is below 0 (0 keeps the rate)"
            )
        unknown = set(train_queries) - set(TASKS)
        if unknown:
            raise ValueError(f"unknown tasks {sorted(unknown)}: use {TASKS}")
        checkpoint_dir = Path(checkpoint_dir)
        torch.manual_seed(config.seed)
        sampler = torch.Generator().manual_seed(config.seed)
        # One fused update per step instead of a loop over parameter tensors: fewer kernel launches
        # on CUDA; the same speed on the CPU.
        optimizer = torch.optim.AdamW(
            model.parameters(), lr=config.lr, weight_decay=config.weight_decay, fused=True
        )
        scheduler = None
        if config.lr_decay_patience:
            # Its patience counts epochs after the best, as early stopping's does.
            scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
                optimizer, mode="max", factor=0.5, patience=config.lr_decay_patience - 1, threshold=0.0
            )
        device = next(model.parameters()).device
        precision = effective_precision(device, precision)
        scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
        start, history, best = 0, [], (-1, -math.inf)
        last = checkpoint_dir / LAST
        state = _resumable(last)
        if state is not None and state["config"] == asdict(config):
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            if scheduler is not None:
                scheduler.load_state_dict(state["scheduler"])
            if state["scaler"]:  # empty when it was written without fp16
                scaler.load_state_dict(state["scaler"])
            sampler.set_state(state["sampler"])
            torch.set_rng_state(state["torch_rng"])
            if device.type == "cuda" and state["cuda_rng"] is not None:
                torch.cuda.set_rng_state(state["cuda_rng"], device)
            start, history = state["epoch"] + 1, list(state["history"])
            best = (state["best_epoch"], state["best_val_mrr"])
            if state["finished"]:
                return TrainResult(best[0], best[1], start, history, start < config.epochs)
        loss_fn = LOSSES[config.loss]
        if config.loss == "infonce":
            loss_fn = functools.partial(loss_fn, temperature=config.temperature)
        category = graph["product"].category.cpu()  # negatives are drawn on the CPU generator
        corrections = _sampling_corrections(train_queries, category, config, device)
        partners = _co_occurrences(graph, config)
        largest = max(len(q.product) for q in train_queries.values())
        model.train()
        epoch = start - 1
        for epoch in range(start, config.epochs):
            steps = batches(train_queries, config.batch_size, sampler, config.max_steps)
            pairs = [None] * len(steps)
            if partners is not None:
                pairs = _co_occurrence_batches(partners.shape[1], len(steps), largest, sampler)
            losses = []
            for batch, chosen_pairs in zip(steps, pairs, strict=True):
                with autocast(device, precision):
                    # The graph is encoded again for every step: its weights have just changed.
                    seen = graph
                    if config.cold_start_dropout:
                        seen = _as_if_cold(graph, config.cold_start_dropout, sampler)
                    products = model.products(seen).float()
                    loss = torch.zeros((), device=products.device)
                    for task, queries in train_queries.items():
                        chosen = batch[task].to(queries.product.device)
                        if not len(chosen):  # a small task may run out of queries before a large one
                            continue
                        positives = queries.product[chosen].to(products.device)
                        negatives = _negatives(positives, category, config, sampler)
                        predicted = model.encode(queries.rows(chosen), task, products, graph).float()
                        loss = loss + loss_fn(predicted, products, positives, negatives, **corrections[task])
                    if chosen_pairs is not None and len(chosen_pairs):
                        # Each product's vector as a query for a partner (why: TrainConfig).
                        source, target = partners[:, chosen_pairs.to(partners.device)].to(products.device)
                        negatives = _negatives(target, category, config, sampler)
                        aux = loss_fn(products[source], products, target, negatives)
                        loss = loss + config.cooccurrence_weight * aux
                if not torch.isfinite(loss):
                    raise NonFiniteLoss(
                        f"the loss became {loss.item()} at epoch {epoch}; lower lr (now {config.lr}) or "
                        f"check the inputs for non-finite embeddings. The last good checkpoint is {last}"
                    )
                optimizer.zero_grad()
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
                losses.append(loss.item())
            metrics = {
                "epoch": float(epoch),
                "loss": sum(losses) / len(losses),
                "lr": optimizer.param_groups[0]["lr"],  # this epoch's
                **validation_mrr(model, graph, val_queries),
            }
            history.append(metrics)
            if on_epoch:
                on_epoch(epoch, metrics)
            if scheduler is not None:
                scheduler.step(metrics["val_mrr"])
            improved = metrics["val_mrr"] > best[1]
            if improved:
                best = (epoch, metrics["val_mrr"])
            finished = epoch + 1 == config.epochs or epoch - best[0] >= config.patience
            if improved or finished or (epoch + 1) % config.checkpoint_every == 0:
                state = _state(
                    model, optimizer, scheduler, scaler, sampler, config, epoch, history, best, finished
                )
                if improved:
                    save_checkpoint(checkpoint_dir / BEST, {key: state[key] for key in BEST_KEYS})
                if finished:  # before "finished" is on disk, so a run killed here fits it again
                    _fit_best(model, graph, val_queries, checkpoint_dir / BEST)
                save_checkpoint(last, state)
            if finished:
                break
        return TrainResult(best[0], best[1], epoch + 1, history, epoch + 1 < config.epochs)
