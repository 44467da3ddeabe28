"""How product embeddings are shaped, beyond retrieval accuracy.

Cluster structure (silhouette and Davies-Bouldin, against k-means clusters and
against the true categories), over-smoothing (mean pairwise cosine: a GNN whose
products all point one way scores near 1), and what the top-10 lists look
like (catalogue coverage and category diversity, PyG's metrics).
"""

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.cluster import KMeans
from sklearn.metrics import davies_bouldin_score, silhouette_score
from torch_geometric.data import HeteroData
from torch_geometric.metrics import LinkPredCoverage, LinkPredDiversity

SILHOUETTE_SAMPLE = 5000  # silhouette is quadratic in the number of vectors


def mean_pairwise_cosine(vectors: torch.Tensor) -> float:
    """Mean cosine over all pairs of distinct rows, in O(n d): sum of a Gram matrix without it."""
    n = len(vectors)
    if n < 2:
        return float("nan")
    unit = F.normalize(vectors.double(), dim=1)
    total = unit.sum(dim=0)
    return float((total @ total - n) / (n * (n - 1)))


def _clusters(unit: np.ndarray, labels: np.ndarray, seed: int) -> tuple[float, float]:
    if len(np.unique(labels)) < 2:
        return float("nan"), float("nan")
    sample = min(len(unit), SILHOUETTE_SAMPLE)
    silhouette = silhouette_score(unit, labels, metric="cosine", sample_size=sample, random_state=seed)
    return float(silhouette), float(davies_bouldin_score(unit, labels))


def embedding_quality(vectors: torch.Tensor, category: torch.Tensor, seed: int = 0) -> dict[str, float]:
    """Cluster quality against k-means (k = number of categories) and the true categories."""
    unit = F.normalize(vectors.float(), dim=1).numpy()
    labels = category.numpy()
    k = len(np.unique(labels))
    kmeans = KMeans(k, n_init=4, random_state=seed).fit_predict(unit) if k > 1 else labels
    silhouette_kmeans, db_kmeans = _clusters(unit, kmeans, seed)
    silhouette_category, db_category = _clusters(unit, labels, seed)
    return {
        "silhouette_kmeans": silhouette_kmeans,
        "silhouette_category": silhouette_category,
        "davies_bouldin_kmeans": db_kmeans,
        "davies_bouldin_category": db_category,
        "mean_pairwise_cosine": mean_pairwise_cosine(vectors),
    }


def list_quality(scores: torch.Tensor, category: torch.Tensor, k: int = 10) -> dict[str, float]:
    """Coverage (share of the catalogue in any top-k list) and category diversity of top-k lists."""
    top = scores.topk(min(k, scores.shape[1]), dim=1).indices
    coverage = LinkPredCoverage(k, scores.shape[1])
    diversity = LinkPredDiversity(k, category)
    unused = torch.empty((2, 0), dtype=torch.long)  # neither metric looks at the true links
    for metric in (coverage, diversity):
        metric.update(top, unused)
    return {f"coverage@{k}": float(coverage.compute()), f"diversity@{k}": float(diversity.compute())}


def graph_density(data: HeteroData) -> float:
    """Message-passing edges over the node pairs their types allow."""
    edges = possible = 0
    for edge_type in data.edge_types:
        src, _, dst = edge_type
        edges += data[edge_type].edge_index.shape[1]
        possible += data[src].num_nodes * data[dst].num_nodes
    return edges / possible if possible else 0.0
