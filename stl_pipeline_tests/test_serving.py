from pathlib import Path

import numpy as np
import pytest

from stl_pipeline.serving.index import build_index, load_index, save_index


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
