from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from stl_pipeline.serving.index import build_index, load_index, save_index
from stl_pipeline.serving.recommend import (
    complementary_queries,
    complete_the_look,
    finds_partners,
    hit_rate,
    paired_lead,
    problems,
    rows,
    scene_context,
    scene_partners,
    top_complementary,
    top_similar,
)


def unit(rows: int, dim: int, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).normal(size=(rows, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def brute_force(database: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    scores = queries @ database.T
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(scores, order, axis=1), order


def test_exact_index_search_equals_brute_force_top_k() -> None:
    database, queries = unit(500, 32, 0), unit(40, 32, 1)
    index = build_index(database, [f"p{i}" for i in range(500)])
    scores, found = index.search(queries, 10)
    expected_scores, expected = brute_force(database, queries, 10)
    assert index.info["kind"] == "flat"
    assert np.array_equal(found, expected)
    assert np.allclose(scores, expected_scores, atol=1e-5)


def test_ivf_index_past_the_exact_limit_keeps_recall() -> None:
    rng = np.random.default_rng(2)
    centres = unit(20, 32, 3)
    database = centres[rng.integers(0, 20, 4000)] + 0.3 * unit(4000, 32, 4)  # clustered, like products
    database /= np.linalg.norm(database, axis=1, keepdims=True)
    queries = database[:200] + 0.05 * unit(200, 32, 5)
    index = build_index(database, [str(i) for i in range(4000)], exact_limit=1000, nprobe=16)
    _, found = index.search(queries, 10)
    _, expected = brute_force(database, queries / np.linalg.norm(queries, axis=1, keepdims=True), 10)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(found, expected, strict=True)])
    assert index.info["kind"].startswith("ivf") and recall > 0.9, recall


def test_index_round_trips_through_safetensors(tmp_path: Path) -> None:
    database = unit(100, 16, 6)
    index = build_index(database, [f"p{i}" for i in range(100)], exact_limit=50, nprobe=4)
    index.info["model"] = "gat"
    save_index(index, tmp_path / "index.safetensors")
    loaded = load_index(tmp_path / "index.safetensors")
    assert loaded.ids == index.ids and loaded.info == index.info
    assert loaded.index.nprobe == 4
    assert np.array_equal(loaded.search(database[:5], 3)[1], index.search(database[:5], 3)[1])


def test_ids_and_vectors_must_match() -> None:
    with pytest.raises(ValueError, match="3 vectors but 2 ids"):
        build_index(unit(3, 4, 0), ["a", "b"])


def catalogue(sizes: list[int], dim: int = 16, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    category = torch.cat([torch.full((n,), c) for c, n in enumerate(sizes)])
    vectors = torch.from_numpy(unit(len(category), dim, seed))
    return vectors, category, [f"p{i:04d}" for i in range(len(category))]


def test_similar_lists_equal_brute_force_within_the_category() -> None:
    vectors, category, _ = catalogue([40, 25, 3])
    _, positions = top_similar(vectors, category, 10)
    sims = (vectors @ vectors.T).numpy()
    for q in range(len(vectors)):
        own = [p for p in np.flatnonzero(category.numpy() == category[q].item()) if p != q]
        expected = sorted(own, key=lambda p: -sims[q, p])[:10]
        assert positions[q][positions[q] >= 0].tolist() == expected
    assert (positions[-1] >= 0).sum() == 2  # a category of 3: two others to recommend


def test_recommendation_tables_hold_their_invariants() -> None:
    vectors, category, ids = catalogue([60, 30, 20, 12, 3])
    names = [f"c{c}" for c in category.tolist()]
    category_of = dict(zip(ids, names, strict=True))
    k, cap = 10, 3
    similar = rows("similar", ids, *top_similar(vectors, category, k), ids, names)
    complementary = rows("complementary", ids, *top_complementary(vectors, category, k, cap), ids, names)
    scenes = torch.from_numpy(unit(8, 16, 9))
    wanted = torch.tensor([0, 1, 2, 3, 4, 0, 1, 2])
    looks = rows(
        "complete_the_look",
        [f"s{i}" for i in range(8)],
        *complete_the_look(scenes, vectors, category, wanted, k),
        ids,
        names,
    )
    table = pd.concat([similar, complementary, looks], ignore_index=True)
    assert set(problems(table, category_of, k).values()) == {0}
    assert (similar.groupby("query").size() == [k] * 122 + [2] * 3).all()
    assert (complementary.groupby("query").size() == k).all()
    assert complementary.groupby(["query", "category"]).size().max() == cap
    assert (looks["category"] == looks["query"].map(lambda s: f"c{wanted[int(s[1:])].item()}")).all()
    assert looks.groupby("query").size().tolist() == [k, k, k, k, 3, k, k, k]


def test_complete_the_look_is_the_dense_search_of_the_wanted_category() -> None:
    """Searched per category and in chunks (more queries than a chunk), the lists are those of
    one dense, masked queries x products search with the popularity bias added."""
    vectors, category, _ = catalogue([60, 30, 20, 12, 3])
    queries = torch.from_numpy(unit(1100, 16, 9))
    wanted = torch.randint(0, 6, (1100,), generator=torch.Generator().manual_seed(0))  # 5: none
    bias = torch.linspace(-0.2, 0.3, len(vectors))
    scores, positions = complete_the_look(queries, vectors, category, wanted, 10, bias)
    dense = torch.nn.functional.normalize(queries, dim=1) @ torch.nn.functional.normalize(vectors, dim=1).T
    dense = (dense + bias).masked_fill(category[None, :] != wanted[:, None], float("-inf"))
    expected, at = dense.topk(10, dim=1)
    found = torch.isfinite(expected)
    assert torch.equal(positions, at.masked_fill(~found, -1))
    assert torch.allclose(scores[found], expected[found], atol=1e-6)
    assert (positions[wanted == 5] == -1).all() and (positions[wanted == 4] >= 0).sum(dim=1).eq(3).all()


def test_broken_tables_are_caught() -> None:
    vectors, category, ids = catalogue([30, 30])
    names = [f"c{c}" for c in category.tolist()]
    table = rows("similar", ids, *top_similar(vectors, category, 5), ids, names)
    table.loc[0, "product"] = table.loc[0, "query"]
    table.loc[1, "category"] = "c1"
    table.loc[3, "score"] = 2.0  # above the rank before it
    table = table.drop(index=[5, 6])
    found = problems(table, dict(zip(ids, names, strict=True)), 5)
    assert found["self_recommendations"] == 1
    assert found["similar_other_category"] == 1
    assert found["short_similar_lists"] == 1
    assert found["scores_not_descending"] == 1


def test_complementary_hits_count_scene_partners_of_other_categories() -> None:
    pairs = pd.DataFrame({"scene": ["a", "a", "a", "b"], "product": ["x", "y", "z", "x"]})
    truth = scene_partners(pairs, {"x": "top", "y": "shoe", "z": "top"})
    assert sorted(map(tuple, truth.to_numpy())) == [("x", "y"), ("y", "x"), ("y", "z"), ("z", "y")]
    lists = pd.DataFrame({"query": ["x", "y"], "product": ["y", "q"]})
    assert hit_rate(lists, truth) == 0.25


def test_paired_lead_counts_the_pairs_one_list_finds_and_the_other_misses() -> None:
    """The lead is per pair, so two lists that share most hits compare by the few they do not;
    its interval is a bootstrap over the pairs, and excludes zero only when the lead is real."""
    truth = pd.DataFrame({"query": [f"q{i}" for i in range(400)], "product": ["p"] * 400})
    both = pd.DataFrame({"query": [f"q{i}" for i in range(200)], "product": ["p"] * 200})
    more = pd.concat(
        [both, pd.DataFrame({"query": [f"q{i}" for i in range(200, 260)], "product": ["p"] * 60})]
    )
    lead, low, high = paired_lead(more, both, truth)
    assert lead == pytest.approx(60 / 400)
    assert 0 < low < lead < high
    lead, low, high = paired_lead(both, more, truth)
    assert high < 0
    lead, low, high = paired_lead(both, both, truth)
    assert lead == low == high == 0


def test_scene_context_is_the_mean_query_of_a_products_scenes() -> None:
    queries = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    own = torch.tensor([[0.0, -1.0], [-1.0, 0.0], [3.0, 4.0]])
    # product 0 in scenes 0 and 1, product 1 in scene 2, product 2 in none
    context = scene_context(torch.tensor([0, 0, 1]), torch.tensor([0, 1, 2]), queries, own)
    half = 2**-0.5
    assert torch.allclose(context, torch.tensor([[half, half], [half, half], [0.6, 0.8]]))


def test_a_model_trained_on_co_occurrences_complements_with_its_own_vectors() -> None:
    queries = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    own = torch.tensor([[0.0, -2.0], [3.0, 4.0]])
    products, scenes = torch.tensor([0, 1]), torch.tensor([0, 1])
    assert finds_partners({"cooccurrence_weight": 0.2}) and not finds_partners({})
    mine = complementary_queries(own, products, scenes, queries, own_vectors=True)
    assert torch.allclose(mine, torch.tensor([[0.0, -1.0], [0.6, 0.8]]))
    theirs = complementary_queries(own, products, scenes, queries, own_vectors=False)
    assert torch.allclose(theirs, queries)


def test_the_same_index_is_the_same_file_from_any_process(tmp_path: Path) -> None:
    """A kept champion's index is rebuilt by another process: it must be the same bytes (a
    header whose entries came in hash order differed between processes)."""
    import subprocess
    import sys

    script = (
        "import sys, numpy as np; from stl_pipeline.serving.index import build_index, save_index\n"
        "x = np.random.default_rng(0).normal(size=(50, 8)).astype('float32')\n"
        "index = build_index(x, [f'p{i}' for i in range(50)])\n"
        "index.info |= {'model': 'gat', 'version': '1'}\n"
        "save_index(index, sys.argv[1])\n"
    )
    files = [tmp_path / f"index{i}.safetensors" for i in range(4)]
    for path in files:
        subprocess.run([sys.executable, "-c", script, str(path)], check=True, timeout=120)
    assert len({path.read_bytes() for path in files}) == 1
    assert load_index(files[0]).info["model"] == "gat"
