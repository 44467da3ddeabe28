import math
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from torch_geometric.data import HeteroData

from stl_pipeline.checkpoints import BEST, LAST, load_checkpoint
from stl_pipeline.graph.schema import CO_OCCURS, CONTAINS, PRODUCT_SIMILAR, REV_CONTAINS
from stl_pipeline.lifecycle import NonFiniteLoss
from stl_pipeline.metrics import hit_rate, mrr, ranks_in_category, true_ranks
from stl_pipeline.models.config import TrainConfig
from stl_pipeline.models.queries import Queries
from stl_pipeline.models.record import build_model, load_model, schema
from stl_pipeline.training.loop import (
    PRIOR_WEIGHTS,
    _as_if_cold,
    batches,
    check_context,
    fit_popularity_prior,
    train,
    validation_mrr,
)
from stl_pipeline_tests.test_models import tiny_graph

# Three queries a step: resume and early stopping are tested across mini-batches.
CONFIG = TrainConfig(
    hidden=16, heads=4, out_dim=8, dropout=0.2, epochs=12, checkpoint_every=3, patience=100, batch_size=3
)


def queries(seed: int, products: torch.Tensor, graph) -> Queries:
    g = torch.Generator().manual_seed(seed)
    x = graph["product"].x[products] + 0.1 * torch.randn(len(products), 6, generator=g)
    return Queries(x, products)


def setup(config: TrainConfig = CONFIG, graph: HeteroData | None = None):
    graph = tiny_graph() if graph is None else graph
    torch.manual_seed(config.seed)
    model = build_model(schema(graph), 6, config)
    train_q = {"stl": queries(1, torch.arange(8), graph), "ctl": queries(2, torch.arange(8), graph)}
    val_q = {"stl": queries(3, torch.arange(8, 12), graph)}
    return model, graph, train_q, val_q


def test_ranks_and_metrics_by_hand() -> None:
    scores = torch.tensor([[0.9, 0.5, 0.1], [0.2, 0.3, 0.3], [0.0, 0.0, 0.0]])
    truth = torch.tensor([0, 2, 1])
    ranks = true_ranks(scores, truth)
    assert ranks.tolist() == [0, 1, 2]  # a tie counts against the true product
    assert true_ranks(scores, truth, torch.tensor([[1, 1, 1], [1, 0, 1], [0, 1, 0]]).bool()).tolist() == [
        0,
        0,
        0,
    ]
    assert mrr(ranks) == pytest.approx((1 + 1 / 2 + 1 / 3) / 3)
    assert hit_rate(ranks, 1) == pytest.approx(1 / 3) and hit_rate(ranks, 2) == pytest.approx(2 / 3)


def test_ranks_within_each_category_equal_ranks_over_the_masked_table() -> None:
    g = torch.Generator().manual_seed(0)
    products = torch.randn(40, 4, generator=g).round()  # rounding makes ties, which count against
    queries = torch.randn(30, 4, generator=g).round()
    category = torch.randint(0, 4, (40,), generator=g)
    truth = torch.randint(0, 40, (30,), generator=g)
    biases = [torch.zeros(40), torch.rand(40, generator=g)]
    found = ranks_in_category(queries, products, truth, category, biases, chunk=4)
    allowed = category[None, :] == category[truth][:, None]
    for ranks, bias in zip(found, biases, strict=True):
        assert torch.equal(ranks, true_ranks(queries @ products.T + bias, truth, allowed))
    assert found[0].max() > 0 and not torch.equal(found[0], found[1])


def test_training_lowers_the_loss_and_keeps_the_best_checkpoint(tmp_path: Path) -> None:
    model, graph, train_q, val_q = setup()
    result = train(model, graph, train_q, val_q, CONFIG, tmp_path)
    losses = [h["loss"] for h in result.history]
    assert result.epochs_run == 12 and losses[-1] < losses[0]
    best = load_checkpoint(tmp_path / BEST)
    assert best["epoch"] == result.best_epoch and best["best_score"] == result.best_val_mrr
    assert "optimizer" not in best and "optimizer" in load_checkpoint(tmp_path / LAST)  # for resuming
    assert load_checkpoint(tmp_path / LAST)["finished"]
    # The best epoch's model carries its fitted popularity prior, which validation never rates lower.
    assert best["model"]["prior.weight"][0].item() in PRIOR_WEIGHTS
    assert best["prior_val_mrr"]["val_mrr"] >= best["best_score"]


def test_the_popularity_prior_is_fitted_on_validation_and_stays_zero_where_it_hurts() -> None:
    graph = tiny_graph()
    # Products 0 and 1 are in every train scene, the other ten in none.
    scenes = torch.arange(5).repeat(2)
    graph["scene", "contains", "product"].edge_index = torch.stack([scenes, torch.arange(10) // 5])
    torch.manual_seed(0)
    model = build_model(schema(graph), 6, CONFIG)
    popular = {"stl": queries(3, torch.tensor([0, 1] * 4), graph)}
    before = validation_mrr(model, graph, popular)["val_mrr_stl"]
    fitted = fit_popularity_prior(model, graph, popular)
    assert model.prior.weight[0] > 0 and fitted["val_mrr_stl"] > before
    assert fitted == validation_mrr(model, graph, popular)  # the model keeps the weights it reports
    rare = {"stl": queries(4, torch.arange(2, 12), graph)}
    fit_popularity_prior(model, graph, rare)
    assert model.prior.weight[0] == 0  # raising products 0 and 1 only puts others before the truth


def test_records_load_with_their_prior_and_older_ones_without_it(tmp_path: Path) -> None:
    model, graph, train_q, val_q = setup()
    train(model, graph, train_q, val_q, CONFIG, tmp_path)
    best = load_checkpoint(tmp_path / BEST)
    shape = schema(graph)
    record = {"config": best["config"], "state_dict": best["model"], "node_dims": shape.node_dims}
    record |= {"edge_types": [list(e) for e in shape.edge_types], "query_dim": 6}
    loaded = load_model(record)
    assert torch.equal(loaded.prior.weight, best["model"]["prior.weight"])
    # A model trained before the prior existed: no such key in its config or its weights.
    older = record | {"config": {k: v for k, v in best["config"].items() if k != "popularity_prior"}}
    older["state_dict"] = {k: v for k, v in best["model"].items() if not k.startswith("prior.")}
    assert load_model(older).prior is None
    assert not load_model(older).popularity_bias(graph, "ctl").any()


def with_co_occurrences(graph: HeteroData) -> HeteroData:
    """Two styles, products 0-5 and 6-11 (categories: index % 3), each worn in three scenes."""
    scenes = [[0, 1, 2], [3, 4, 5], [0, 4, 2], [6, 7, 8], [9, 10, 11], [6, 10, 8]]
    pairs = [(a, b) for scene in scenes for a in scene for b in scene if a != b]
    graph[CO_OCCURS].edge_index = torch.tensor(pairs).T
    return graph


def test_a_killed_run_resumes_to_the_same_final_state(tmp_path: Path) -> None:
    straight, resumed = _kill_and_resume(tmp_path, lambda *parts: parts)
    assert straight["cuda_rng"] is None and straight["scaler"] == {}
    _assert_same_run(straight, resumed)


def test_a_killed_run_with_the_co_occurrence_loss_resumes_to_the_same_final_state(tmp_path: Path) -> None:
    config = replace(CONFIG, cooccurrence_weight=0.5)
    graph = with_co_occurrences(tiny_graph())
    straight, resumed = _kill_and_resume(tmp_path, lambda *parts: parts, config=config, graph=graph)
    _assert_same_run(straight, resumed)


def test_a_killed_run_with_the_look_loss_resumes_to_the_same_final_state(tmp_path: Path) -> None:
    """The looks are clustered afresh on resume: with the seed they are the same looks."""
    config = replace(CONFIG, look_weight=1.0, looks_per_category=2)
    straight, resumed = _kill_and_resume(tmp_path, lambda *parts: parts, config=config)
    _assert_same_run(straight, resumed)


def test_the_co_occurrence_loss_ranks_each_products_partners_first_in_their_category(tmp_path: Path) -> None:
    graph = with_co_occurrences(tiny_graph())
    source, target = graph[CO_OCCURS].edge_index
    found = {}
    for weight in (0.0, 3.0):
        config = replace(CONFIG, cooccurrence_weight=weight, epochs=30)
        model, _, train_q, val_q = setup(config, graph)
        train(model, graph, train_q, val_q, config, tmp_path / str(weight))
        model.eval()
        with torch.no_grad():
            products = model.products(graph)
            (ranks,) = ranks_in_category(
                products[source], products, target, graph["product"].category, [torch.zeros(12)]
            )
        found[weight] = mrr(ranks)
    assert found[3.0] > found[0.0] + 0.1


def test_hiding_products_as_if_cold_removes_their_interactions_and_nothing_else() -> None:
    graph = with_co_occurrences(tiny_graph())
    before = {edge_type: graph[edge_type].edge_index.clone() for edge_type in graph.edge_types}
    hidden = torch.rand(12, generator=torch.Generator().manual_seed(5)) < 0.5
    assert 0 < hidden.sum() < 12
    masked = _as_if_cold(graph, 0.5, torch.Generator().manual_seed(5))
    for edge_type, ends in ((CONTAINS, [1]), (REV_CONTAINS, [0]), (CO_OCCURS, [0, 1])):
        edges = before[edge_type]
        kept = edges[:, ~hidden[edges[ends]].any(dim=0)]
        assert torch.equal(masked[edge_type].edge_index, kept)
        assert kept.shape[1] < edges.shape[1]  # the draw hid some of each
    assert torch.equal(masked[PRODUCT_SIMILAR].edge_index, before[PRODUCT_SIMILAR])  # looks stay
    assert all(torch.equal(graph[t].edge_index, before[t]) for t in graph.edge_types)  # untouched
    assert not masked[CO_OCCURS].edge_index.numel() or not hidden[masked[CO_OCCURS].edge_index].any()


def test_a_killed_run_that_hides_products_as_if_cold_resumes_to_the_same_final_state(tmp_path: Path) -> None:
    config = replace(CONFIG, cooccurrence_weight=0.5, cold_start_dropout=0.3)
    graph = with_co_occurrences(tiny_graph())
    straight, resumed = _kill_and_resume(tmp_path, lambda *parts: parts, config=config, graph=graph)
    _assert_same_run(straight, resumed)
    visible = replace(config, cold_start_dropout=0.0)
    plain = train(*setup(visible, graph), visible, tmp_path / "plain")
    assert plain.history != straight["history"]  # the hidden edges changed what was learned


def test_the_temperature_reaches_the_infonce_loss(tmp_path: Path) -> None:
    histories = {}
    for temperature in (0.07, 0.2):
        config = replace(CONFIG, temperature=temperature, epochs=2)
        histories[temperature] = train(*setup(config), config, tmp_path / str(temperature)).history
    losses = {t: h[0]["loss"] for t, h in histories.items()}
    # A cooler softmax sharpens every logit, so the first epoch's loss from the same start differs.
    assert losses[0.07] != pytest.approx(losses[0.2], rel=1e-3)


def test_the_learning_rate_halves_only_after_its_patience_without_a_better_epoch(tmp_path: Path) -> None:
    config = replace(CONFIG, lr_decay_patience=2, epochs=30)
    history = train(*setup(config), config, tmp_path).history
    rates = [h["lr"] for h in history]
    assert rates[0] == config.lr and min(rates) < config.lr  # the tiny data plateaus within 30 epochs
    best, since_best = -math.inf, 0
    for epoch, h in enumerate(history[:-1]):
        since_best = 0 if h["val_mrr"] > best else since_best + 1
        best = max(best, h["val_mrr"])
        expected = rates[epoch] / 2 if since_best >= config.lr_decay_patience else rates[epoch]
        assert rates[epoch + 1] == pytest.approx(expected), epoch
        since_best = 0 if since_best >= config.lr_decay_patience else since_best


def test_a_killed_run_that_lowers_its_learning_rate_resumes_to_the_same_final_state(tmp_path: Path) -> None:
    config = replace(CONFIG, lr_decay_patience=2)
    straight, resumed = _kill_and_resume(tmp_path, lambda *parts: parts, config=config)
    _assert_same_run(straight, resumed)
    assert straight["scheduler"] == resumed["scheduler"]
    assert straight["history"][-1]["lr"] < config.lr  # the rate fell, and where is in the restored state


def test_the_co_occurrence_loss_needs_co_occurs_edges(tmp_path: Path) -> None:
    config = replace(CONFIG, cooccurrence_weight=0.5)
    with pytest.raises(ValueError, match="build stl_graph with co_occurs edges"):
        train(*setup(config), config, tmp_path)


def test_early_stopping_and_a_finished_run_is_not_repeated(tmp_path: Path) -> None:
    config = TrainConfig(**{**CONFIG.__dict__, "epochs": 200, "patience": 3, "lr": 0.0})
    model, graph, train_q, val_q = setup(config)
    result = train(model, graph, train_q, val_q, config, tmp_path)
    assert result.stopped_early and result.epochs_run == result.best_epoch + 4
    again = train(*setup(config), config, tmp_path)
    assert again.epochs_run == result.epochs_run and again.history == result.history


def test_a_non_finite_loss_stops_with_advice(tmp_path: Path) -> None:
    model, graph, train_q, val_q = setup()
    train_q["stl"].x[0, 0] = float("nan")
    with pytest.raises(NonFiniteLoss, match=r"lower lr .* non-finite values"):
        train(model, graph, train_q, val_q, CONFIG, tmp_path)


def test_unknown_loss_or_task_is_refused(tmp_path: Path) -> None:
    model, graph, train_q, val_q = setup()
    with pytest.raises(ValueError, match="unknown loss"):
        train(model, graph, train_q, val_q, TrainConfig(loss="hinge"), tmp_path)
    with pytest.raises(ValueError, match=r"temperature divides the cosines: 0\.0 must be above 0"):
        train(model, graph, train_q, val_q, replace(CONFIG, temperature=0.0), tmp_path)
    with pytest.raises(ValueError, match=r"cold_start_dropout .* not in \[0, 1\)"):
        train(model, graph, train_q, val_q, replace(CONFIG, cold_start_dropout=1.0), tmp_path)
    with pytest.raises(ValueError, match="lr_decay_patience counts epochs"):
        train(model, graph, train_q, val_q, replace(CONFIG, lr_decay_patience=-1), tmp_path)
    with pytest.raises(ValueError, match="unknown tasks"):
        train(model, graph, {"outfit": train_q["stl"]}, val_q, CONFIG, tmp_path)


def test_a_context_lead_that_the_tokens_source_does_not_put_first_is_refused() -> None:
    config = replace(CONFIG, context=True, context_lead=1)
    check_context(config, {"source": "masked+items", "grid": "1"})
    check_context(replace(config, context_lead=0), {"source": "items", "grid": "1"})
    check_context(replace(config, context=False), {"source": "items", "grid": "1"})
    with pytest.raises(ValueError, match=r"source 'items' \(grid 1\) puts 0 there: set context_lead to 0"):
        check_context(config, {"source": "items", "grid": "1"})
    with pytest.raises(ValueError, match=r"puts 4 there: set context_lead to 4"):
        check_context(config, {"source": "masked+items", "grid": "2"})


def test_an_epoch_visits_every_query_once_in_steps_of_the_batch_size() -> None:
    queries = {
        "stl": Queries(torch.zeros(10, 2), torch.arange(10)),
        "ctl": Queries(torch.zeros(4, 2), torch.arange(4)),
    }
    steps = batches(queries, 3, torch.Generator().manual_seed(0))
    assert len(steps) == 4
    for task, n in (("stl", 10), ("ctl", 4)):
        seen = torch.cat([step[task] for step in steps])
        assert sorted(seen.tolist()) == list(range(n))
        assert max(len(step[task]) for step in steps) <= 3
    assert len(batches(queries, 0, torch.Generator())) == 1  # 0: full batch
    capped = batches(queries, 3, torch.Generator().manual_seed(0), max_steps=2)
    assert len(capped) == 2 and sorted(torch.cat([s["stl"] for s in capped]).tolist()) == list(range(10))


def _kill_and_resume(
    tmp_path: Path,
    move,
    precision: str = "fp32",
    config: TrainConfig = CONFIG,
    graph: HeteroData | None = None,
) -> tuple[dict, dict]:
    """The last checkpoints of a straight run and of one killed after epoch 7 and resumed
    in a fresh model (``move`` puts a model and its inputs on the device under test)."""

    class Killed(Exception):
        pass

    def kill_after_epoch_7(epoch: int, _: dict) -> None:
        if epoch == 7:
            raise Killed

    def parts() -> tuple:
        return move(*setup(config, graph))

    train(*parts(), config, tmp_path / "straight", precision=precision)
    with pytest.raises(Killed):
        train(*parts(), config, tmp_path / "killed", on_epoch=kill_after_epoch_7, precision=precision)
    assert 5 <= load_checkpoint(tmp_path / "killed" / LAST)["epoch"] < 7  # periodic (5) or a new best
    result = train(*parts(), config, tmp_path / "killed", precision=precision)
    assert result.epochs_run == 12 and len(result.history) == 12
    return load_checkpoint(tmp_path / "straight" / LAST), load_checkpoint(tmp_path / "killed" / LAST)


def _assert_same_run(straight: dict, resumed: dict, tolerance: float = 0.0) -> None:
    losses = [h["loss"] for h in straight["history"]]
    assert [h["loss"] for h in resumed["history"]] == pytest.approx(losses, rel=tolerance, abs=tolerance)
    for name, tensor in straight["model"].items():
        assert torch.allclose(tensor, resumed["model"][name], rtol=0, atol=tolerance), name
    assert resumed["scaler"] == straight["scaler"]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_a_killed_cuda_run_resumes_to_the_same_final_state(tmp_path: Path, precision: str) -> None:
    """Dropout draws from the CUDA generator and fp16 steps depend on the loss scale: both
    are in the checkpoint. CUDA's atomic scatter sums differ in the last bits from run to
    run, hence the tolerance; other dropout masks after the resume would differ far more."""
    straight, resumed = _kill_and_resume(tmp_path, _on(torch.device("cuda")), precision)
    assert straight["cuda_rng"] is not None
    if precision == "fp16":
        assert straight["scaler"]["scale"] > 0
    _assert_same_run(straight, resumed, tolerance=1e-4)


def _on(device: torch.device):
    def move(model, graph, train_q, val_q):
        for split in (train_q, val_q):
            for q in split.values():
                q.x, q.product = q.x.to(device), q.product.to(device)
        return model.to(device), graph.to(device), train_q, val_q

    return move


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
def test_cuda_training_with_autocast_learns_and_loads_on_cpu(tmp_path: Path, precision: str) -> None:
    cuda = torch.device("cuda")
    model, graph, train_q, val_q = setup()
    model, graph = model.to(cuda), graph.to(cuda)
    for split in (train_q, val_q):
        for q in split.values():
            q.x, q.product = q.x.to(cuda), q.product.to(cuda)
    result = train(model, graph, train_q, val_q, CONFIG, tmp_path, precision=precision)
    losses = [h["loss"] for h in result.history]
    assert losses[-1] < losses[0] and all(map(math.isfinite, losses))
    assert next(model.parameters()).device.type == "cuda"
    state = load_checkpoint(tmp_path / LAST)  # written from CUDA, read onto the CPU
    on_cpu, cpu_graph, _, _ = setup()
    on_cpu.load_state_dict(state["model"])
    on_cpu.eval(), model.eval()
    with torch.no_grad():
        assert torch.allclose(on_cpu.products(cpu_graph), model.products(graph).float().cpu(), atol=1e-3)


def wide_graph(products: int = 3000, scenes: int = 1500, dim: int = 32):
    """Big enough that the CPU sums messages in parallel (a tiny graph sums them in order)."""
    g = torch.Generator().manual_seed(5)

    def ids(high: int, count: int) -> torch.Tensor:
        return torch.randint(0, high, (count,), generator=g)

    data = HeteroData()
    data["product"].x = torch.randn(products, dim, generator=g)
    data["product"].category = torch.arange(products) % 4
    data["scene"].x = torch.randn(scenes, dim, generator=g)
    contains = torch.stack([ids(scenes, 20_000), ids(products, 20_000)])
    data["scene", "contains", "product"].edge_index = contains
    data["product", "rev_contains", "scene"].edge_index = contains.flip(0)
    similar = torch.stack([ids(products, 60_000), ids(products, 60_000)])
    data["product", "similar", "product"].edge_index = similar
    train = {"stl": Queries(torch.randn(2000, dim, generator=g), ids(products, 2000))}
    val = {"stl": Queries(torch.randn(300, dim, generator=g), ids(products, 300))}
    return data, train, val, dim


@pytest.mark.parametrize("kind", ["gat", "sage"])
def test_the_same_data_and_config_train_the_same_model(kind: str, tmp_path: Path) -> None:
    """Two threads sum messages in a varying order unless the kernels are deterministic; the
    last bits of a loss then differ, and over many epochs so do the models."""
    graph, train_q, val_q, dim = wide_graph()
    config = TrainConfig(kind=kind, hidden=32, heads=4, out_dim=16, epochs=3, batch_size=500, max_steps=4)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        runs = []
        for attempt in range(2):
            torch.manual_seed(config.seed)
            model = build_model(schema(graph), dim, config)
            runs.append(train(model, graph, train_q, val_q, config, tmp_path / str(attempt)).history)
    finally:
        torch.set_num_threads(threads)
    assert runs[0] == runs[1]
    assert not torch.are_deterministic_algorithms_enabled()  # switched back after training
