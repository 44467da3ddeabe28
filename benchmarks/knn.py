"""The kNN graph at full catalogue size: FAISS (as ``stl_graph`` builds it) against
scikit-learn's brute-force cosine search, in one run.

38,111 unit vectors of 2,048 dimensions with category and style structure (as a
backbone's features have), each vector's k nearest others. Recall is measured
against scikit-learn's exact answer.

    .venv/bin/python benchmarks/knn.py [--vectors 38111] [--dim 2048] [--k 10]
"""

import argparse
import resource
import time

import numpy as np
from sklearn.neighbors import NearestNeighbors
from tabulate import tabulate

from stl_pipeline.graph.config import KnnConfig
from stl_pipeline.graph.knn import recall, self_neighbours


def vectors(n: int, dim: int, seed: int = 0) -> np.ndarray:
    """Ten categories, 2,000 styles, and noise: clusters within clusters, like image features."""
    rng = np.random.default_rng(seed)
    categories = rng.standard_normal((10, dim), dtype=np.float32)
    styles = 0.7 * rng.standard_normal((2000, dim), dtype=np.float32)
    x = categories[rng.integers(0, 10, n)] + styles[rng.integers(0, 2000, n)]
    x += rng.standard_normal((n, dim), dtype=np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--vectors", type=int, default=38_111)
    parser.add_argument("--dim", type=int, default=2048)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--skip-exact-faiss", action="store_true", help="skip the slow exact FAISS row")
    args = parser.parse_args()
    x = vectors(args.vectors, args.dim)

    start = time.perf_counter()
    search = NearestNeighbors(n_neighbors=args.k + 1, metric="cosine", algorithm="brute", n_jobs=-1).fit(x)
    found = search.kneighbors(x, return_distance=False)
    sklearn_seconds = time.perf_counter() - start
    truth = np.array([[j for j in row if j != i][: args.k] for i, row in enumerate(found)])

    rows = []
    for name, config in [
        ("FAISS, stl_graph default (auto)", KnnConfig()),
        ("FAISS exact", KnnConfig("exact")),
    ]:
        if name == "FAISS exact" and args.skip_exact_faiss:
            continue
        start = time.perf_counter()
        result = self_neighbours(x, args.k, config)
        seconds = time.perf_counter() - start
        rows.append(
            [f"{name}: {result.method}", seconds, sklearn_seconds / seconds, recall(result.indices, truth)]
        )
    rows.append(["scikit-learn brute-force cosine", sklearn_seconds, 1.0, 1.0])

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"\n{args.vectors:,} x {args.dim} vectors, k={args.k}, peak RSS {peak:,.0f} MB\n")
    print(
        tabulate(
            [[n, f"{s:.1f}", f"{r:.1f}x", f"{q:.4f}"] for n, s, r, q in rows],
            headers=["method", "seconds", "speed-up vs scikit-learn", "recall@k vs exact"],
        )
    )


if __name__ == "__main__":
    main()
