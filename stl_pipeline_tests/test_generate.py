import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from stl_pipeline.categories import LEAVES, PATHS
from stl_pipeline.generate import FULL_SCALE, GeneratorConfig, generate_dataset
from stl_pipeline.generate.cli import main as generate_cli
from stl_pipeline.generate.dataset import compose
from stl_pipeline.ingest.tables import ingest
from stl_pipeline_tests.conftest import SMALL


def digest_tree(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path: Path, small_dataset: Path) -> None:
    generate_dataset(SMALL, tmp_path / "again", workers=2)  # parallel rendering, same bytes
    assert digest_tree(tmp_path / "again") == digest_tree(small_dataset)
    other = GeneratorConfig(**{**SMALL.__dict__, "seed": SMALL.seed + 1})
    generate_dataset(other, tmp_path / "other")
    shared = set(digest_tree(tmp_path / "other").values()) & set(digest_tree(small_dataset).values())
    assert not shared


def test_files_are_in_the_release_formats(small_dataset: Path) -> None:
    lines = (small_dataset / "fashion.json").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    assert all(set(r) == {"product", "scene", "bbox"} and len(r["bbox"]) == 4 for r in records)
    categories = json.loads((small_dataset / "fashion-cat.json").read_text())
    assert len(categories) == SMALL.products
    assert set(categories.values()) == set(PATHS.values())

    result = ingest(small_dataset / "fashion.json", small_dataset / "fashion-cat.json")
    assert result.quarantine.empty and result.duplicates == 0
    assert result.pairs["scene"].nunique() == SMALL.scenes
    per_scene = result.pairs.groupby("scene").size()
    assert per_scene.between(2, 5).all()

    images = small_dataset / "images"
    for record in records[:20]:
        assert Image.open(images / f"{record['product']}.jpg").size == (SMALL.product_size,) * 2
        assert Image.open(images / f"{record['scene']}.jpg").size == (SMALL.scene_width, SMALL.scene_height)
    assert len(list(images.iterdir())) == SMALL.products + SMALL.scenes


def test_popularity_is_long_tailed() -> None:
    _, scenes = compose(GeneratorConfig(products=400, scenes=1500, styles=4, seed=2))
    counts = np.bincount([p for s in scenes for p, _ in s.items], minlength=400)
    top_share = np.sort(counts)[::-1][:40].sum() / counts.sum()
    assert top_share > 0.3  # the top 10% of products hold far more than 10% of pairs
    assert (counts > 0).mean() > 0.9


def test_full_scale_composition_has_the_release_counts_and_shape() -> None:
    """47,739 scenes for 72,198 pairs: most scenes annotate one garment of the outfit they show."""
    config = GeneratorConfig(**FULL_SCALE)
    catalogue, scenes = compose(config)
    assert len(catalogue.products) == 38_111 and len(scenes) == 47_739
    annotated = np.array([len(s.items) for s in scenes])
    shown = np.array([len(s.shown) for s in scenes])
    assert annotated.sum() == 72_198
    assert 0.55 < (annotated == 1).mean() < 0.65 and annotated.max() <= 5
    assert (shown >= 2).all() and (shown <= 5).all() and (shown >= annotated).all()
    assert len({p for s in scenes for p, _ in s.items}) == 38_111  # every product is annotated
    counts = {leaf: sum(p.category == leaf for p in catalogue.products) for leaf in LEAVES}
    assert counts["Shoes"] > counts["Shirts & Tops"] > counts["Necklaces"]


@pytest.mark.parametrize(
    ("annotated", "single"), [(1.0, (1.0, 1.0)), (1.5, (0.55, 0.65)), (2.5, (0.15, 0.3))]
)
def test_the_annotated_share_is_a_knob(annotated: float, single: tuple[float, float]) -> None:
    _, scenes = compose(GeneratorConfig(scenes=2_000, products=1_000, annotated=annotated))
    counts = np.array([len(s.items) for s in scenes])
    assert counts.sum() == round(annotated * 2_000)
    assert single[0] <= (counts == 1).mean() <= single[1]
    assert all(2 <= len(s.shown) <= 5 for s in scenes)


def test_the_dense_shape_annotates_every_garment_shown(tmp_path: Path) -> None:
    _, scenes = compose(GeneratorConfig(scenes=300, shape="dense"))
    assert all(not s.worn and 2 <= len(s.items) <= 5 for s in scenes)
    _, release = compose(GeneratorConfig(scenes=300))
    assert sum(len(s.worn) for s in release) > sum(len(s.items) for s in release)


def test_unannotated_garments_are_drawn_in_the_scene(tmp_path: Path) -> None:
    """A scene with one annotated garment still shows the outfit: its photo differs from
    the same scene drawn with that garment alone."""
    from stl_pipeline.generate.dataset import _init_worker, _render

    config = GeneratorConfig(products=120, scenes=40, styles=6, seed=3)
    catalogue, scenes = compose(config)
    scene = next(s for s in scenes if len(s.items) == 1 and len(s.worn) >= 2)
    _init_worker(config, catalogue, tmp_path)
    _render(("scene", 0, "outfit", (scene.style, scene.shown)))
    _render(("scene", 0, "alone", (scene.style, scene.items)))
    outfit, alone = (np.asarray(Image.open(tmp_path / f"{n}.jpg"), dtype=float) for n in ("outfit", "alone"))
    assert np.abs(outfit - alone).mean() > 5


def _pixels(path: Path, box: tuple[float, ...] | None = None) -> np.ndarray:
    image = Image.open(path).convert("RGB")
    if box:
        w, h = image.size
        image = image.crop((box[0] * w, box[1] * h, box[2] * w, box[3] * h))
    return np.asarray(image.resize((12, 12)), dtype=np.float32).ravel() / 255


def test_a_bbox_crop_finds_its_own_product(small_dataset: Path) -> None:
    """The Shop-the-Look signal: the crop is nearest to the exact product among its category."""
    result = ingest(small_dataset / "fashion.json", small_dataset / "fashion-cat.json")
    images = small_dataset / "images"
    products = result.products
    vectors = {p: _pixels(images / f"{p}.jpg") for p in products["product"]}
    hits = []
    for pair in result.pairs.itertuples():
        crop = _pixels(images / f"{pair.scene}.jpg", (pair.left, pair.top, pair.right, pair.bottom))
        pool = products.loc[products["category"] == pair.category, "product"]
        nearest = min(pool, key=lambda p: np.linalg.norm(vectors[p] - crop))
        hits.append(nearest == pair.product)
    chance = 1 / products.groupby("category").size().mean()
    assert np.mean(hits) > max(0.3, 4 * chance)


def test_scenes_share_a_style_but_complementary_looks_differ(small_dataset: Path) -> None:
    truth = json.loads((small_dataset / "fashion-styles.json").read_text())
    records = [json.loads(line) for line in (small_dataset / "fashion.json").read_text().splitlines()]
    on_style = np.mean([truth["products"][r["product"]] == truth["scenes"][r["scene"]] for r in records])
    assert abs(on_style - (1 - SMALL.off_style)) < 0.1

    catalogue, _ = compose(SMALL)
    bases = np.array([[look.base for look in style] for style in catalogue.looks], dtype=float)
    within_style = np.mean([np.linalg.norm(s[i] - s[j]) for s in bases for i in range(10) for j in range(i)])
    across_styles = np.mean(
        [
            np.linalg.norm(bases[a, c] - bases[b, c])
            for c in range(10)
            for a in range(len(bases))
            for b in range(a)
        ]
    )
    assert within_style > 0.7 * across_styles  # a style is not one palette for every category


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"products": 10}, "too few"),
        ({"scenes": 0}, "scenes must be"),
        ({"pairs": 10_000}, "cannot be spread"),
        ({"pairs": 200}, "between 500 and 1250"),
        ({"shape": "dense", "pairs": 800}, "between 1000 and 2500"),
        ({"shape": "sparse"}, "unknown: use one of release, dense"),
        ({"annotated": 3.0}, r"annotated=3.0 must lie in \[1, 2.5\]"),
        ({"off_style": 1.5}, "off_style"),
    ],
)
def test_impossible_configs_are_refused(overrides: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        GeneratorConfig(**overrides).validate()


def test_cli_writes_a_dataset_and_refuses_to_overwrite(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "data"
    assert (
        generate_cli(
            ["--out", str(out), "--products", "80", "--scenes", "20", "--pairs", "50", "--seed", "5"]
        )
        == 0
    )
    summary = json.loads(capsys.readouterr().out)
    assert summary["pairs"] == 50 and summary["images"] == 100
    assert len((out / "fashion.json").read_text().splitlines()) == 50
    with pytest.raises(SystemExit):
        generate_cli(["--out", str(out)])
    assert "--force" in capsys.readouterr().err
