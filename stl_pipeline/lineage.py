"""Whether a stage's inputs come from the same upstream: a stage refuses stale or mismatched
inputs instead of silently computing on their intersection.

Dagster re-runs what an operator selects, so ``stl_graph`` can meet embeddings made from
yesterday's tables, and a model a graph built from other pairs. Keys tell: a derived artifact
never holds a key its table lacks, and it misses only the few keys whose image failed.
"""

import hashlib
from collections.abc import Iterable

import pandas as pd

from stl_pipeline.registry import MODEL_ASSETS

# Failed downloads and queries without a region leave some keys without a vector; past this
# share, the vectors were made from other tables.
MAX_MISSING_SHARE = 0.05
PAIR_COLUMNS = ["pair_id", "scene", "product", "split"]
PAIRS_DIGEST = "pairs_digest"  # where a graph's info records the pairs it was built from
RAW_DIGEST = "raw_sha256"  # ingestion's metadata: of the raw files; the raw-files sensor compares it


class MismatchedInputError(ValueError):
    """An input was made from another version of its upstream table."""


def require_made_from(
    made: str,
    keys: Iterable[str],
    table: str,
    ids: Iterable[str],
    remedy: str,
    max_missing: float = MAX_MISSING_SHARE,
) -> None:
    """``made``'s keys must all be ids of ``table`` and cover all but ``max_missing`` of them."""
    have, want = set(keys), set(ids)
    extra, missing = have - want, want - have
    if not extra and len(missing) <= max_missing * len(want) and (have or not want):
        return
    example = f" (e.g. {sorted(extra)[0]!r} is not in {table})" if extra else ""
    raise MismatchedInputError(
        f"{made} was made from other tables than the current {table}: it covers {len(want) - len(missing)} "
        f"of {table}'s {len(want)} ids (at least {1 - max_missing:.0%} needed) and holds {len(extra)} ids "
        f"that {table} lacks{example}. {remedy}"
    )


def pairs_digest(pairs: pd.DataFrame) -> str:
    """Fingerprint of the pairs (ids, scenes, products, splits) that a graph was built from."""
    rows = pd.util.hash_pandas_object(pairs[PAIR_COLUMNS].astype(str), index=False)
    return hashlib.blake2b(rows.to_numpy().tobytes(), digest_size=12).hexdigest()


def require_same_pairs(made: str, info: dict, pairs: pd.DataFrame, remedy: str) -> None:
    """``made`` (a graph, through its ``info``) was built from exactly these pairs."""
    if info.get(PAIRS_DIGEST) != pairs_digest(pairs):
        raise MismatchedInputError(
            f"{made} was built from other pairs than the current stl_pairs ({len(pairs)} pairs; "
            f"digest {pairs_digest(pairs)}, {made} records {info.get(PAIRS_DIGEST)}). {remedy}"
        )


def require_trained_on(method: str, record: dict, graph_info: dict) -> None:
    """A model record was trained on this graph: evaluating or serving it on a graph of other
    pairs would score it on pairs it may have trained on."""
    if record.get(PAIRS_DIGEST) != graph_info.get(PAIRS_DIGEST):
        asset = MODEL_ASSETS.get(method, method)
        raise MismatchedInputError(
            f"{asset} was trained on another stl_graph than the current one (pairs digest "
            f"{record.get(PAIRS_DIGEST)}, the graph's {graph_info.get(PAIRS_DIGEST)}): rematerialize "
            f"{asset} (the stl_retrain job retrains every model)."
        )
