"""Build the ``stl_pairs`` and ``stl_products`` tables from the raw files."""

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from stl_pipeline.ingest.parse import IngestError, Quarantine, read_categories, read_pairs

SPLITS = ("train", "val", "test")


def split_by_scene(scenes: pd.Series, seed: int, val_fraction: float, test_fraction: float) -> pd.Series:
    """Assign each scene to train, val or test from a seeded hash of its id.

    A scene's split depends only on its id and the seed, not on which other
    scenes exist, so a scene keeps its split when the data grows and a test
    scene never leaks into a retrained model's training set.
    """
    if val_fraction < 0 or test_fraction < 0 or val_fraction + test_fraction >= 1:
        raise ValueError("val_fraction and test_fraction must be >= 0 and sum to less than 1")
    unique = scenes.drop_duplicates()
    draws = (
        np.array(
            [
                int.from_bytes(hashlib.blake2b(f"{seed}:{s}".encode(), digest_size=8).digest(), "big")
                for s in unique
            ],
            dtype=np.float64,
        )
        / 2.0**64
    )
    labels = np.where(
        draws < 1 - val_fraction - test_fraction, "train", np.where(draws < 1 - test_fraction, "val", "test")
    )
    return scenes.map(dict(zip(unique, labels, strict=True)))


@dataclass
class IngestResult:
    pairs: pd.DataFrame
    products: pd.DataFrame
    quarantine: pd.DataFrame
    records: dict[str, int]  # file -> records read (non-blank lines, or category entries)
    duplicates: int

    def quarantined_shares(self) -> dict[str, float]:
        rejected = self.quarantine["file"].value_counts()
        return {file: int(rejected.get(file, 0)) / max(1, n) for file, n in self.records.items()}


def ingest(
    pairs_path: Path,
    categories_path: Path,
    seed: int = 0,
    val_fraction: float = 0.1,
    test_fraction: float = 0.1,
) -> IngestResult:
    quarantine = Quarantine()
    categories = read_categories(categories_path, quarantine)
    category_entries = len(categories) + len(quarantine.rows)
    result = read_pairs(pairs_path, categories, quarantine)
    pairs = result.pairs
    pairs.insert(4, "split", split_by_scene(pairs["scene"], seed, val_fraction, test_fraction))
    pairs["split"] = pd.Categorical(pairs["split"], categories=SPLITS)

    counts = pairs.groupby("product").size()
    train_counts = pairs[pairs["split"] == "train"].groupby("product").size()
    products = categories.assign(
        pairs=categories["product"].map(counts).fillna(0).astype("int64"),
        # Popularity counts train scenes only, so the baseline never sees held-out pairs.
        popularity=categories["product"].map(train_counts).fillna(0).astype("int64"),
    )
    return IngestResult(
        pairs=pairs,
        products=products,
        quarantine=quarantine.frame(),
        records={str(pairs_path): result.lines, str(categories_path): category_entries},
        duplicates=result.duplicates,
    )


def check_quarantine(result: IngestResult, max_share: float, quarantine_path: Path) -> None:
    """Fail, naming the first reasons, when more than ``max_share`` of a file was rejected."""
    for file, share in result.quarantined_shares().items():
        if share <= max_share:
            continue
        rejected = result.quarantine[result.quarantine["file"] == file]
        examples = "; ".join(
            f"{row.file}:{row.line if pd.notna(row.line) else row.key}: {row.reason}"
            for row in rejected.head(3).itertuples()
        )
        raise IngestError(
            f"{len(rejected)} of {result.records[file]} records of {file} ({share:.2%}) failed "
            f"validation, over the limit of {max_share:.2%}. First: {examples}. Every rejected record "
            f"is listed in {quarantine_path}. Fix the input file, or raise max_quarantine_share in the "
            "run config if this share is expected."
        )


def invalid_ids(frame: pd.DataFrame, column: str) -> pd.DataFrame:
    """Rows whose ``column`` is not a 32-hex signature."""
    return frame[~frame[column].astype("string").str.fullmatch(r"[0-9a-f]{32}").fillna(False)]


def invalid_bboxes(pairs: pd.DataFrame) -> pd.DataFrame:
    """Rows whose box is not finite, inside [0, 1] and ordered (left < right, top < bottom)."""
    box = pairs[["left", "top", "right", "bottom"]].astype("float64")
    ok = (
        np.isfinite(box).all(axis=1)
        & ((box >= 0) & (box <= 1)).all(axis=1)
        & (box["left"] < box["right"])
        & (box["top"] < box["bottom"])
    )
    return pairs[~ok]


def scenes_in_several_splits(pairs: pd.DataFrame) -> pd.Series:
    """Scenes whose pairs are not all in one split (leakage between splits)."""
    counts = pairs.groupby("scene", observed=True)["split"].nunique()
    return counts[counts > 1]
