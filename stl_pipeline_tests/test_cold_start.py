"""Cold start on scenes no pipeline run has seen, through the Python function and the
``stl-recommend`` command, and its errors for each kind of bad input."""

import copy
import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from stl_pipeline.categories import LEAVES
from stl_pipeline.generate import unseen_scenes
from stl_pipeline.serving.cli import main
from stl_pipeline.serving.cold_start import ColdStart, ColdStartError
from stl_pipeline.serving.loading import load
from stl_pipeline.settings import load_settings
from stl_pipeline_tests.lineage import Trained

STL_RECOMMEND = Path(sys.executable).parent / "stl-recommend"


@pytest.fixture(scope="module")
def cold(trained: Trained) -> ColdStart:
    return load(trained.settings)


@pytest.fixture(scope="module")
def unseen(trained: Trained, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, pd.DataFrame]:
    folder = tmp_path_factory.mktemp("unseen")
    pairs = pd.DataFrame(unseen_scenes(trained.config, 40, folder))
    known = pd.read_parquet(trained.settings.data_dir / "tables" / "stl_pairs.parquet")
    assert not set(pairs["scene"]) & set(known["scene"])  # never seen by any asset
    return folder, pairs


def test_unseen_scenes_find_their_products(cold: ColdStart, unseen: tuple[Path, pd.DataFrame]) -> None:
    folder, pairs = unseen
    category_of = dict(zip(cold.index.ids, (LEAVES[c] for c in cold.category), strict=True))
    hits, hits_given_category, looks = [], [], []
    for pair in pairs.itertuples():
        image = folder / f"{pair.scene}.jpg"
        answer = cold.scene(image, tuple(pair.bbox), k=10)
        hits.append(pair.product in {item.product for item in answer.exact})
        given = cold.scene(image, tuple(pair.bbox), category=category_of[pair.product], k=10)
        hits_given_category.append(pair.product in {item.product for item in given.exact})
        others = set(pairs[(pairs["scene"] == pair.scene) & (pairs["product"] != pair.product)]["product"])
        looks.append(bool(others & {item.product for item in answer.complete_the_look}))
        assert len(answer.exact) == 10 and len(answer.similar_scenes) == cold.scenes.k
        assert all(item.category != answer.category for item in answer.complete_the_look)
    rate, rate_given = sum(hits) / len(hits), sum(hits_given_category) / len(hits)
    print(
        f"cold start on {len(pairs)} pairs of 40 unseen scenes: STL hit rate@10 {rate:.3f} over the "
        f"catalogue, {rate_given:.3f} within the category; CTL lists holding another product of the "
        f"scene: {sum(looks) / len(looks):.3f}"
    )
    assert rate > 0.5 and rate_given >= rate


def test_scene_lists_add_the_models_popularity_prior(
    cold: ColdStart, unseen: tuple[Path, pd.DataFrame]
) -> None:
    """As the retrieval report ranks: a model whose prior weighs popularity more recommends
    more popular products, and its scores are still in order."""
    leaning = copy.deepcopy(cold.model)
    leaning.prior.weight.fill_(0.5)
    leaned = dataclasses.replace(cold, model=leaning)
    popularity = np.bincount(np.concatenate(cold.scenes.products), minlength=len(cold.index.ids))
    folder, pairs = unseen
    chosen = {"bare": [], "leaned": []}
    for pair in pairs.head(10).itertuples():
        image = folder / f"{pair.scene}.jpg"
        for name, source in (("bare", cold), ("leaned", leaned)):
            answer = source.scene(image, tuple(pair.bbox), k=10)
            chosen[name] += [popularity[cold.position[i.product]] for i in answer.complete_the_look]
            scores = [i.score for i in answer.exact]
            assert scores == sorted(scores, reverse=True)
    assert np.mean(chosen["leaned"]) > np.mean(chosen["bare"])
    # A product's lists rank by cosine alone, as the recommendations asset's do.
    product = cold.index.ids[0]
    assert leaned.product(product).complementary == cold.product(product).complementary


def test_command_answers_for_a_scene_and_a_product(
    trained: Trained, unseen: tuple[Path, pd.DataFrame]
) -> None:
    folder, pairs = unseen
    pair = pairs.iloc[0]
    env = {**os.environ, "STL_DATA_DIR": str(trained.settings.data_dir)}
    bbox = ",".join(map(str, pair["bbox"]))
    scene = subprocess.run(
        [STL_RECOMMEND, "scene", folder / f"{pair['scene']}.jpg", "--bbox", bbox, "-k", "5", "--json"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    answer = json.loads(scene.stdout)
    assert len(answer["exact"]) == 5 and answer["category_inferred"] is True
    assert answer["model"]["model"] == "gat"

    product = subprocess.run(
        [STL_RECOMMEND, "product", pair["product"]], env=env, capture_output=True, text=True, check=True
    )
    assert f"Product {pair['product']}" in product.stdout
    assert "Similar products:" in product.stdout and "Complementary products:" in product.stdout


def test_a_registered_model_version_answers_too(
    trained: Trained, cold: ColdStart, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.setenv("STL_DATA_DIR", str(trained.settings.data_dir))
    product = cold.index.ids[0]
    registered, _, version = cold.source["version"].split()[:3]  # "stl-gat version 1 (@champion)"
    assert main(["--model-name", registered, "product", product, "--json"]) == 0  # its @champion
    answer = json.loads(capsys.readouterr().out)
    latest = cold.product(product)
    # The registered champion is the one served from its snapshot: the same lists.
    assert [i["product"] for i in answer["similar"]] == [i.product for i in latest.similar]
    assert answer["model"]["version"] == version
    assert main(["--model-name", registered, "--model-version", version, "product", product]) == 0
    # The command's complementary list is the recommendations asset's.
    table = pd.read_parquet(trained.settings.data_dir / "tables" / "recommendations.parquet")
    own = table[(table["kind"] == "complementary") & (table["query"] == product)]
    assert list(own["product"]) == [i.product for i in latest.complementary]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["scene", "{text}"], "corrupt or unreadable"),
        (["scene", "{missing}"], "does not exist"),
        (["scene", "{fifo}"], "is not a file"),
        (["scene", "/dev/zero"], "is not a file"),
        (["scene", "{image}", "--bbox", "0.5,0.1,1.2,0.9"], "out of range"),
        (["scene", "{image}", "--bbox", "0.6,0.1,0.4,0.9"], "out of range"),
        (["scene", "{image}", "--bbox", "0.1,0.2"], "not four numbers"),
        (["scene", "{image}", "--category", "Hats"], "unknown category 'Hats'"),
        (["product", "0" * 32], "unknown product id"),
        (["--model-name", "stl-gat", "--model-version", "99", "product", "x"], "no version 99"),
        (["--model-version", "3", "product", "x"], "--model-version needs --model-name"),
    ],
)
def test_bad_input_is_named_with_what_to_do(
    trained: Trained,
    unseen: tuple[Path, pd.DataFrame],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
    argv: list[str],
    message: str,
) -> None:
    folder, pairs = unseen
    text = tmp_path / "notes.jpg"
    text.write_text("not an image")
    os.mkfifo(tmp_path / "fifo.jpg")
    paths = {"text": text, "missing": tmp_path / "nope.jpg", "image": folder / f"{pairs['scene'][0]}.jpg"}
    paths["fifo"] = tmp_path / "fifo.jpg"
    monkeypatch.setenv("STL_DATA_DIR", str(trained.settings.data_dir))
    assert main([a.format(**paths) for a in argv]) == 2
    assert message in capsys.readouterr().err


def test_without_a_materialized_model_it_says_how_to_get_one(tmp_path: Path) -> None:
    with pytest.raises(ColdStartError, match=r"no stl champion .*`make demo`.*passes its gate"):
        load(load_settings({"STL_DATA_DIR": str(tmp_path)}))
