import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from stl_pipeline.categories import PATHS, UnknownCategoryError, parse_category_path
from stl_pipeline.ingest.parse import IngestError, bbox_problem, reason_kinds
from stl_pipeline.ingest.tables import (
    check_quarantine,
    ingest,
    invalid_bboxes,
    invalid_ids,
    scenes_in_several_splits,
    split_by_scene,
)

P1, P2, P3 = "a" * 32, "b" * 32, "c" * 32
S1, S2 = "1" * 32, "2" * 32


def write_raw(tmp_path: Path, lines: list[str], categories: dict | str) -> tuple[Path, Path]:
    pairs = tmp_path / "fashion.json"
    pairs.write_text("\n".join(lines) + "\n")
    cats = tmp_path / "fashion-cat.json"
    cats.write_text(categories if isinstance(categories, str) else json.dumps(categories))
    return pairs, cats


def line(product: str = P1, scene: str = S1, bbox: object = (0.1, 0.2, 0.5, 0.6)) -> str:
    return json.dumps(
        {"product": product, "scene": scene, "bbox": list(bbox) if isinstance(bbox, tuple) else bbox}
    )


@pytest.mark.parametrize(
    ("bbox", "reason"),
    [
        ([0.1, 0.2, 0.5], "not a list of four"),
        ("0.1,0.2,0.5,0.6", "not a list of four"),
        ([0.1, 0.2, "0.5", 0.6], "not a number"),
        ([0.1, 0.2, True, 0.6], "not a number"),
        ([0.1, 0.2, float("nan"), 0.6], "not finite"),
        ([0.1, 0.2, float("inf"), 0.6], "not finite"),
        ([-0.1, 0.2, 0.5, 0.6], "outside [0, 1]"),
        ([0.1, 0.2, 1.5, 0.6], "outside [0, 1]"),
        ([0.5, 0.2, 0.1, 0.6], "left >= right"),
        ([0.1, 0.6, 0.5, 0.2], "top >= bottom"),
        ([0.1, 0.2, 0.1, 0.6], "left >= right"),
    ],
)
def test_bad_bboxes_are_explained(bbox: object, reason: str) -> None:
    assert reason in bbox_problem(bbox)


def test_good_bboxes_pass() -> None:
    assert bbox_problem([0, 0, 1, 1]) is None
    assert bbox_problem([0.25, 0.5, 0.26, 0.51]) is None


def test_category_paths() -> None:
    assert parse_category_path(PATHS["Pants"]) == ("Clothing|Pants", "Pants")
    assert parse_category_path("Shoes") == ("Shoes", "Shoes")
    for bad in ("Apparel & Accessories", "Apparel & Accessories|Hats", "", None):
        with pytest.raises(UnknownCategoryError):
            parse_category_path(bad)


def test_malformed_lines_are_quarantined_with_file_line_and_reason(tmp_path: Path) -> None:
    lines = [
        line(P1, S1),
        "{not json",
        json.dumps([1, 2]),
        json.dumps({"product": P1, "scene": S1}),
        line("../../etc/passwd", S1),
        line(P1.upper(), S1),
        line(P2, S1, [0.5, 0.1, 0.2, 0.9]),
        line(P3, S1),  # product without a category
        line(P1, S1, (0.2, 0.2, 0.4, 0.4)),  # duplicate pair: dropped, counted
        "",
        line(P2, S2),
    ]
    pairs_path, cats_path = write_raw(
        tmp_path, lines, {P1: PATHS["Shoes"], P2: PATHS["Skirts"], "nothex": PATHS["Shoes"], P3: "Toys|Lego"}
    )
    result = ingest(pairs_path, cats_path)

    assert list(result.pairs["pair_id"]) == [f"{S1}_{P1}", f"{S2}_{P2}"]
    assert list(result.pairs["line"]) == [1, 11]
    assert result.pairs.loc[0, ["left", "top", "right", "bottom"]].tolist() == [0.1, 0.2, 0.5, 0.6]
    assert result.duplicates == 1
    assert result.records == {str(pairs_path): 10, str(cats_path): 4}  # the blank line is no record

    q = result.quarantine
    by_line = dict(zip(q["line"].dropna().astype(int), q.loc[q["line"].notna(), "reason"], strict=True))
    assert by_line[2].startswith("invalid JSON")
    assert "not an object" in by_line[3]
    assert "missing key 'bbox'" in by_line[4]
    assert "'../../etc/passwd' is not 32 lowercase hex" in by_line[5]
    assert "not 32 lowercase hex" in by_line[6]
    assert "left >= right" in by_line[7]
    assert "has no valid category" in by_line[8]
    assert set(q.loc[q["line"].isna(), "key"]) == {"nothex", P3}
    assert (q["file"].isin([str(pairs_path), str(cats_path)])).all()

    products = result.products.set_index("product")
    assert products.loc[P1, "category"] == "Shoes"
    assert products.loc[P1, "category_path"] == "Shoes"
    assert products.loc[P2, "category_path"] == "Clothing|Skirts"
    assert products["pairs"].to_dict() == {P1: 1, P2: 1}


def test_quarantine_threshold_fails_with_the_first_reasons(tmp_path: Path) -> None:
    lines = [line(P1, f"{i:032x}") for i in range(97)] + ["{bad", line("x", S1), line(P1, S1, [1, 1, 0, 0])]
    pairs_path, cats_path = write_raw(tmp_path, lines, {P1: PATHS["Shoes"]})
    result = ingest(pairs_path, cats_path)
    assert len(result.quarantine) == 3
    check_quarantine(result, 0.05, tmp_path / "q.parquet")
    with pytest.raises(IngestError) as error:
        check_quarantine(result, 0.01, tmp_path / "q.parquet")
    message = str(error.value)
    assert f"3 of 100 records of {pairs_path} (3.00%)" in message
    assert f"{pairs_path}:98: invalid JSON" in message
    assert "q.parquet" in message and "max_quarantine_share" in message


def test_alike_reasons_count_together() -> None:
    reasons = pd.Series(
        [
            "product id 'x' is not 32 lowercase hex characters",
            f"product id '{P1.upper()}' is not 32 lowercase hex characters",
            f"product {P1} has no valid category in fashion-cat.json",
            f"product {P2} has no valid category in fashion-cat.json",
            "bbox [0.5, 0.1, 0.2, 0.9] has left >= right (the format is [left, top, right, bottom])",
        ]
    )
    assert reason_kinds(reasons).nunique() == 3


def test_quarantine_share_is_per_file(tmp_path: Path) -> None:
    categories = {f"{i:032x}": PATHS["Shoes"] for i in range(9)} | {"bad": PATHS["Shoes"]}
    pairs_path, cats_path = write_raw(tmp_path, [line(f"{1:032x}")], categories)
    result = ingest(pairs_path, cats_path)
    assert result.quarantined_shares() == {str(pairs_path): 0.0, str(cats_path): 0.1}
    with pytest.raises(IngestError, match=f"1 of 10 records of {cats_path}"):
        check_quarantine(result, 0.05, tmp_path / "q.parquet")


@pytest.mark.parametrize(
    ("content", "message"),
    [("{not json", "is not valid JSON"), ("[1, 2]", "expected one object")],
)
def test_unusable_categories_file_fails_clearly(tmp_path: Path, content: str, message: str) -> None:
    pairs_path, cats_path = write_raw(tmp_path, [line()], content)
    with pytest.raises(IngestError, match=message):
        ingest(pairs_path, cats_path)


def test_missing_files_name_the_variable(tmp_path: Path) -> None:
    with pytest.raises(IngestError, match="STL_CATEGORIES_PATH"):
        ingest(tmp_path / "nope.json", tmp_path / "nope-cat.json")


def test_split_is_by_scene_seeded_and_stable_as_data_grows() -> None:
    scenes = pd.Series([f"{i:032x}" for i in range(20_000)])
    split = split_by_scene(scenes, seed=3, val_fraction=0.1, test_fraction=0.1)
    shares = split.value_counts(normalize=True)
    assert abs(shares["train"] - 0.8) < 0.02 and abs(shares["test"] - 0.1) < 0.02
    assert split.equals(split_by_scene(scenes, 3, 0.1, 0.1))
    assert not split.equals(split_by_scene(scenes, 4, 0.1, 0.1))
    grown = split_by_scene(
        pd.concat([scenes, pd.Series([f"{i:032x}" for i in range(10**6, 10**6 + 500)])]), 3, 0.1, 0.1
    )
    assert grown.iloc[: len(scenes)].reset_index(drop=True).equals(split)
    repeated = split_by_scene(pd.Series([S1, S2, S1, S1]), 3, 0.1, 0.1)
    assert repeated[0] == repeated[2] == repeated[3]


def test_popularity_counts_train_scenes_only(small_dataset: Path) -> None:
    result = ingest(small_dataset / "fashion.json", small_dataset / "fashion-cat.json")
    pairs = result.pairs
    train = pairs[pairs["split"] == "train"].groupby("product").size()
    products = result.products.set_index("product")
    assert (products["popularity"] == products.index.map(train).fillna(0)).all()
    assert (products["pairs"] >= products["popularity"]).all()
    assert scenes_in_several_splits(pairs).empty


def test_vectorized_checks_find_planted_errors() -> None:
    frame = pd.DataFrame(
        {
            "scene": [S1, "../x", S2],
            "product": [P1, P1, P2],
            "split": ["train", "train", "test"],
            "left": [0.1, 0.1, np.nan],
            "top": [0.1, 0.1, 0.1],
            "right": [0.2, 0.05, 0.2],
            "bottom": [0.2, 0.2, 0.2],
        }
    )
    assert list(invalid_ids(frame, "scene").index) == [1]
    assert list(invalid_bboxes(frame).index) == [1, 2]
    leaky = pd.concat([frame, frame.iloc[[0]].assign(split="test")])
    assert list(scenes_in_several_splits(leaky).index) == [S1]
