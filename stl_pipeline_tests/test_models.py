import math

import pytest
import torch
from torch_geometric.data import HeteroData

from stl_pipeline.models.config import TrainConfig
from stl_pipeline.models.context import CatalogueRead, ContextAttention, worn_with
from stl_pipeline.models.dropout import Dropout, dropout
from stl_pipeline.models.encoders import HeteroEncoder
from stl_pipeline.models.heads import Projection, TripletHead
from stl_pipeline.models.looks import look_clusters, look_loss
from stl_pipeline.models.losses import (
    LOSSES,
    Negatives,
    bpr,
    candidate_scores,
    info_nce,
    sample_negatives,
    sampling_log_q,
    triplet,
)
from stl_pipeline.models.queries import Queries
from stl_pipeline.models.record import build_model, schema
from stl_pipeline.models.shapes import ROWS, take
from stl_pipeline.registry import MODELS


def tiny_graph(seed: int = 0) -> HeteroData:
    g = torch.Generator().manual_seed(seed)
    data = HeteroData()
    data["product"].x = torch.randn(12, 6, generator=g)
    data["product"].category = torch.arange(12) % 3
    data["scene"].x = torch.randn(5, 4, generator=g)
    data["category"].x = torch.eye(3)
    contains = torch.tensor([[0, 0, 1, 2, 3, 4], [0, 1, 2, 3, 4, 5]])
    data["scene", "contains", "product"].edge_index = contains
    data["product", "rev_contains", "scene"].edge_index = contains.flip(0)
    data["product", "similar", "product"].edge_index = torch.randint(0, 12, (2, 30), generator=g)
    data["product", "belongs_to", "category"].edge_index = torch.stack(
        [torch.arange(12), torch.arange(12) % 3]
    )
    return data


@pytest.mark.parametrize("kind", ["gat", "sage"])
def test_encoders_keep_node_counts_and_width(kind: str) -> None:
    data = tiny_graph()
    dims = {t: data[t].x.shape[1] for t in data.node_types}
    encoder = HeteroEncoder(dims, list(data.edge_types), kind, hidden=16, layers=2, heads=4)
    out = encoder(data.x_dict, data.edge_index_dict)
    assert {t: tuple(v.shape) for t, v in out.items()} == {
        "product": (12, 16),
        "scene": (5, 16),
        "category": (3, 16),
    }
    assert all(torch.isfinite(v).all() for v in out.values())


def test_gat_needs_hidden_divisible_by_heads() -> None:
    with pytest.raises(ValueError, match="multiple of heads"):
        HeteroEncoder({"product": 4}, [], "gat", hidden=10, heads=4)
    with pytest.raises(ValueError, match="unknown encoder"):
        HeteroEncoder({"product": 4}, [("product", "similar", "product")], "gcn")  # type: ignore[arg-type]


def test_heads_project_to_unit_vectors() -> None:
    x = torch.randn(8, 32)
    head = TripletHead(32, out_dim=128).eval()
    assert head(x).shape == (8, 128) and torch.allclose(head(x).norm(dim=1), torch.ones(8), atol=1e-5)
    assert torch.allclose(Projection(32, 16)(x).norm(dim=1), torch.ones(8), atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cpu_dropout_drops_each_element_independently_at_its_rate(dtype: torch.dtype) -> None:
    torch.manual_seed(0)
    x = torch.ones(1001, 999, dtype=dtype, requires_grad=True)  # not a multiple of four draws
    out = dropout(x, 0.3)
    kept = out.detach() != 0
    n = kept.numel()
    tolerance = 5 * math.sqrt(0.3 * 0.7 / n)
    assert abs(1 - kept.float().mean().item() - 0.3) < tolerance
    # The four draws of one random word are independent: neighbours are kept together at 0.49.
    both = (kept.flatten()[:-1] & kept.flatten()[1:]).float().mean().item()
    assert abs(both - 0.49) < 5 * math.sqrt(0.49 * 0.51 / n)
    assert torch.allclose(
        out.detach()[kept].float(), torch.tensor(1 / 0.7), rtol=1e-2 if dtype != torch.float32 else 1e-4
    )
    out.float().sum().backward()
    assert torch.equal(x.grad, out.detach())  # the gradient is the mask, scaled alike
    torch.manual_seed(0)
    assert torch.equal(dropout(x.detach(), 0.3), out.detach())  # the seed decides the mask


@pytest.mark.parametrize("shape", [(7,), (5, 3), (2, 3, 4)])
def test_take_gathers_rows_as_indexing_does_with_the_same_gradient(shape: tuple[int, ...]) -> None:
    """``take`` is ``table[index]`` by another kernel: the same rows for an index of any shape,
    and the same gradient, repeated rows summed."""
    generator = torch.Generator().manual_seed(0)
    table = torch.randn(6, 4, generator=generator, requires_grad=True)
    index = torch.randint(0, 6, shape, generator=generator)
    index.view(-1)[:2] = 1  # a row taken twice at least
    weights = torch.randn(*shape, 4, generator=generator)
    (expected_grad,) = torch.autograd.grad((table[index] * weights).sum(), table)
    taken = take(table, index)
    assert taken.shape == (*shape, 4) and torch.equal(taken, table[index])
    (grad,) = torch.autograd.grad((taken * weights).sum(), table)
    assert torch.allclose(grad, expected_grad, atol=1e-6) and grad[1].abs().sum() > 0


def test_dropout_off_at_zero_or_in_eval_all_at_one_and_refuses_a_bad_rate() -> None:
    x = torch.randn(5, 7)
    assert dropout(x, 0.0) is x and dropout(x, 0.5, training=False) is x
    assert torch.equal(dropout(x, 1.0), torch.zeros_like(x))
    with pytest.raises(ValueError, match="between 0 and 1"):
        dropout(x, 1.5)
    module = Dropout(0.5).eval()
    assert module(x) is x and "p=0.5" in repr(module)


def test_losses_match_hand_computed_values() -> None:
    products = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])
    queries = torch.tensor([[1.0, 0.0]])
    # The first negative is the positive itself, so it is masked.
    positives, negatives = torch.tensor([0]), Negatives(torch.tensor([0, 1]), torch.tensor([[2]]))
    expected = -torch.log(
        torch.exp(torch.tensor(1.0)) / (torch.exp(torch.tensor(1.0)) + 1 + torch.exp(torch.tensor(0.6)))
    )
    assert torch.isclose(info_nce(queries, products, positives, negatives, temperature=1.0), expected)
    assert torch.isclose(triplet(queries, products, positives, negatives, margin=0.5), torch.tensor(0.1))
    bpr_expected = (
        -(
            torch.nn.functional.logsigmoid(torch.tensor(10.0))
            + torch.nn.functional.logsigmoid(torch.tensor(4.0))
        )
        / 2
    )
    assert torch.isclose(bpr(queries, products, positives, negatives), bpr_expected)
    # The correction takes log q off each candidate's logit, the positive's included.
    log_q = torch.tensor([0.5, 2.0, -1.0])
    corrected = -torch.log(
        torch.exp(torch.tensor(1.0 - 0.5))
        / (torch.exp(torch.tensor(1.0 - 0.5)) + torch.exp(torch.tensor(-2.0)) + torch.exp(torch.tensor(1.6)))
    )
    assert torch.isclose(
        info_nce(queries, products, positives, negatives, temperature=1.0, log_q=log_q), corrected
    )
    # The same candidates, all shared or all a query's own, give the same losses.
    for split in (
        Negatives(torch.tensor([0, 1, 2]), torch.zeros(1, 0, dtype=torch.long)),
        Negatives(torch.zeros(0, dtype=torch.long), torch.tensor([[0, 1, 2]])),
    ):
        assert torch.isclose(info_nce(queries, products, positives, split, temperature=1.0), expected)
        assert torch.isclose(info_nce(queries, products, positives, split, 1.0, log_q), corrected)
        assert torch.isclose(triplet(queries, products, positives, split, margin=0.5), torch.tensor(0.1))
        assert torch.isclose(bpr(queries, products, positives, split), bpr_expected)


def test_sampling_log_q_counts_how_often_each_product_is_offered() -> None:
    category = torch.tensor([0, 0, 0, 0, 1, 1])
    positives = torch.tensor([0, 0, 1, 4])  # product 0 is half of the queries
    log_q = sampling_log_q(positives, category, batch=2, in_batch=True, same_category=2)
    in_batch = torch.tensor([1 - 0.5**2, 1 - 0.75**2, 0, 0, 1 - 0.75**2, 0], dtype=torch.float64)
    uniform = torch.tensor([2 / 4] * 4 + [2 / 2] * 2, dtype=torch.float64)
    assert torch.allclose(log_q, (in_batch + uniform).log().float())
    assert log_q[0] > log_q[1] > log_q[2]  # popular products are offered most
    only_uniform = sampling_log_q(positives, category, batch=2, in_batch=False, same_category=2)
    assert torch.allclose(only_uniform, uniform.log().float())


def test_negatives_come_from_the_batch_and_the_positive_category() -> None:
    category = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2, 2])
    positives = torch.tensor([0, 3, 5, 3])
    negatives = sample_negatives(positives, category, in_batch=True, same_category=20)
    assert negatives.drawn.tolist() == [0, 3, 5]  # each distinct positive once
    assert len(negatives.shared) == ROWS and negatives.padding == ROWS - 3  # fillers: shapes.py
    assert negatives.own.shape == (4, 20)
    assert (category[negatives.own] == category[positives][:, None]).all()
    assert set(negatives.own[1].tolist()) == {3, 4}  # every product of category 1 can be drawn
    with pytest.raises(ValueError, match="no negatives"):
        sample_negatives(positives, category, in_batch=False, same_category=0)


def test_shared_negatives_are_capped_at_a_random_subset() -> None:
    category = torch.zeros(100, dtype=torch.long)
    positives = torch.arange(100).repeat(3)
    capped = sample_negatives(positives, category, same_category=0, max_shared=10)
    assert capped.drawn.shape == (10,) and len(set(capped.drawn.tolist())) == 10
    again = sample_negatives(positives, category, same_category=0, max_shared=10)
    assert capped.drawn.tolist() != again.drawn.tolist()  # drawn afresh each step
    assert len(sample_negatives(positives, category, same_category=0, max_shared=0).drawn) == 100
    # The correction counts a product as offered with the share of distinct positives kept.
    log_q = sampling_log_q(
        torch.arange(100), category, batch=100, in_batch=True, same_category=0, max_shared=10
    )
    full = sampling_log_q(torch.arange(100), category, batch=100, in_batch=True, same_category=0)
    assert torch.allclose(log_q, full + torch.log(torch.tensor(10 / float(full.exp().sum()))), atol=1e-5)


@pytest.mark.parametrize("loss", sorted(LOSSES))
def test_filler_negatives_change_no_loss(loss: str) -> None:
    """Shared negatives are padded to a bucket of rows for the CPU's kernel cache; the
    fillers are offered to no query, so each loss is what it is without them."""
    g = torch.Generator().manual_seed(0)
    products = torch.nn.functional.normalize(torch.randn(50, 8, generator=g), dim=1)
    queries = torch.nn.functional.normalize(torch.randn(6, 8, generator=g), dim=1)
    positives = torch.randint(1, 50, (6,), generator=g)
    own = torch.randint(0, 50, (6, 4), generator=g)
    bare = Negatives(positives.unique(), own)
    padded = Negatives(torch.cat([bare.shared, torch.zeros(5, dtype=torch.long)]), own, padding=5)
    assert torch.equal(padded.drawn, bare.shared)
    found = [LOSSES[loss](queries, products, positives, n) for n in (bare, padded)]
    assert torch.allclose(found[0], found[1])


def test_scores_of_shared_and_own_negatives_are_the_dot_products() -> None:
    g = torch.Generator().manual_seed(0)
    products = torch.nn.functional.normalize(torch.randn(50, 8, generator=g), dim=1)
    queries = torch.nn.functional.normalize(torch.randn(6, 8, generator=g), dim=1)
    positives = torch.randint(0, 50, (6,), generator=g)
    negatives = Negatives(positives.unique(), torch.randint(0, 50, (6, 4), generator=g))
    positive, ((shared, shared_valid), (own, own_valid)) = candidate_scores(
        queries, products, positives, negatives
    )
    assert torch.allclose(positive, (queries * products[positives]).sum(1))
    assert torch.allclose(shared, queries @ products[negatives.shared].T)
    assert torch.allclose(own, torch.einsum("bd,bkd->bk", queries, products[negatives.own]), atol=1e-6)
    assert torch.equal(shared_valid, negatives.shared[None, :] != positives[:, None])
    assert shared_valid.sum() == 6 * (len(negatives.shared) - 1)  # each query's own positive is masked
    assert torch.equal(own_valid, negatives.own != positives[:, None])


@pytest.mark.parametrize("loss_name", sorted(LOSSES))
@pytest.mark.parametrize("kind", ["gat", "sage", "triplet"])
def test_a_few_steps_lower_the_loss(kind: str, loss_name: str) -> None:
    torch.manual_seed(0)
    data = tiny_graph()
    config = TrainConfig(kind=kind, hidden=16, heads=4, dropout=0.0, out_dim=8)
    model = build_model(schema(data), 6, config)
    queries = data["product"].x[:6] + 0.1 * torch.randn(6, 6)  # a noisy view of each positive
    positives = torch.arange(6)
    negatives = sample_negatives(positives, data["product"].category, same_category=4)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(30):
        loss = LOSSES[loss_name](model.queries(queries, "stl"), model.products(data), positives, negatives)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


def test_the_two_tower_baseline_reads_frozen_vectors_through_its_own_towers() -> None:
    graph = tiny_graph()
    visual_dim = graph["scene"].x.shape[1]
    torch.manual_seed(0)
    config = TrainConfig(kind="two_tower", hidden=16, out_dim=8)
    model = build_model(schema(graph), visual_dim, config).eval()
    x = torch.randn(5, visual_dim)
    stl, ctl = model.queries(x, "stl"), model.queries(x, "ctl")
    assert stl.shape == (5, 8) and not torch.allclose(stl, ctl)  # one query tower per task
    assert torch.allclose(stl.norm(dim=1), torch.ones(5))
    products = model.products(graph)
    rewired = graph.clone()
    for edge_type in rewired.edge_types:  # no message passing: the graph's edges are unread
        rewired[edge_type].edge_index = rewired[edge_type].edge_index[:, :0]
    assert torch.equal(model.products(rewired), products)
    expected = model.product_tower(graph["product"].x[:, :visual_dim])
    assert torch.equal(products, expected)


def test_context_attention_weighs_tokens_by_the_category_it_completes() -> None:
    torch.manual_seed(0)
    attention = ContextAttention(dim=6, categories=3, out_dim=4, hidden=8)
    tokens = torch.randn(2, 3, 6)
    tokens[1, 2] = 0  # padding
    weights = attention.weights(tokens.expand(3, 2, 3, 6)[:, 0], torch.tensor([0, 1, 2]))
    assert torch.allclose(weights.sum(dim=1), torch.ones(3))
    assert not torch.allclose(weights[0], weights[1])  # another category, another attention
    padded = attention.weights(tokens, torch.tensor([0, 0]))
    assert padded[1, 2] == 0 and torch.isclose(padded[1].sum(), torch.tensor(1.0))
    empty = attention(torch.zeros(1, 3, 6), torch.tensor([0]), torch.zeros(0, 4), HeteroData())
    assert torch.equal(empty, torch.zeros(1, 4))  # nothing to attend over: nothing added


def test_the_lead_tokens_are_read_apart_from_the_garments() -> None:
    """With masked+items context the first token is the masked scene, no product to read:
    it is always added, and the attention weighs the garments after it."""
    torch.manual_seed(0)
    attention = ContextAttention(dim=6, categories=3, out_dim=4, hidden=8, lead=1)
    tokens = torch.randn(2, 3, 6)
    tokens[1, 1:] = 0  # the second query has its scene only
    out = attention(tokens, torch.tensor([0, 1]), torch.zeros(0, 4), HeteroData())
    with torch.no_grad():
        assert torch.allclose(out[1], attention.lead_values(tokens[1, 0]))
        w = attention.weights(tokens[:, 1:], torch.tensor([0, 1]))[0]
        garments = w[0] * attention.values(tokens[0, 1]) + w[1] * attention.values(tokens[0, 2])
    assert torch.allclose(out[0], attention.lead_values(tokens[0, 0]) + garments, atol=1e-6)


def test_a_context_model_reads_context_tokens_for_complete_the_look_only() -> None:
    graph = tiny_graph()
    torch.manual_seed(0)
    config = TrainConfig(kind="gat", hidden=16, out_dim=8, context=True)
    model = build_model(schema(graph), 6, config).eval()
    x, product = torch.randn(4, 6), torch.arange(4)
    category = graph["product"].category[product]
    tokens = torch.randn(4, 2, 6)
    products = model.products(graph)
    ctl = model.encode(Queries(x, product, category, tokens), "ctl", products, graph)
    assert torch.allclose(ctl.norm(dim=1), torch.ones(4))
    other = model.encode(Queries(x, product, category, tokens.flip(0)), "ctl", products, graph)
    assert not torch.allclose(ctl, other)  # the tokens change the query
    stl = model.encode(Queries(x, product), "stl", products, graph)
    assert torch.equal(stl, model.queries(x, "stl"))
    with pytest.raises(ValueError, match="ctl_scene_context"):
        model.encode(Queries(x, product), "ctl", products, graph)


def test_worn_with_is_the_mean_of_the_products_a_product_shares_scenes_with() -> None:
    products = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [5.0, 5.0]])
    graph = HeteroData()
    graph["product", "co_occurs", "product"].edge_index = torch.tensor([[0, 0, 1, 2], [1, 2, 0, 0]])
    expected = torch.tensor([[0.5, 1.0], [1.0, 0.0], [1.0, 0.0], [0.0, 0.0]])  # 3 shares no scene
    assert torch.equal(worn_with(products, graph), expected)


def test_worn_with_by_category_is_the_mean_of_the_partners_in_that_category() -> None:
    products = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [5.0, 5.0]])
    graph = HeteroData()
    graph["product"].category = torch.tensor([0, 1, 1, 0])
    graph["product", "co_occurs", "product"].edge_index = torch.tensor([[0, 0, 0, 1], [1, 2, 3, 0]])
    worn = worn_with(products, graph, categories=2)
    assert worn.shape == (8, 2)
    everyone = products[1:].mean(0)  # product 0's partners, shrunk toward with one pseudo-partner
    assert torch.allclose(worn[0 * 2 + 0], (products[3] + everyone) / 2)  # its partner in category 0
    assert torch.allclose(worn[0 * 2 + 1], (products[1] + products[2] + everyone) / 3)
    assert torch.allclose(worn[1 * 2 + 1], products[0])  # never seen with category 1: all its partners
    assert torch.equal(worn[2 * 2 : 4 * 2], torch.zeros(4, 2))  # no partners at all


def test_catalogue_read_returns_what_the_recognized_product_is_worn_with() -> None:
    products = torch.eye(4)
    worn = torch.arange(8.0).reshape(4, 2)
    read = CatalogueRead(torch.nn.Identity(), k=3, temperature=1000.0)
    tokens = torch.tensor([[0.1, 0.9, 0.05, 0.0], [0.0, 0.0, 0.2, 0.1]])  # most like products 1 and 2
    assert torch.allclose(read(tokens, products, worn), worn[[1, 2]])
    read.temperature.data.fill_(0.0)  # no preference: the mean over the k nearest
    assert torch.allclose(read(tokens[:1], products, worn), worn[[1, 0, 2]].mean(0, keepdim=True))
    assert read(tokens[:0], products, worn).shape == (0, 2)
    by_category = torch.arange(16.0).reshape(8, 2)  # rows product * 2 + category
    read.temperature.data.fill_(1000.0)
    assert torch.allclose(read(tokens, products, by_category, torch.tensor([1, 0])), by_category[[3, 4]])


def test_catalogue_read_gives_the_dense_searchs_values_and_gradients(monkeypatch) -> None:
    """The search runs without a gradient; the k best scores, computed again, must carry
    exactly the gradient that a top-k over every product's score carries, block by block."""
    monkeypatch.setattr(CatalogueRead, "BLOCK", 7)  # 20 tokens: three blocks
    torch.manual_seed(0)
    products = torch.randn(50, 8, requires_grad=True)
    worn = torch.randn(50 * 3, 8, requires_grad=True)
    tokens = torch.randn(20, 8, requires_grad=True)
    category = torch.randint(0, 3, (20,))
    read = CatalogueRead(torch.nn.Linear(8, 8), k=5, temperature=3.0, by_category=True)

    def dense() -> torch.Tensor:
        match, nearest = (read.recognize(tokens) @ products.T).topk(5, dim=1)
        weights = torch.softmax(read.temperature * match, dim=1)
        return (weights[..., None] * worn[nearest * 3 + category[:, None]]).sum(1)

    outputs, grads = [], []
    for forward in (dense, lambda: read(tokens, products, worn, category)):
        out = forward()
        out.square().sum().backward()
        parameters = (tokens, products, worn, read.temperature, *read.recognize.parameters())
        grads.append([p.grad.clone() for p in parameters])
        outputs.append(out.detach())
        for p in parameters:
            p.grad = None
    assert torch.allclose(outputs[0], outputs[1], atol=1e-6)
    for expected, found in zip(*grads, strict=True):
        assert torch.allclose(expected, found, atol=1e-5)


@pytest.mark.parametrize("values", ["catalogue", "catalogue_category"])
def test_a_catalogue_model_reads_the_graphs_co_occurrences(values: str) -> None:
    graph = tiny_graph()
    config = TrainConfig(kind="gat", hidden=16, out_dim=8, context=True, context_values=values)
    with pytest.raises(ValueError, match="co_occurs"):
        build_model(schema(graph), 6, config)
    co_occurs = ("product", "co_occurs", "product")
    graph[co_occurs].edge_index = torch.tensor([[0, 1, 2, 3], [1, 0, 3, 2]])
    torch.manual_seed(0)
    model = build_model(schema(graph), 6, config).eval()
    x, product = torch.randn(4, 6), torch.arange(4)
    queries = Queries(x, product, graph["product"].category[product], torch.randn(4, 2, 6))
    with torch.no_grad():
        products = model.products(graph)
        before = model.encode(queries, "ctl", products, graph)
        rewired = graph.clone()
        rewired[co_occurs].edge_index = torch.tensor([[0, 2, 1, 3], [2, 0, 3, 1]])
        after = model.encode(queries, "ctl", products, rewired)
    assert not torch.allclose(before, after)  # other partners, another query


def test_gat_attention_reads_edge_features_when_asked() -> None:
    graph = tiny_graph()
    similar = ("product", "similar", "product")
    graph[similar].edge_attr = torch.rand(graph[similar].edge_index.shape[1], 1)
    torch.manual_seed(0)
    plain = build_model(schema(graph), 6, TrainConfig(kind="gat", hidden=16, out_dim=8)).eval()
    torch.manual_seed(0)
    reading = build_model(
        schema(graph), 6, TrainConfig(kind="gat", hidden=16, out_dim=8, edge_features=True)
    ).eval()
    before, plain_before = reading.products(graph), plain.products(graph)
    graph[similar].edge_attr = graph[similar].edge_attr * 50
    assert not torch.allclose(reading.products(graph), before)
    assert torch.equal(plain.products(graph), plain_before)  # edge features unread
    with pytest.raises(ValueError, match="sage layers read no edge features"):
        build_model(schema(graph), 6, TrainConfig(kind="sage", hidden=16, out_dim=8, edge_features=True))


def test_the_visual_skip_adds_a_tower_over_the_frozen_vector() -> None:
    graph = tiny_graph()
    torch.manual_seed(0)
    model = build_model(schema(graph), 4, TrainConfig(kind="sage", hidden=16, out_dim=8, visual_skip=True))
    model.eval()

    def graph_only() -> torch.Tensor:
        return model.product_out(model.encoder(graph.x_dict, graph.edge_index_dict)["product"])

    with torch.no_grad():
        products = model.products(graph)
        assert torch.allclose(products.norm(dim=1), torch.ones(12))
        assert not torch.allclose(products, graph_only())  # the tower adds its part
        model.visual.net[-1].weight.zero_()
        model.visual.net[-1].bias.zero_()
        assert torch.allclose(model.products(graph), graph_only(), atol=1e-6)  # and only adds


def test_looks_cluster_products_within_their_category() -> None:
    torch.manual_seed(0)
    centres = torch.eye(4) * 10  # two looks in each of two categories
    vectors = torch.cat([centres[i] + torch.randn(5, 4) * 0.1 for i in range(4)])
    category = torch.tensor([0] * 10 + [1] * 10)
    looks = look_clusters(vectors, category, per_category=2)
    assert len(set(looks[:10].tolist()) & set(looks[10:].tolist())) == 0  # ids are per category
    for start in range(0, 20, 5):  # each blob is one look, each look one blob
        assert len(set(looks[start : start + 5].tolist())) == 1
    assert len(set(looks.tolist())) == 4
    assert torch.equal(look_clusters(vectors, category, per_category=9)[:10].unique(), torch.arange(9))


def test_look_loss_ranks_the_positives_look_among_its_categorys_only() -> None:
    products = torch.nn.functional.normalize(
        torch.tensor([[1.0, 0, 0], [1, 0.1, 0], [0, 1, 0], [0, 0, 1]]), dim=1
    )
    looks, category = torch.tensor([0, 0, 1, 2]), torch.tensor([0, 0, 0, 1])
    positive = torch.tensor([0])
    right = look_loss(torch.tensor([[1.0, 0, 0]]), products, positive, looks, category, 0.1)
    wrong = look_loss(torch.tensor([[0.0, 1, 0]]), products, positive, looks, category, 0.1)
    assert right < 0.01 < wrong
    # look 2 is another category's: a query pointing at it is not penalized by it
    elsewhere = look_loss(torch.tensor([[0.6, 0, 0.8]]), products, positive, looks, category, 0.1)
    assert elsewhere < 0.01


@pytest.mark.parametrize("spec", MODELS, ids=lambda spec: spec.method)
def test_each_registered_model_trains_under_cpu_bf16_autocast(spec) -> None:
    """With its registry knobs (the context read, the visual tower), each model's forward and
    backward run under CPU bf16 autocast, give finite gradients, and vectors that point where
    fp32's do: bf16 is the training precision on CPUs that have it (device.py)."""
    graph = tiny_graph()
    graph["product", "co_occurs", "product"].edge_index = torch.tensor([[0, 1, 2, 3], [1, 0, 3, 2]])
    config = TrainConfig(kind=spec.kind, **(dict(spec.defaults) | {"hidden": 16, "out_dim": 8}))
    torch.manual_seed(0)
    model = build_model(schema(graph), 6, config).eval()  # no dropout: the two passes compare
    product = torch.arange(8)
    queries = Queries(torch.randn(8, 6), product, graph["product"].category[product], torch.randn(8, 3, 6))
    with torch.no_grad():
        full = model.encode(queries, "ctl", model.products(graph), graph)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        products = model.products(graph)
        reduced = model.encode(queries, "ctl", products, graph)
    loss = -(reduced.float() * products.float()[product]).sum(1).mean()
    loss.backward()
    assert all(p.grad is None or torch.isfinite(p.grad).all() for p in model.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
    assert torch.nn.functional.cosine_similarity(full, reduced.float().detach()).min() > 0.95
