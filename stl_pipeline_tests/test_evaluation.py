import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from stl_pipeline.evaluation.embedding import (
    embedding_quality,
    graph_density,
    list_quality,
    mean_pairwise_cosine,
)
from stl_pipeline.evaluation.retrieval import (
    RetrievalTask,
    auc_per_query,
    per_query,
    sample_auc_negatives,
    summary,
)
from stl_pipeline.metrics import bootstrap
from stl_pipeline_tests.test_models import tiny_graph

# Four products in two categories; three queries whose true products are 0, 2 and 3.
CATEGORY = torch.tensor([0, 0, 1, 1])
SCORES = torch.tensor(
    [
        [0.2, 0.9, 0.8, 0.1],  # true 0: rank 2 in the catalogue, 1 within category 0
        [0.1, 0.2, 0.9, 0.3],  # true 2: rank 0
        [0.9, 0.1, 0.8, 0.7],  # true 3: rank 2 in the catalogue, 1 within category 1
    ]
)
TASK = RetrievalTask(torch.tensor([0, 2, 3]), CATEGORY, torch.tensor([[1, 1], [3, 3], [2, 2]]))


def test_metrics_against_hand_computed_values() -> None:
    catalogue = summary(per_query(SCORES, TASK, "catalogue"))
    assert catalogue["HR@1"] == pytest.approx(1 / 3)
    assert catalogue["HR@5"] == pytest.approx(1.0)
    assert catalogue["MRR"] == pytest.approx((1 / 3 + 1 + 1 / 3) / 3)
    assert catalogue["NDCG@10"] == pytest.approx((1 / np.log2(4) + 1 + 1 / np.log2(4)) / 3)
    same = summary(per_query(SCORES, TASK, "same_category"))
    assert same["HR@1"] == pytest.approx(1 / 3) and same["MRR"] == pytest.approx((1 / 2 + 1 + 1 / 2) / 3)
    assert same["NDCG@10"] == pytest.approx((1 / np.log2(3) + 1 + 1 / np.log2(3)) / 3)
    # AUC per query against its negatives, as scikit-learn computes it: 0, 1, 0.
    assert same["AUC"] == pytest.approx(np.mean([roc_auc_score([1, 0, 0], [0.2, 0.9, 0.9]), 1.0, 0.0]))


def test_auc_is_scikit_learns_per_query_with_ties_and_missing_negatives() -> None:
    generator = torch.Generator().manual_seed(0)
    negative = torch.randint(0, 5, (200, 12), generator=generator).float()  # many ties
    positive = torch.randint(0, 5, (200,), generator=generator).float()
    valid = torch.rand(200, 12, generator=generator) > 0.3
    valid[:7] = False  # queries without negatives do not count
    expected = np.mean(
        [
            roc_auc_score(np.r_[1, np.zeros(ok.sum())], np.r_[pos, neg[ok]])
            for pos, neg, ok in zip(positive.numpy(), negative.numpy(), valid.numpy(), strict=True)
            if ok.any()
        ]
    )
    per_query = auc_per_query(positive, negative, valid).numpy()
    assert np.isnan(per_query[:7]).all() and np.nanmean(per_query) == pytest.approx(expected)
    assert auc_per_query(positive, negative, torch.zeros_like(valid)).isnan().all()


def test_hit_rates_and_ndcg_equal_pygs_link_prediction_metrics() -> None:
    from torch_geometric.metrics import LinkPredHitRatio, LinkPredNDCG

    generator = torch.Generator().manual_seed(1)
    scores = torch.randn(300, 80, generator=generator)
    truth = torch.randint(0, 80, (300,), generator=generator)
    task = RetrievalTask(truth, torch.zeros(80, dtype=torch.long), torch.zeros((300, 1), dtype=torch.long))
    found = summary(per_query(scores, task, "catalogue"))
    top, label_index = scores.topk(50, dim=1).indices, torch.stack([torch.arange(300), truth])
    pyg = {"HR@10": LinkPredHitRatio(10), "HR@50": LinkPredHitRatio(50), "NDCG@10": LinkPredNDCG(10)}
    for name, metric in pyg.items():
        metric.update(top[:, : metric.k], label_index)
        assert found[name] == pytest.approx(float(metric.compute()), abs=1e-6), name
        assert found[f"{name}_low"] < found[name] < found[f"{name}_high"]


def test_bootstrap_intervals_cover_the_mean_and_narrow_with_more_queries() -> None:
    rng = np.random.default_rng(0)
    few, many = ((rng.random(n) < 0.3).astype(float) for n in (50, 2000))
    low, high = bootstrap(few)
    assert low < few.mean() < high
    wide, narrow = high - low, np.subtract(*bootstrap(many)[::-1])
    # The normal approximation of a proportion's 95% interval: 3.92 standard errors wide.
    assert narrow == pytest.approx(3.92 * np.sqrt(0.3 * 0.7 / 2000), rel=0.15) and narrow < wide / 4
    assert bootstrap(np.ones(40)) == (1.0, 1.0)
    assert np.isnan(bootstrap(np.array([np.nan, np.nan]))).all()


def test_unknown_pool_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown candidate pool"):
        summary(per_query(SCORES, TASK, "friends"))


def test_auc_negatives_share_the_category_and_avoid_the_scene() -> None:
    category = torch.tensor([0, 0, 0, 0, 1, 1])
    negatives = sample_auc_negatives(torch.tensor([0, 4]), category, [{0, 1}, {4, 5}], count=10)
    assert set(negatives[0].tolist()) <= {2, 3}
    assert (negatives[1] == -1).all()  # category 1 has no product outside the scene
    scores = torch.tensor([[0.9, 0.0, 0.1, 0.2, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0, 0.1, 0.5]])
    task = RetrievalTask(torch.tensor([0, 4]), category, negatives)
    assert summary(per_query(scores, task, "catalogue"))["AUC"] == 1.0  # only the first query has negatives


def test_mean_pairwise_cosine_by_hand_and_at_collapse() -> None:
    vectors = torch.tensor([[1.0, 0.0], [0.0, 2.0], [3.0, 3.0]])
    # pairs: (1,2) 0, (1,3) 1/sqrt2, (2,3) 1/sqrt2
    assert mean_pairwise_cosine(vectors) == pytest.approx(2 / 2**0.5 / 3)
    collapsed = torch.ones(50, 4) + 1e-4 * torch.randn(50, 4)
    assert mean_pairwise_cosine(collapsed) > 0.999


def test_cluster_quality_tells_separated_categories_from_noise() -> None:
    g = torch.Generator().manual_seed(0)
    category = torch.arange(60) % 3
    centres = torch.eye(8)[:3] * 5
    separated = centres[category] + 0.3 * torch.randn(60, 8, generator=g)
    noise = torch.randn(60, 8, generator=g)
    good, bad = embedding_quality(separated, category), embedding_quality(noise, category)
    assert good["silhouette_category"] > 0.5 > bad["silhouette_category"]
    assert good["davies_bouldin_category"] < bad["davies_bouldin_category"]
    assert good["silhouette_kmeans"] == pytest.approx(good["silhouette_category"], abs=0.05)


def test_list_coverage_and_diversity_by_hand() -> None:
    category = torch.tensor([0, 0, 1, 2, 3])
    scores = torch.tensor([[5.0, 4.0, 3.0, 0.0, 0.0], [5.0, 4.0, 0.0, 3.0, 0.0]])
    result = list_quality(scores, category, k=3)
    assert result["coverage@3"] == pytest.approx(4 / 5)  # products 0, 1, 2, 3
    # in each list 2 of the 6 ordered pairs share a category (products 0 and 1)
    assert result["diversity@3"] == pytest.approx(1 - 2 / 6)


def test_graph_density_counts_typed_pairs() -> None:
    data = tiny_graph()
    edges = sum(data[e].edge_index.shape[1] for e in data.edge_types)
    possible = sum(data[s].num_nodes * data[d].num_nodes for s, _, d in data.edge_types)
    assert graph_density(data) == pytest.approx(edges / possible)


def test_complete_the_look_rows_split_by_context_and_recovered_share() -> None:
    """CTL rows come for all queries, for those whose scene has other annotated garments and
    for those with the image only; the recovered share puts popularity at 0 and the oracle at 1."""
    import pandas as pd
    from torch_geometric.data import HeteroData

    from stl_pipeline.evaluation.report import RECOVERED, overall, popularity_scorer, report
    from stl_pipeline.models.queries import Queries

    graph = HeteroData()
    graph["product"].ids = [f"p{i}" for i in range(40)]
    graph["product"].category = torch.arange(40) % 2
    # Scene a holds two pairs, b to f one each: 2 annotated queries, 5 image-only ones.
    pairs = pd.DataFrame({"scene": list("aabcdef"), "product": [f"p{i}" for i in (0, 1, 2, 3, 4, 5, 6)]})
    truth = torch.arange(7)
    queries = Queries(torch.zeros(7, 4), truth, truth % 2)

    def oracle(task: str, q: Queries, rows: pd.DataFrame) -> torch.Tensor:
        return torch.nn.functional.one_hot(q.product, 40).float()

    def half(task: str, q: Queries, rows: pd.DataFrame) -> torch.Tensor:  # finds the image-only ones
        found = torch.tensor([s != "a" for s in rows["scene"]])
        hits = oracle(task, q, rows)
        return torch.where(found[:, None], hits, 1 - hits)  # the truth last in scene a

    popularity = popularity_scorer(torch.arange(40))  # the true products are the least popular
    methods = {"popularity": popularity, "half": half, "oracle": oracle}
    table = report(
        methods,
        graph,
        pairs,
        {"test": {"stl": queries, "ctl": queries}},
        {"test": {"stl": pairs, "ctl": pairs}},
    )
    rows = table[table["pool"] == "same_category"].set_index(["method", "task", "context"])
    assert set(rows.loc["half"].index) == {
        ("stl", "all"),
        ("ctl", "all"),
        ("ctl", "annotated"),
        ("ctl", "image_only"),
    }
    assert rows.loc[("half", "ctl", "annotated"), "queries"] == 2
    assert rows.loc[("half", "ctl", "image_only"), "queries"] == 5
    assert rows.loc[("half", "ctl", "image_only"), "HR@1"] == 1.0
    assert rows.loc[("half", "ctl", "annotated"), "HR@1"] == 0.0
    assert rows.loc[("oracle", "ctl", "annotated"), RECOVERED] == 1.0
    assert rows.loc[("popularity", "ctl", "image_only"), RECOVERED] == 0.0
    assert len(overall(table)) == 2 * 3 * 2  # two tasks, three methods, two pools


def test_the_lead_over_methods_without_a_graph_is_paired_per_query() -> None:
    """A model that finds every query the two-tower finds and a tenth more leads it beyond
    doubt once each query's luck cancels, although the two methods' own intervals overlap;
    the lead shown is over the method it leads least surely."""
    import pandas as pd
    from torch_geometric.data import HeteroData

    from stl_pipeline.evaluation.report import MARGIN, report
    from stl_pipeline.models.queries import Queries

    n = 400
    graph = HeteroData()
    graph["product"].ids = [f"p{i}" for i in range(n)]
    graph["product"].category = torch.zeros(n, dtype=torch.long)
    pairs = pd.DataFrame({"scene": [f"s{i}" for i in range(n)], "product": graph["product"].ids})
    truth = torch.arange(n)
    queries = Queries(torch.zeros(n, 4), truth, truth % 2)
    luck = torch.rand(n, generator=torch.Generator().manual_seed(0))

    def finds(share: float):
        def score(task: str, q: Queries, rows: pd.DataFrame) -> torch.Tensor:
            hits = torch.nn.functional.one_hot(q.product, n).float()
            return torch.where((luck < share)[:, None], hits, 1 - hits)  # a miss ranks the truth last

        return score

    methods = {"popularity": finds(0.1), "two_tower": finds(0.4), "gat": finds(0.5), "frozen_knn": finds(0.5)}
    table = report(methods, graph, pairs, {"test": {"stl": queries}}, {"test": {"stl": pairs}})
    rows = table[table["pool"] == "catalogue"].set_index("method")
    gat, two_tower = rows.loc["gat"], rows.loc["two_tower"]
    assert gat["HR@10_low"] < two_tower["HR@10_high"]  # separate intervals overlap
    assert gat["margin_over"] == "frozen_knn"  # level with it: the least sure lead
    assert gat[f"{MARGIN}"] == 0.0 and gat[f"{MARGIN}_low"] == gat[f"{MARGIN}_high"] == 0.0
    without_knn = report(
        {m: f for m, f in methods.items() if m != "frozen_knn"},
        graph,
        pairs,
        {"test": {"stl": queries}},
        {"test": {"stl": pairs}},
    )
    gat = without_knn[without_knn["pool"] == "catalogue"].set_index("method").loc["gat"]
    assert gat["margin_over"] == "two_tower"
    assert gat[MARGIN] == pytest.approx(float(((luck >= 0.4) & (luck < 0.5)).float().mean()))
    assert gat[f"{MARGIN}_low"] > 0
