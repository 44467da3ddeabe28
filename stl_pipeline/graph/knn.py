"""k nearest neighbours by cosine similarity with FAISS.

Exact search is a (n x d) by (d x n) product: at the full catalogue (38k x
2048) that is about 3e12 multiply-adds, over half a minute on two cores. Past
``exact_limit`` vectors the search is clustered: spherical k-means splits the
vectors into cells, each vector probes its nearest few cells, and each cell is
searched exactly with FAISS's batched matrix products. Recall against exact
search is estimated on a sample and reported, never assumed.
"""

import math
from dataclasses import dataclass

import faiss
import numpy as np

from stl_pipeline.graph.config import KnnConfig


@dataclass
class Neighbours:
    indices: np.ndarray  # (n, k) int64 positions in the database, -1 where fewer exist
    similarities: np.ndarray  # (n, k) float32 cosine similarities
    method: str


def _as_float32(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x, dtype=np.float32)


def exact(queries: np.ndarray, database: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    k = min(k, len(database))
    if k == 0 or len(queries) == 0:
        return np.empty((len(queries), 0), np.float32), np.empty((len(queries), 0), np.int64)
    return faiss.knn(_as_float32(queries), _as_float32(database), k, metric=faiss.METRIC_INNER_PRODUCT)


def clustered(
    queries: np.ndarray, database: np.ndarray, k: int, cells: int, probes: int, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    queries, database = _as_float32(queries), _as_float32(database)
    d = database.shape[1]
    kmeans = faiss.Kmeans(d, cells, niter=10, seed=seed, spherical=True, max_points_per_centroid=256)
    kmeans.train(database)
    _, home = kmeans.index.search(database, 1)
    home = home[:, 0]
    _, probed = kmeans.index.search(queries, probes)
    sims = np.full((len(queries), probes, k), -np.inf, dtype=np.float32)
    ids = np.full((len(queries), probes, k), -1, dtype=np.int64)
    for cell in range(cells):
        members = np.flatnonzero(home == cell)
        rows, slots = np.nonzero(probed == cell)
        if len(members) == 0 or len(rows) == 0:
            continue
        found_sims, found = exact(queries[rows], database[members], k)
        width = found.shape[1]
        sims[rows, slots, :width] = found_sims
        ids[rows, slots, :width] = members[found]
    sims, ids = sims.reshape(len(queries), -1), ids.reshape(len(queries), -1)
    order = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(sims, order, 1), np.take_along_axis(ids, order, 1)


def search(queries: np.ndarray, database: np.ndarray, k: int, config: KnnConfig = KnnConfig()) -> Neighbours:
    """The ``k`` most cosine-similar database rows of each query (rows are L2-normalized)."""
    n = len(database)
    method = config.method
    if method == "auto":
        method = "exact" if n <= config.exact_limit else "clustered"
    if method == "exact":
        sims, ids = exact(queries, database, k)
        return Neighbours(ids, sims, "exact")
    if method != "clustered":
        raise ValueError(f"unknown kNN method {method!r}: use auto, exact or clustered")
    cells = config.cells or max(2, round(math.sqrt(n) / 6))
    cells = min(cells, n)
    probes = min(cells, config.probes or max(2, cells // 8))
    sims, ids = clustered(queries, database, min(k, n), cells, probes, config.seed)
    return Neighbours(ids, sims, f"clustered cells={cells} probes={probes}")


def self_neighbours(vectors: np.ndarray, k: int, config: KnnConfig = KnnConfig()) -> Neighbours:
    """Each vector's ``k`` nearest others (itself excluded, even among exact duplicates)."""
    found = search(vectors, vectors, k + 1, config)
    rows = np.arange(len(vectors))[:, None]
    keep = found.indices != rows
    ids = np.full((len(vectors), k), -1, dtype=np.int64)
    sims = np.full((len(vectors), k), -np.inf, dtype=np.float32)
    for i in range(len(vectors)):
        chosen = found.indices[i][keep[i]][:k]
        ids[i, : len(chosen)] = chosen
        sims[i, : len(chosen)] = found.similarities[i][keep[i]][:k]
    return Neighbours(ids, sims, found.method)


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean share of the true neighbours that were found (rows aligned)."""
    hits = [
        len(set(f[f >= 0]) & set(t[t >= 0])) / max(1, (t >= 0).sum())
        for f, t in zip(found, truth, strict=True)
    ]
    return float(np.mean(hits)) if hits else 1.0
