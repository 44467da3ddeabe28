"""Heterogeneous GraphSAGE link prediction on purchase snapshots, trained on time.

Training follows the evaluation's protocol rather than a random edge split: for each of the
last ``train_windows`` weeks before validation, the model sees the snapshot at the week's
start and learns to rank each of the week's purchases first among the articles on sale (a
softmax over the customer's earlier purchases and a shared uniform sample of the rest;
``loss: bce`` scores them against a random and a same-type negative instead).
Early stopping watches validation MAP@12 (the validation week, from its own snapshot).

Aggregation is a sparse-dense product with a row-normalized adjacency, so a layer's memory is
O(nodes x hidden), not O(edges x hidden): the full graph trains without neighbour sampling.
Its backward multiplies by the transpose the snapshot stores (``_Aggregate``).
"""

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch_geometric.data import HeteroData
from torch_geometric.nn import HeteroConv, SAGEConv

from stl_pipeline.checkpoints import BEST, load_checkpoint
from stl_pipeline.lifecycle import fit
from stl_pipeline.personalized.config import LOSSES, HmTrainConfig
from stl_pipeline.personalized.graph import ARTICLE, BUYS, CUSTOMER, REV_BUYS, Snapshot, snapshot
from stl_pipeline.personalized.windows import Window, make_window

K = 12  # list length: the H&M benchmark's MAP@12


class _Aggregate(torch.autograd.Function):
    """``adjacency @ x`` whose backward multiplies by the snapshot's stored transpose: torch's own
    backward of a CSR product transposes the matrix at every step, half of a CPU step's time."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, adjacency: torch.Tensor, transpose: torch.Tensor) -> torch.Tensor:
        ctx.transpose = transpose
        return adjacency @ x

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        return ctx.transpose @ grad, None, None


class _PairDot(torch.autograd.Function):
    """``(a[rows] * b[cols]).sum(-1)`` a chunk at a time, and its backward the same way: at the
    release's size a week's buyers have millions of earlier purchases, and the gathered
    (pairs, hidden) operands autograd would keep are gigabytes."""

    CHUNK = 1 << 18

    @staticmethod
    def forward(
        ctx, a: torch.Tensor, b: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor
    ) -> torch.Tensor:
        ctx.save_for_backward(a, b, rows, cols)
        out = a.new_empty(len(rows))
        for at in range(0, len(rows), _PairDot.CHUNK):
            r, c = rows[at : at + _PairDot.CHUNK], cols[at : at + _PairDot.CHUNK]
            out[at : at + len(r)] = (a[r] * b[c]).sum(-1)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, None, None]:
        a, b, rows, cols = ctx.saved_tensors
        grad_a, grad_b = torch.zeros_like(a), torch.zeros_like(b)
        for at in range(0, len(rows), _PairDot.CHUNK):
            r, c = rows[at : at + _PairDot.CHUNK], cols[at : at + _PairDot.CHUNK]
            g = grad[at : at + len(r), None]
            grad_a.index_add_(0, r, g * b[c])
            grad_b.index_add_(0, c, g * a[r])
        return grad_a, grad_b, None, None


class HmSage(nn.Module):
    """Per-type input projections, ``layers`` rounds of customer <-> article SAGE convolution
    (``SAGEConv``'s weights and formula, ``lin_l(mean of neighbours) + lin_r(self)``, applied
    through ``_Aggregate``), and a score ``<customer, article> + bias(article)``; the bias
    reads the article's inputs (its recent sales among them), so trends enter the ranking
    directly."""

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
            out = {}
            for edge_type, adjacency in snap.adj_t.items():
                src, _, dst = edge_type
                sage = conv.convs[edge_type]
                mean = _Aggregate.apply(h[src], adjacency, snap.adj[edge_type])
                out[dst] = sage.lin_l(mean) + sage.lin_r(h[dst])
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
    if config.loss == "softmax":
        return _softmax_loss(
            model, window, config.negatives, (h_c, h_a, bias), customers, articles, generator
        )
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


def _softmax_loss(
    model: HmSage,
    window: Window,
    shared: int,
    embeddings: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    customers: torch.Tensor,
    articles: torch.Tensor,
    generator: torch.Generator,
) -> torch.Tensor:
    """Each purchase's cross-entropy against the catalogue, as MAP@12 ranks it: exact over the
    customer's earlier purchases, where repurchase competes with everything else, and over the
    rest estimated from ``shared`` uniform articles, each standing for its share of the
    articles on sale (sampled softmax's log-share correction). The catalogue's sum is a
    customer's, computed once however many purchases they made in the week."""
    h_c, h_a, bias = embeddings
    snap, device = window.snap, customers.device
    buyers, which = torch.unique(customers, return_inverse=True)
    user = h_c[buyers]
    repeat = snap.bought(customers, articles)
    positive = model.score(user[which], h_a[articles], bias[articles], repeat)
    sample = window.negatives.distinct(shared, generator).to(device)
    share = math.log(len(window.negatives.eligible) / len(sample))
    slot = torch.full((snap.articles,), -1, dtype=torch.long, device=device)
    slot[sample] = torch.arange(len(sample), device=device)
    row, article, count = snap.bought_entries(buyers)
    history = _PairDot.apply(user, h_a, row, article) + bias[article] + model.repeat(count)
    past = _segment_logsumexp(history, row, len(buyers))
    # A sampled article the customer bought before is counted with the history, not twice.
    hit = slot[article] >= 0
    minus = torch.tensor(float("-inf"), device=device)
    sampled = (user @ h_a[sample].T + bias[sample] + share).index_put((row[hit], slot[article[hit]]), minus)
    catalogue = torch.logaddexp(torch.logsumexp(sampled, dim=1), past)[which]
    # A repurchase is in the history already; any other purchase is counted as itself, and
    # where it was also drawn, its stand-in is taken out of that row's sample.
    total = torch.where(repeat > 0, catalogue, torch.logaddexp(catalogue, positive))
    at = slot[articles]
    drawn = ((repeat == 0) & (at >= 0)).nonzero().squeeze(1)
    if len(drawn):
        rows = sampled[which[drawn]].index_put((torch.arange(len(drawn), device=device), at[drawn]), minus)
        rest = torch.logaddexp(torch.logsumexp(rows, dim=1), past[which[drawn]])
        total = total.index_put((drawn,), torch.logaddexp(rest, positive[drawn]))
    return (total - positive).mean()


def _segment_logsumexp(values: torch.Tensor, segment: torch.Tensor, segments: int) -> torch.Tensor:
    """log(sum(exp(values))) per segment, -inf for an empty one, with finite gradients."""
    empty = torch.bincount(segment, minlength=segments) == 0
    top = values.new_full((segments,), float("-inf")).scatter_reduce(0, segment, values.detach(), "amax")
    top = torch.where(empty, 0.0, top)
    total = values.new_zeros(segments).index_add(0, segment, torch.exp(values - top[segment]))
    return torch.where(empty, float("-inf"), top + torch.log(torch.where(empty, 1.0, total)))


@dataclass
class HmTrainable:
    """The training weeks in random order, one step each, early-stopped on validation MAP@12."""

    model: HmSage
    windows: list[Window]
    validation: Window
    config: HmTrainConfig
    product_type: torch.Tensor
    score: str = f"val_MAP@{K}"

    def __post_init__(self) -> None:
        self.validation_snap = self.validation.snap.to(next(self.model.parameters()).device)

    def steps(self, generator: torch.Generator) -> list[int]:
        return torch.randperm(len(self.windows), generator=generator).tolist()

    def loss(self, batch: int, generator: torch.Generator) -> torch.Tensor:
        return _step(self.model, self.windows[batch], self.config, self.product_type, generator)

    def validate(self) -> dict[str, float]:
        from stl_pipeline.personalized.evaluate import SageScorer, evaluate

        self.model.eval()
        with torch.no_grad():
            scorer = SageScorer(self.model, self.validation_snap)
        self.model.train()
        return {self.score: evaluate(scorer, self.validation).metrics[f"MAP@{K}"]}


def train_hm(
    graph: HeteroData,
    config: HmTrainConfig,
    device: torch.device,
    checkpoint_dir: Path,
    on_epoch: Callable[[int, dict[str, float]], None] | None = None,
) -> HmTrainResult:
    """Train through the lifecycle (lifecycle.py): seeded, resumable from
    ``checkpoint_dir/last.pt``, early-stopped on validation MAP@12."""
    from stl_pipeline.personalized.evaluate import PopularityScorer, evaluate

    if config.loss not in LOSSES:
        raise ValueError(f"hm_sage_model's loss is {config.loss!r}; choose one of {', '.join(LOSSES)}")
    began = time.perf_counter()
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
    ).metrics[f"MAP@{K}"]
    torch.manual_seed(config.seed)
    model = build_model(graph, config).to(device)
    trainable = HmTrainable(model, windows, validation, config, graph[ARTICLE].product_type)
    result = fit(trainable, config, checkpoint_dir, on_epoch)
    best = load_checkpoint(Path(checkpoint_dir) / BEST)
    return HmTrainResult(
        state=best["model"],
        best_epoch=result.best_epoch,
        best_val_map=result.best_score,
        popularity_val_map=popularity_val,
        history=result.history,
        epochs_run=result.epochs_run,
        stopped_early=result.stopped_early,
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
