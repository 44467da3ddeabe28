"""Figures that show what the data looks like, as PNG bytes (matplotlib, no display).

Figures are built with ``matplotlib.figure.Figure`` directly: no pyplot state,
so concurrent assets cannot draw into each other's figures. matplotlib is
imported when a figure is drawn, not when the asset modules load.
"""

from __future__ import annotations

import io
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from stl_pipeline.categories import LEAVES

if TYPE_CHECKING:
    from matplotlib.figure import Figure

GRID = 64  # cells per side of the bbox position map


def _figure(width: float, height: float) -> Figure:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height))


def _png(figure: Figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    return buffer.getvalue()


def category_distribution(products: pd.DataFrame, pairs: pd.DataFrame) -> bytes:
    """Products and pairs per leaf category, side by side."""
    order = list(LEAVES)
    product_counts = products["category"].astype(str).value_counts().reindex(order, fill_value=0)
    pair_counts = pairs["category"].astype(str).value_counts().reindex(order, fill_value=0)
    figure = _figure(8, 4)
    axes = figure.subplots()
    y = np.arange(len(order))
    axes.barh(y - 0.2, product_counts.to_numpy(), height=0.4, label="products")
    axes.barh(y + 0.2, pair_counts.to_numpy(), height=0.4, label="pairs")
    axes.set_yticks(y, order)
    axes.invert_yaxis()
    axes.set_xlabel("count")
    axes.set_title("Category distribution")
    axes.legend()
    return _png(figure)


def bbox_coverage(pairs: pd.DataFrame) -> bytes:
    """Bbox area histogram, and the share of boxes that cover each position of the scene."""
    left, top, right, bottom = (pairs[c].to_numpy(np.float64) for c in ("left", "top", "right", "bottom"))
    area = (right - left) * (bottom - top)
    edges = np.linspace(0, 1, GRID + 1)
    centres = (edges[:-1] + edges[1:]) / 2
    covered_x = (left[:, None] <= centres) & (centres <= right[:, None])
    covered_y = (top[:, None] <= centres) & (centres <= bottom[:, None])
    coverage = covered_y.T.astype(np.float32) @ covered_x.astype(np.float32) / max(1, len(pairs))
    figure = _figure(9, 4)
    histogram, heatmap = figure.subplots(1, 2)
    histogram.hist(area, bins=40, range=(0, 1))
    histogram.set_xlabel("bbox area (share of the scene)")
    histogram.set_ylabel("pairs")
    histogram.set_title("Bbox area")
    image = heatmap.imshow(coverage, extent=(0, 1, 1, 0), cmap="magma", vmin=0)
    heatmap.set_title("Boxes covering each position")
    heatmap.set_xlabel("x")
    heatmap.set_ylabel("y")
    figure.colorbar(image, ax=heatmap)
    return _png(figure)


def category_cooccurrence(pairs: pd.DataFrame) -> np.ndarray:
    """Scenes in which each pair of categories appears together (diagonal: scenes with the category)."""
    order = list(LEAVES)
    present = pd.crosstab(pairs["scene"], pairs["category"].astype(str)).reindex(columns=order, fill_value=0)
    present = (present > 0).astype(np.int64).to_numpy()
    return present.T @ present


def cooccurrence_heatmap(pairs: pd.DataFrame) -> bytes:
    matrix = category_cooccurrence(pairs)
    figure = _figure(7, 6)
    axes = figure.subplots()
    image = axes.imshow(matrix, cmap="viridis")
    axes.set_xticks(range(len(LEAVES)), LEAVES, rotation=60, ha="right")
    axes.set_yticks(range(len(LEAVES)), LEAVES)
    for (row, col), value in np.ndenumerate(matrix):
        axes.text(col, row, str(value), ha="center", va="center", fontsize=7, color="white")
    axes.set_title("Scenes in which two categories appear together")
    figure.colorbar(image, ax=axes)
    return _png(figure)


def embedding_map(vectors: np.ndarray, categories: list[str], title: str, points_cap: int = 5000) -> bytes:
    """A 2-D PCA projection of (a seeded sample of at most ``points_cap`` of) the vectors, by category."""
    labels = np.asarray(categories)
    if len(vectors) > points_cap:
        chosen = np.random.default_rng(0).choice(len(vectors), points_cap, replace=False)
        vectors, labels = vectors[chosen], labels[chosen]
    centred = vectors - vectors.mean(axis=0)
    _, _, components = np.linalg.svd(centred, full_matrices=False)
    points = centred @ components[:2].T
    figure = _figure(7, 6)
    axes = figure.subplots()
    for index, category in enumerate(LEAVES):
        chosen = labels == category
        if chosen.any():
            axes.scatter(*points[chosen].T, s=8, alpha=0.7, color=f"C{index}", label=category)
    axes.set_xlabel("PC 1")
    axes.set_ylabel("PC 2")
    axes.set_title(title)
    axes.legend(fontsize=7, markerscale=2, loc="best")
    return _png(figure)


def training_curves(
    history: list[dict[str, float]],
    best_epoch: int,
    title: str,
    metric: str = "val_mrr",
    label: str = "validation MRR",
    loss: tuple[str, str] = ("loss", "training loss"),
) -> bytes:
    """The training ``loss`` (column, label) and the validation ``metric`` (columns starting
    so) per epoch, with the kept (best) epoch marked."""
    frame = pd.DataFrame(history)
    figure = _figure(9, 3.5)
    loss_axes, val_axes = figure.subplots(1, 2)
    loss_axes.plot(frame["epoch"], frame[loss[0]])
    loss_axes.set_xlabel("epoch")
    loss_axes.set_ylabel(loss[1])
    for column in sorted(c for c in frame.columns if c.startswith(metric)):
        evaluated = frame[["epoch", column]].dropna()
        val_axes.plot(
            evaluated["epoch"], evaluated[column], label=column.removeprefix(metric).strip("_") or "mean"
        )
    val_axes.set_xlabel("epoch")
    val_axes.set_ylabel(label)
    val_axes.legend()
    for axes in (loss_axes, val_axes):
        axes.axvline(best_epoch, color="grey", linestyle="--", linewidth=1)
    figure.suptitle(f"{title} (dashed: best epoch {best_epoch})")
    return _png(figure)
