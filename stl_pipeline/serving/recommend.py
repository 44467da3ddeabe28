"""Top-K lists from a model's vectors: similar, complementary and complete-the-look products.

*Similar* stays within the product's category; *complementary* looks only at
other categories and keeps at most ``per_category`` products of each, so that
one large category (shoes are a third of the release) cannot fill a list. Its
query is the product's own vector when the model learned it as a query for its
partners, else its scene context, the mean of the model's Complete-the-Look
queries of the train scenes it appears in (``complementary_queries``);
*complete the look* ranks, for a scene and a category it lacks, that
category's products against the scene's query vector.

Scores are cosines. Rows are searched in chunks, so the full release (38k
products) never needs a products x products matrix in memory.
"""

from collections.abc import Iterator

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from stl_pipeline.metrics import bootstrap

CHUNK = 1024
COLUMNS = ["kind", "query", "rank", "product", "category", "score"]


def _chunks(total: int, size: int = CHUNK) -> Iterator[slice]:
    for start in range(0, total, size):
        yield slice(start, min(start + size, total))


def _topk(scores: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top ``k`` per row; entries scored -inf (not allowed) come back as position -1."""
    values, positions = scores.topk(min(k, scores.shape[1]), dim=1)
    return values, positions.masked_fill(torch.isinf(values), -1)


def top_similar(
    vectors: torch.Tensor, category: torch.Tensor, k: int, queries: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(Q, k) scores and positions of the most similar products of the same category.

    ``queries`` are product positions (default: every product); a product never
    recommends itself.
    """
    unit = F.normalize(vectors.float(), dim=1)
    queries = torch.arange(len(unit)) if queries is None else queries
    scores, positions = [], []
    for part in _chunks(len(queries)):
        rows = queries[part]
        sims = unit[rows] @ unit.T
        allowed = category[None, :] == category[rows][:, None]
        allowed[torch.arange(len(rows)), rows] = False
        found = _topk(sims.masked_fill(~allowed, float("-inf")), k)
        scores.append(found[0])
        positions.append(found[1])
    return torch.cat(scores), torch.cat(positions)


def top_per_category(
    sims: torch.Tensor, category: torch.Tensor, excluded: torch.Tensor, k: int, per_category: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Top ``k`` of each row of ``sims`` (Q, P), outside row q's ``excluded[q]`` category and
    with at most ``per_category`` products of any one category."""
    candidate_scores, candidate_positions = [], []
    for value in category.unique():
        members = torch.nonzero(category == value).squeeze(1)
        top = sims[:, members].topk(min(per_category, len(members)), dim=1)
        own = (excluded == value)[:, None]
        candidate_scores.append(top.values.masked_fill(own, float("-inf")))
        candidate_positions.append(members[top.indices])
    scores = torch.cat(candidate_scores, dim=1)
    positions = torch.cat(candidate_positions, dim=1)
    values, order = _topk(scores, k)
    chosen = positions.gather(1, order.clamp(min=0)).masked_fill(order < 0, -1)
    return values, chosen


def scene_context(
    products: torch.Tensor, scenes: torch.Tensor, scene_queries: torch.Tensor, fallback: torch.Tensor
) -> torch.Tensor:
    """(P, d) each product's complementary query: the normalized mean of ``scene_queries`` over
    the scenes it appears in (edges ``scenes[i] -> products[i]``), or its ``fallback`` vector
    when it appears in none (a product new to the catalogue)."""
    total = torch.zeros_like(fallback, dtype=torch.float32)
    total.index_add_(0, products, scene_queries.float()[scenes])
    seen = torch.bincount(products, minlength=len(fallback)) > 0
    return torch.where(seen[:, None], F.normalize(total, dim=1), F.normalize(fallback.float(), dim=1))


def finds_partners(config: dict) -> bool:
    """Whether a model's product vectors were trained as queries for the products they are
    worn with (training's co-occurrence loss, ``cooccurrence_weight``)."""
    return config.get("cooccurrence_weight", 0.0) > 0


def complementary_queries(
    vectors: torch.Tensor,
    products: torch.Tensor,
    scenes: torch.Tensor,
    scene_queries: torch.Tensor,
    own_vectors: bool,
) -> torch.Tensor:
    """(P, d) each product's query for the products that go with it: its own vector when the
    model learned it as that query (``finds_partners``), else the mean CTL query of the
    train scenes it appears in (``scene_context``). Held-out scene partners in the top 10
    of GAT's lists: 0.126 with its own vectors and 0.035 with its scenes' mean on the demo,
    0.096 with either on the quality test (``recommendations``' metadata compares both)."""
    if own_vectors:
        return F.normalize(vectors.float(), dim=1)
    return scene_context(products, scenes, scene_queries, vectors)


def top_complementary(
    vectors: torch.Tensor,
    category: torch.Tensor,
    k: int,
    per_category: int,
    queries: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(P, k) scores and positions of each product's best matches in other categories, for
    ``queries`` (one a product; default: the products' own vectors)."""
    unit = F.normalize(vectors.float(), dim=1)
    queries = unit if queries is None else F.normalize(queries.float(), dim=1)
    scores, positions = [], []
    for part in _chunks(len(unit)):
        found = top_per_category(queries[part] @ unit.T, category, category[part], k, per_category)
        scores.append(found[0])
        positions.append(found[1])
    return torch.cat(scores), torch.cat(positions)


def complete_the_look(
    queries: torch.Tensor,
    products: torch.Tensor,
    category: torch.Tensor,
    wanted: torch.Tensor,
    k: int,
    bias: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(Q, k) scores and positions of the best products of category ``wanted[q]`` for query q:
    cosine, plus the model's popularity ``bias`` (P,) when given, as the retrieval report scores.
    Each category's queries are scored against that category's products alone, in chunks: at
    the release's size every held-out scene asks for several categories, and a dense queries x
    products matrix took 19 GB."""
    unit = F.normalize(products.float(), dim=1)
    asked = F.normalize(queries.float(), dim=1)
    scores = torch.full((len(queries), k), float("-inf"))
    positions = torch.full((len(queries), k), -1, dtype=torch.long)
    for value in wanted.unique():
        members = torch.nonzero(category == value).squeeze(1)
        if not len(members):
            continue
        offered = unit[members]
        boost = None if bias is None else bias[members].float()
        rows = torch.nonzero(wanted == value).squeeze(1)
        for part in _chunks(len(rows)):
            chosen = rows[part]
            sims = asked[chosen] @ offered.T
            if boost is not None:
                sims += boost
            found, at = sims.topk(min(k, len(members)), dim=1)  # every member is allowed
            scores[chosen, : found.shape[1]] = found
            positions[chosen, : found.shape[1]] = members[at]
    return scores, positions


def rows(
    kind: str,
    queries: list[str],
    scores: torch.Tensor,
    positions: torch.Tensor,
    ids: list[str],
    category_names: list[str],
) -> pd.DataFrame:
    """Long-format rows ``kind, query, rank, product, category, score``; empty slots dropped."""
    q, rank = np.nonzero(positions.numpy() >= 0)
    found = positions.numpy()[q, rank]
    return pd.DataFrame(
        {
            "kind": kind,
            "query": np.asarray(queries, dtype=object)[q],
            "rank": rank + 1,
            "product": np.asarray(ids, dtype=object)[found],
            "category": np.asarray(category_names, dtype=object)[found],
            "score": scores.numpy()[q, rank].astype(np.float32),
        },
        columns=COLUMNS,
    )


def hits(lists: pd.DataFrame, truth: pd.DataFrame) -> np.ndarray:
    """For each (query, product) pair of ``truth``, in its order, whether it appears in
    ``query``'s list (1.0) or not (0.0): per pair, so that two lists compare paired."""
    found = truth.merge(
        lists[["query", "product"]].drop_duplicates(), on=["query", "product"], how="left", indicator=True
    )
    return (found["_merge"] == "both").to_numpy(dtype=float)


def hit_rate(lists: pd.DataFrame, truth: pd.DataFrame) -> float:
    """Share of (query, product) pairs of ``truth`` that appear in ``query``'s list."""
    return float(hits(lists, truth).mean()) if len(truth) else float("nan")


def paired_lead(lists: pd.DataFrame, other: pd.DataFrame, truth: pd.DataFrame) -> tuple[float, float, float]:
    """How many more of ``truth``'s pairs ``lists`` finds than ``other`` (a share), and its 95%
    bootstrap interval over the pairs: compared on the same pairs, two lists that differ in a
    few of them are told apart from noise, where two hit rates side by side are not."""
    difference = hits(lists, truth) - hits(other, truth)
    if not len(difference):
        return float("nan"), float("nan"), float("nan")
    return float(difference.mean()), *bootstrap(difference)


def scene_partners(pairs: pd.DataFrame, category_of: dict[str, str]) -> pd.DataFrame:
    """(query, product) for every two products of different categories in one scene: what a
    complementary list should contain."""
    members = pairs[["scene", "product"]].drop_duplicates()
    both = members.merge(members, on="scene")
    both = both[both["product_x"] != both["product_y"]]
    other = both["product_x"].map(category_of) != both["product_y"].map(category_of)
    return both[other].rename(columns={"product_x": "query", "product_y": "product"})[["query", "product"]]


def _list_key(table: pd.DataFrame) -> pd.Series:
    """One list per product and kind, and per (scene, category) for complete-the-look."""
    looks = table["kind"] == "complete_the_look"
    return table["kind"] + ":" + table["query"].where(~looks, table["query"] + "|" + table["category"])


def problems(table: pd.DataFrame, category_of: dict[str, str], k: int) -> dict[str, int]:
    """Counts of broken invariants of a recommendations table (all zero when it is sound)."""
    key = _list_key(table)
    products = table[table["kind"].isin(["similar", "complementary"])]
    query_category = products["query"].map(category_of)
    similar = products["kind"] == "similar"
    catalogue = pd.Series(category_of)
    expected = catalogue.map(catalogue.value_counts()).sub(1).clip(upper=k)
    found = table[table["kind"] == "similar"].groupby("query").size()
    return {
        "self_recommendations": int((products["query"] == products["product"]).sum()),
        "similar_other_category": int((similar & (query_category != products["category"])).sum()),
        "complementary_same_category": int((~similar & (query_category == products["category"])).sum()),
        "unknown_products": int((~table["product"].isin(category_of)).sum()),
        "duplicates_in_a_list": int(table.assign(key=key).duplicated(["key", "product"]).sum()),
        "lists_over_k": int((key.value_counts() > k).sum()),
        "short_similar_lists": int((found.reindex(expected.index, fill_value=0) < expected).sum()),
        "scores_not_descending": int((table["score"].groupby(key).diff() > 1e-6).sum()),
    }
