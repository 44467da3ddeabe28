"""Heterogeneous GraphSAGE link prediction on purchase snapshots, trained on time.

Training follows the evaluation's protocol rather than a random edge split: for each of the
last ``train_windows`` weeks before validation, the model sees the snapshot at the week's
start and learns to score the week's purchases above sampled negatives: a random article and
a hard one of the positive's product type, both drawn from articles on sale by the week's end.
Early stopping watches validation MAP@12 (the validation week, from its own snapshot).

Aggregation is a sparse-dense product with a row-normalized adjacency, so a layer's memory is
O(nodes x hidden), not O(edges x hidden): the full graph trains without neighbour sampling.
"""

import copy
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch_geometric.data import HeteroData
from torch_geometric.nn import HeteroConv, SAGEConv

from stl_pipeline.personalized.config import HmTrainConfig
from stl_pipeline.personalized.graph import (
    ARTICLE,
    BUYS,
    CUSTOMER,
    REV_BUYS,
    Snapshot,
    snapshot,
    window_purchases,
)

K = 12  # list length: the H&M benchmark's MAP@12


class HmSage(nn.Module):
    """Per-type input projections, ``layers`` rounds of customer <-> article SAGE convolution,
    and a score ``<customer, article> + bias(article)``; the bias reads the article's inputs
    (its recent sales among them), so trends enter the ranking directly."""

    def __init__(
        self, customer_dim: int, article_dim: int, hidden: int, layers: int, dropout: float, articles: int = 0
    ) -> None:
        super().__init__()
        # An embedding per article learns what its attributes miss; zero until trained, so an
        # article first sold after training falls back on its attributes and neighbours.
        self.article_embedding = nn.Embedding(articles, hidden) if articles else None
        if self.article_embedding is not None:
            nn.init.zeros_(self.article_embedding.weight)
        self.project = nn.ModuleDict(
            {CUSTOMER: nn.Linear(customer_dim, hidden), ARTICLE: nn.Linear(article_dim, hidden)}
        )
        self.convs = nn.ModuleList(
            HeteroConv(
                {BUYS: SAGEConv(hidden, hidden, aggr="sum"), REV_BUYS: SAGEConv(hidden, hidden, aggr="sum")}
            )
            for _ in range(layers)
        )
        self.bias = nn.Sequential(nn.Linear(article_dim, hidden), nn.ReLU(), nn.Linear(hidden, 1))
        # A purchase edge between the pair: how much buying it before says (repurchase is real).
        self.again = nn.Linear(2, 1, bias=False)
        self.dropout = dropout

    def forward(self, snap: Snapshot) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Customer and article embeddings and article biases for the snapshot."""
        h = {kind: self.project[kind](x) for kind, x in snap.x.items()}
        if self.article_embedding is not None:
            h[ARTICLE] = h[ARTICLE] + self.article_embedding.weight
        h = {kind: F.relu(v) for kind, v in h.items()}
        for i, conv in enumerate(self.convs):
            out = conv(h, snap.adj_t)
            if i < len(self.convs) - 1:
                out = {k: F.dropout(F.relu(v), self.dropout, self.training) for k, v in out.items()}
            h = out
        return h[CUSTOMER], h[ARTICLE], self.bias(snap.x[ARTICLE]).squeeze(-1)

    def repeat(self, bought: torch.Tensor) -> torch.Tensor:
        """The score added for a pair already bought ``bought`` times."""
        return self.again(torch.stack([torch.log1p(bought), (bought > 0).float()], dim=-1)).squeeze(-1)

    def score(
        self, customer: torch.Tensor, article: torch.Tensor, bias: torch.Tensor, bought: torch.Tensor
    ) -> torch.Tensor:
        return (customer * article).sum(-1) + bias + self.repeat(bought)


def build_model(graph: HeteroData, config: HmTrainConfig) -> HmSage:
    probe = snapshot(graph, 0, adjacency=False)
    articles = graph[ARTICLE].num_nodes if config.article_embeddings else 0
    return HmSage(
        probe.x[CUSTOMER].shape[1],
        probe.x[ARTICLE].shape[1],
        config.hidden,
        config.layers,
        config.dropout,
        articles,
    )


class NegativeSampler:
    """Negatives for the week from day ``start``: uniform over articles on sale by the week's
    end (first sold before it, or launched in it), and hard ones of a positive's product type
    among the articles that sold in the ``live_days`` before ``start`` (what a customer was
    choosing between). No article first sold after the week is ever drawn."""

    def __init__(self, graph: HeteroData, start: int, days: int, live_days: int) -> None:
        time, article = graph[BUYS].time, graph[BUYS].edge_index[1]

        def bought(since: int, until: int) -> torch.Tensor:
            lo, hi = (
                int(torch.searchsorted(time, torch.tensor(d, dtype=time.dtype))) for d in (since, until)
            )
            return torch.unique(article[lo:hi])

        self.eligible = bought(0, start + days)
        live = bought(start - live_days, start) if live_days else self.eligible
        types = graph[ARTICLE].product_type[live]
        order = torch.argsort(types, stable=True)
        self.live, self.types = live[order], types[order]
        n_types = int(graph[ARTICLE].product_type.max()) + 1
        self.start = torch.searchsorted(self.types, torch.arange(n_types))
        self.end = torch.searchsorted(self.types, torch.arange(n_types), right=True)

    def uniform(self, count: int, generator: torch.Generator) -> torch.Tensor:
        return self.eligible[torch.randint(len(self.eligible), (count,), generator=generator)]

    def same_type(
        self, articles: torch.Tensor, product_type: torch.Tensor, generator: torch.Generator
    ) -> torch.Tensor:
        kind = product_type[articles]
        lo, hi = self.start[kind], self.end[kind]
        size = (hi - lo).clamp(min=1)
        pick = (lo + (torch.rand(len(articles), generator=generator) * size).long()).clamp(
            max=len(self.live) - 1
        )
        if not len(self.live):
            return self.uniform(len(articles), generator)
        return torch.where(hi > lo, self.live[pick], self.uniform(len(articles), generator))


@dataclass
class Window:
    """A week to learn from or score: its snapshot, its purchases, its negative sampler."""

    start: int
    days: int
    snap: Snapshot
    customers: torch.Tensor  # distinct (customer, article) purchases in the week
    articles: torch.Tensor
    negatives: NegativeSampler


def make_window(
    graph: HeteroData, start: int, days: int, device: torch.device, live_days: int = 28
) -> Window:
    customers, articles = window_purchases(graph, start, days)
    return Window(
        start,
        days,
        snapshot(graph, start).to(device),
        torch.from_numpy(customers).to(device),
        torch.from_numpy(articles).to(device),
        NegativeSampler(graph, start, days, live_days),
    )


@dataclass
class HmTrainResult:
    state: dict[str, torch.Tensor]
    best_epoch: int
    best_val_map: float
    popularity_val_map: float
    history: list[dict[str, float]]
    epochs_run: int
    stopped_early: bool
    seconds: float


def _step(
    model: HmSage,
    window: Window,
    config: HmTrainConfig,
    product_type: torch.Tensor,
    generator: torch.Generator,
) -> torch.Tensor:
    customers, articles = window.customers, window.articles
    if len(customers) > config.max_positives:
        keep = torch.randperm(len(customers), generator=generator)[: config.max_positives].to(
            customers.device
        )
        customers, articles = customers[keep], articles[keep]
    h_c, h_a, bias = model(window.snap)
    device = customers.device
    negatives = [window.negatives.uniform(len(customers), generator).to(device)]
    if config.hard_negatives:
        negatives.append(window.negatives.same_type(articles.cpu(), product_type, generator).to(device))
    snap = window.snap
    positive = model.score(h_c[customers], h_a[articles], bias[articles], snap.bought(customers, articles))
    negative = torch.cat(
        [model.score(h_c[customers], h_a[n], bias[n], snap.bought(customers, n)) for n in negatives]
    )
    logits = torch.cat([positive, negative])
    labels = torch.cat([torch.ones_like(positive), torch.zeros_like(negative)])
    # Positives weigh as much as all their negatives together: a balanced objective.
    weights = torch.cat([torch.full_like(positive, float(len(negatives))), torch.ones_like(negative)])
    loss = F.binary_cross_entropy_with_logits(logits, labels, weight=weights)
    return loss


def train_hm(
    graph: HeteroData,
    config: HmTrainConfig,
    device: torch.device,
    on_epoch: Callable[[int, dict[str, float]], None] | None = None,
) -> HmTrainResult:
    from stl_pipeline.personalized.evaluate import PopularityScorer, SageScorer, evaluate

    began = time.perf_counter()
    torch.manual_seed(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    info, days = graph.info, graph.info["window_days"]  # the windows hm_graph was split with
    val_start = info["val_start_day"]
    starts = [
        val_start - days * (i + 1) for i in range(config.train_windows) if val_start - days * (i + 1) > 0
    ]
    if not starts:
        raise ValueError(
            f"no training week before the validation window (day {val_start}); need a longer history"
        )
    windows = [make_window(graph, s, days, device, config.hard_negative_days) for s in starts]
    validation = make_window(graph, val_start, days, torch.device("cpu"))
    popularity_val = evaluate(
        PopularityScorer(validation.snap, graph[ARTICLE].num_nodes), validation
    ).metrics["map@12"]
    model = build_model(graph, config).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    product_type = graph[ARTICLE].product_type
    best_state, best_map, best_epoch, history, waited, epoch = None, -1.0, 0, [], 0, 0
    val_device = validation.snap.to(device)
    for epoch in range(1, config.epochs + 1):
        model.train()
        losses = []
        for index in torch.randperm(len(windows), generator=generator).tolist():
            optimizer.zero_grad()
            loss = _step(model, windows[index], config, product_type, generator)
            loss.backward()
            optimizer.step()
            losses.append(float(loss.detach()))
        metrics = {"loss": float(np.mean(losses))}
        if epoch % config.eval_every == 0 or epoch == config.epochs:
            model.eval()
            with torch.no_grad():
                scorer = SageScorer(model, val_device)
            metrics["val_map@12"] = evaluate(scorer, validation).metrics["map@12"]
            if metrics["val_map@12"] > best_map:
                best_map, best_epoch, waited = metrics["val_map@12"], epoch, 0
                best_state = copy.deepcopy({k: v.detach().cpu() for k, v in model.state_dict().items()})
            else:
                waited += 1
        history.append({"epoch": epoch, **metrics})
        if on_epoch:
            on_epoch(epoch, metrics)
        if waited >= config.patience:
            break
    assert best_state is not None  # the last epoch always evaluates
    return HmTrainResult(
        state=best_state,
        best_epoch=best_epoch,
        best_val_map=best_map,
        popularity_val_map=popularity_val,
        history=history,
        epochs_run=epoch,
        stopped_early=epoch < config.epochs,
        seconds=time.perf_counter() - began,
    )


def model_record(result: HmTrainResult, graph: HeteroData, config: HmTrainConfig, mlflow_run_id: str) -> dict:
    """What ``hm_model`` stores: weights, config and the graph it fits, loadable weights-only."""
    return {
        "kind": "hm_sage",
        "state": result.state,
        "config": asdict(config),
        "dims": {kind: int(result.state[f"project.{kind}.weight"].shape[1]) for kind in (CUSTOMER, ARTICLE)},
        "graph": {k: graph.info[k] for k in ("customers_sha256", "articles_sha256", "start", "end_day")},
        "best_epoch": result.best_epoch,
        "best_val_map": result.best_val_map,
        "popularity_val_map": result.popularity_val_map,
        "mlflow_run_id": mlflow_run_id,
    }


def load_model(record: dict, graph: HeteroData) -> HmSage:
    """The record's model, after checking it was trained on this graph's nodes and features."""
    from stl_pipeline.lineage import MismatchedInputError

    for key in ("customers_sha256", "articles_sha256"):
        if record["graph"][key] != graph.info[key]:
            raise MismatchedInputError(
                f"hm_sage_model was trained on other {key.split('_')[0]} than hm_graph has; "
                "rematerialize hm_sage_model"
            )
    config = HmTrainConfig(**record["config"])
    articles = graph[ARTICLE].num_nodes if config.article_embeddings else 0
    model = HmSage(
        record["dims"][CUSTOMER],
        record["dims"][ARTICLE],
        config.hidden,
        config.layers,
        config.dropout,
        articles,
    )
    model.load_state_dict(record["state"])
    return model.eval()
